// Host-side fp16 / bf16 <-> fp32 conversion (round to nearest even), shared by the CPU backend,
// the reference and the tests. The CUDA kernels use the hardware types instead.
#pragma once

#include <cstdint>
#include <cstring>

#include "flashsdpa/flashsdpa.h"

namespace flashsdpa::core {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }
inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // subnormal: man * 2^-24
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}
inline uint16_t float_to_fp16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (au >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf (incl. rounding)
  if (au < 0x38800000u) {                                               // subnormal or zero in fp16
    // Round au * 2^24 to nearest even integer via float arithmetic on the magnitude.
    const float mag = bits_to_float(au) * 16777216.0f;  // exact: scales by a power of two
    const float r = __builtin_nearbyintf(mag);           // round-half-even in the default mode
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(r));
  }
  uint32_t mant = au + 0xfffu + ((au >> 13) & 1u);  // round to nearest even at bit 13
  return static_cast<uint16_t>(sign | ((mant - 0x38000000u) >> 13));
}

// Element access for the three float dtypes.
inline float load_as_float(const void* base, int64_t index, DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return fp16_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::kFloat32: return static_cast<const float*>(base)[index];
    default: return 0.0f;
  }
}
inline void store_from_float(void* base, int64_t index, DType dtype, float value) {
  switch (dtype) {
    case DType::kFloat16: static_cast<uint16_t*>(base)[index] = float_to_fp16(value); break;
    case DType::kBFloat16: static_cast<uint16_t*>(base)[index] = float_to_bf16(value); break;
    case DType::kFloat32: static_cast<float*>(base)[index] = value; break;
    default: break;
  }
}
// Rounds a float to what the dtype can hold (identity for fp32).
inline float round_to(DType dtype, float value) {
  switch (dtype) {
    case DType::kFloat16: return fp16_to_float(float_to_fp16(value));
    case DType::kBFloat16: return bf16_to_float(float_to_bf16(value));
    default: return value;
  }
}

}  // namespace flashsdpa::core
