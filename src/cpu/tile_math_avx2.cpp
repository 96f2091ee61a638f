// The tile kernels for AVX2 with FMA and F16C: 8 fp32 lanes, 16 registers.
#include "cpu/tile_math.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"

#define FLASHSDPA_ISA __attribute__((target("avx2,fma,f16c")))

namespace flashsdpa::cpu {
namespace avx2 {

struct V {
  static constexpr int kWidth = 8;
  using Reg = __m256;
  using Tail = __m256i;  // lane i active when its sign bit is set

  FLASHSDPA_ISA static Tail tail(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  FLASHSDPA_ISA static Reg zero() { return _mm256_setzero_ps(); }
  FLASHSDPA_ISA static Reg set1(float x) { return _mm256_set1_ps(x); }
  FLASHSDPA_ISA static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  FLASHSDPA_ISA static Reg load(const float* p, Tail t) { return _mm256_maskload_ps(p, t); }
  FLASHSDPA_ISA static void store(float* p, Reg x) { _mm256_storeu_ps(p, x); }
  FLASHSDPA_ISA static void store(float* p, Reg x, Tail t) { _mm256_maskstore_ps(p, t, x); }
  FLASHSDPA_ISA static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  // The empty asm hides the product from the optimiser, which would otherwise contract the
  // multiply and the add into an fma (the intrinsics are plain vector arithmetic to GCC).
  FLASHSDPA_ISA static Reg add_rounded_product(Reg acc, Reg a, Reg b) {
    Reg product = _mm256_mul_ps(a, b);
    asm("" : "+x"(product));
    return _mm256_add_ps(acc, product);
  }
  FLASHSDPA_ISA static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  FLASHSDPA_ISA static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  FLASHSDPA_ISA static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  FLASHSDPA_ISA static Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  FLASHSDPA_ISA static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  FLASHSDPA_ISA static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  FLASHSDPA_ISA static Reg abs(Reg x) {
    return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
  }
  FLASHSDPA_ISA static Reg select_lt(Reg a, Reg b, Reg x, Reg y) {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
  }
  FLASHSDPA_ISA static Reg with_sign_of(Reg magnitude, Reg x) {
    return _mm256_or_ps(magnitude, _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN))));
  }
  FLASHSDPA_ISA static Reg replace_neg_inf(Reg x, float value) {
    return _mm256_blendv_ps(x, _mm256_set1_ps(value), _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ));
  }

  // As the AVX-512 exp, with 2^n built in the exponent field: n is clamped to [-127, 128] so
  // -127 gives +0 (results below 2^-126 flush to 0) and 128 gives inf.
  FLASHSDPA_ISA static Reg exp(Reg x) {
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);  // NaN stays NaN (second operand)
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
    const Reg n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    Reg r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    Reg p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_cvtps_epi32(n);
    e = _mm256_min_epi32(_mm256_max_epi32(e, _mm256_set1_epi32(-127)), _mm256_set1_epi32(128));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  }

  FLASHSDPA_ISA static Reg load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  FLASHSDPA_ISA static void store_f16(uint16_t* p, Reg x) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  FLASHSDPA_ISA static Reg load_bf16(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  FLASHSDPA_ISA static void store_bf16(uint16_t* p, Reg x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    rounded = _mm256_blendv_epi8(rounded, quiet, nan);
    // Pack the eight 32-bit lanes (each < 2^16) down to 16 bits; packus works per 128-bit half.
    const __m256i packed = _mm256_packus_epi32(rounded, rounded);
    const __m256i ordered = _mm256_permute4x64_epi64(packed, 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(ordered));
  }
};

// 6 x 16 accumulators use 12 of the 16 registers.
constexpr int kMaxRows = 6;
constexpr Isa kThisIsa = Isa::kAvx2;

#include "cpu/tile_kernels_impl.h"

}  // namespace avx2

const TileOps* tile_ops_avx2() { return &avx2::kTileOps; }

}  // namespace flashsdpa::cpu

#else  // not x86-64

namespace flashsdpa::cpu {
const TileOps* tile_ops_avx2() { return nullptr; }
}  // namespace flashsdpa::cpu

#endif
