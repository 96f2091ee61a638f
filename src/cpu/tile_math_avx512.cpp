// The tile kernels for AVX-512 (F, BW, VL, DQ) with FMA and F16C: 16 fp32 lanes, 32 registers.
#include "cpu/tile_math.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

// GCC 12's AVX-512 headers initialise _mm512_undefined_ps() from itself, which its own
// -Wmaybe-uninitialized then reports at every inlined use (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"

#define FLASHSDPA_ISA __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

namespace flashsdpa::cpu {
namespace avx512 {

struct V {
  static constexpr int kWidth = 16;
  using Reg = __m512;
  using Tail = __mmask16;

  FLASHSDPA_ISA static Tail tail(int64_t n) { return static_cast<Tail>((1u << n) - 1u); }
  FLASHSDPA_ISA static Reg zero() { return _mm512_setzero_ps(); }
  FLASHSDPA_ISA static Reg set1(float x) { return _mm512_set1_ps(x); }
  FLASHSDPA_ISA static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  FLASHSDPA_ISA static Reg load(const float* p, Tail t) { return _mm512_maskz_loadu_ps(t, p); }
  FLASHSDPA_ISA static void store(float* p, Reg x) { _mm512_storeu_ps(p, x); }
  FLASHSDPA_ISA static void store(float* p, Reg x, Tail t) { _mm512_mask_storeu_ps(p, t, x); }
  FLASHSDPA_ISA static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  // The empty asm hides the product from the optimiser, which would otherwise contract the
  // multiply and the add into an fma (the intrinsics are plain vector arithmetic to GCC).
  FLASHSDPA_ISA static Reg add_rounded_product(Reg acc, Reg a, Reg b) {
    Reg product = _mm512_mul_ps(a, b);
    asm("" : "+v"(product));
    return _mm512_add_ps(acc, product);
  }
  FLASHSDPA_ISA static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  FLASHSDPA_ISA static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  FLASHSDPA_ISA static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  FLASHSDPA_ISA static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  FLASHSDPA_ISA static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  FLASHSDPA_ISA static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
  FLASHSDPA_ISA static Reg abs(Reg x) { return _mm512_abs_ps(x); }
  FLASHSDPA_ISA static Reg select_lt(Reg a, Reg b, Reg x, Reg y) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), y, x);
  }
  FLASHSDPA_ISA static Reg with_sign_of(Reg magnitude, Reg x) {
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), sign));
  }
  FLASHSDPA_ISA static Reg replace_neg_inf(Reg x, float value) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ), x,
                                _mm512_set1_ps(value));
  }

  // exp(x) = 2^n * e^r, n = round(x / ln 2), |r| <= ln2 / 2, e^r by a degree-7 polynomial (about
  // 1 ulp). scalef applies 2^n with correct overflow to inf and underflow to 0 / subnormals.
  FLASHSDPA_ISA static Reg exp(Reg x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);  // NaN stays NaN (second operand)
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    const Reg n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    Reg r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    Reg p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
  }

  FLASHSDPA_ISA static Reg load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  FLASHSDPA_ISA static void store_f16(uint16_t* p, Reg x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  FLASHSDPA_ISA static Reg load_bf16(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  // Round to nearest even like core::float_to_bf16; NaN stays a quiet NaN.
  FLASHSDPA_ISA static void store_bf16(uint16_t* p, Reg x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    rounded = _mm512_mask_blend_epi32(nan, rounded, quiet);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
  }
};

// 12 x 32 accumulators use 24 of the 32 registers, leaving room for the B vectors.
constexpr int kMaxRows = 12;
constexpr Isa kThisIsa = Isa::kAvx512;

#include "cpu/tile_kernels_impl.h"

}  // namespace avx512

const TileOps* tile_ops_avx512() { return &avx512::kTileOps; }

}  // namespace flashsdpa::cpu

#else  // not x86-64

namespace flashsdpa::cpu {
const TileOps* tile_ops_avx512() { return nullptr; }
}  // namespace flashsdpa::cpu

#endif
