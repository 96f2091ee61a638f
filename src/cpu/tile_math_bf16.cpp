// The bf16 product kernels (see Bf16Ops in tile_math.h): one on AVX512-BF16 (vdpbf16ps, 16 fp32
// lanes, each the sum of two bf16 products) and one on AMX (tdpbf16ps on 16 x 16 fp32 tiles), and
// the packing both share. Products of two bf16 values are exact in fp32, so either kernel gives
// a plain bf16 -> fp32 dot product up to the order of the fp32 sums.
//
// Both instructions read B "VNNI-packed": B(t, j) and B(t + 1, j) side by side in one 32-bit
// element, so B is a [k / 2][ldb] array of pairs. A is plain row-major bf16, read a pair at a
// time. Shapes are padded by the caller: m and n multiples of 16, k a multiple of 32.
#include "cpu/tile_math.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

// GCC 12's AVX-512 headers trip their own -Wmaybe-uninitialized (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// AMX intrinsics arrived in GCC 11 and clang 12.
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define FLASHSDPA_HAVE_AMX 1
#else
#define FLASHSDPA_HAVE_AMX 0
#endif

#define FLASHSDPA_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define FLASHSDPA_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

namespace flashsdpa::cpu {
namespace {

// ---- packing (shared by both kernels) -----------------------------------------------------------

// Rounds fp32 lanes to bf16 (nearest even, NaN kept quiet), the result in the low 16 bits of each
// 32-bit lane, like core::float_to_bf16.
FLASHSDPA_AVX512BF16 inline __m512i round_to_bf16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_mask_blend_epi32(nan, rounded, quiet);
}

// Transposes 16 rows of 16 32-bit elements in registers: r[i][j] -> r[j][i].
FLASHSDPA_AVX512BF16 inline void transpose_16x16(__m512i r[16]) {
  __m512i t[16], u[16];
  // Pairs of rows interleaved by 32-bit element within each 128-bit lane.
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4g + q], lane L: column 4L + q of rows 4g .. 4g + 3.
  for (int g = 0; g < 16; g += 4) {
    u[g + 0] = _mm512_unpacklo_epi64(t[g + 0], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g + 0], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  // A 4 x 4 transpose of 128-bit lanes gathers column 4L + q from the four row groups.
  for (int q = 0; q < 4; ++q) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0xEE);
    r[0 + q] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + q] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + q] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + q] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

// p[c][t] = pair (bf16(s[2t][c]), bf16(s[2t + 1][c])) for c < cols, t < rows_pad / 2; rows from
// `rows` on read as 0. Turns the key-major fp32 probabilities into the row-major bf16 A of O += P·V.
FLASHSDPA_AVX512BF16 void pack_probabilities(const float* s, int64_t lds, int64_t rows, int64_t rows_pad,
                                             int64_t cols, uint32_t* p, int64_t ldp) {
  for (int64_t c0 = 0; c0 < cols; c0 += 16) {
    for (int64_t t0 = 0; t0 < rows_pad / 2; t0 += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t even = 2 * (t0 + i), odd = even + 1;
        const __m512i lo = even < rows ? round_to_bf16(_mm512_loadu_ps(s + even * lds + c0)) : _mm512_setzero_si512();
        const __m512i hi = odd < rows ? round_to_bf16(_mm512_loadu_ps(s + odd * lds + c0)) : _mm512_setzero_si512();
        r[i] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
      }
      transpose_16x16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(p + (c0 + i) * ldp + t0, r[i]);
    }
  }
}

// dst[j] = pair (even[j], odd[j]) for j < n; a null row reads as 0. Packs two rows of B.
FLASHSDPA_AVX512BF16 inline __m512i load_widened(const uint16_t* row, int64_t at, __mmask16 mask) {
  return row == nullptr ? _mm512_setzero_si512() : _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, row + at));
}

FLASHSDPA_AVX512BF16 void pack_row_pair(const uint16_t* even, const uint16_t* odd, int64_t n, uint32_t* dst) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 mask = n - j >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - j)) - 1u);
    const __m512i pair = _mm512_or_si512(load_widened(even, j, mask), _mm512_slli_epi32(load_widened(odd, j, mask), 16));
    _mm512_mask_storeu_epi32(dst + j, mask, pair);
  }
}

// ---- AVX512-BF16 product ------------------------------------------------------------------------

// One 8 x (16 kVecs) block of C over the full depth; accumulators stay in registers.
template <int kVecs>
FLASHSDPA_AVX512BF16 void dp_block(int64_t k, const uint16_t* a, int64_t lda, const uint32_t* b, int64_t ldb,
                                   float* c, int64_t ldc, bool accumulate) {
  constexpr int kRows = 8;
  __m512 acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t t = 0; t < k / 2; ++t) {
    __m512i bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = _mm512_loadu_si512(b + t * ldb + 16 * v);
    for (int r = 0; r < kRows; ++r) {
      uint32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * t, sizeof(pair));
      const __m512i av = _mm512_set1_epi32(static_cast<int>(pair));
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      float* out = c + r * ldc + 16 * v;
      _mm512_storeu_ps(out, accumulate ? _mm512_add_ps(acc[r][v], _mm512_loadu_ps(out)) : acc[r][v]);
    }
  }
}

FLASHSDPA_AVX512BF16 void matmul_avx512bf16(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                                            const uint32_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  for (int64_t j = 0; j < n; j += 32) {
    for (int64_t i = 0; i < m; i += 8) {
      if (n - j >= 32) {
        dp_block<2>(k, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
      } else {
        dp_block<1>(k, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
      }
    }
  }
}

void no_tile_state() {}

const Bf16Ops kAvx512Bf16Ops = {&no_tile_state, &no_tile_state, &matmul_avx512bf16, &pack_probabilities,
                                &pack_row_pair};

// ---- AMX product --------------------------------------------------------------------------------

#if FLASHSDPA_HAVE_AMX

// Palette 1 with all eight tiles 16 rows x 64 bytes: 16 x 16 fp32 (C), 16 x 32 bf16 (A) or
// 16 pairs x 16 columns (B).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

FLASHSDPA_AMX void configure_tiles() {
  static const TileConfig config;
  // GCC's ldtilecfg asm names only the first 8 bytes as its input; the barrier makes sure the
  // whole configuration is in memory.
  asm volatile("" ::: "memory");
  _tile_loadconfig(&config);
}

FLASHSDPA_AMX void release_tiles() { _tile_release(); }

// Tiles 0-3 accumulate a 32 x 32 block of C (2 x 2 tiles), 4-5 hold A, 6-7 hold B. Every
// tdpbf16ps is 16 x 16 x 32: 16 pairs of the depth per tile load of A and of B.
FLASHSDPA_AMX void matmul_amx(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda, const uint32_t* b,
                              int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  const int64_t a_stride = lda * 2, b_stride = ldb * 4, c_stride = ldc * 4;
  asm volatile("" ::: "memory");  // the packed operands are in memory before the tile loads
  for (int64_t i = 0; i < m; i += 32) {
    const bool two_rows = m - i > 16;
    for (int64_t j = 0; j < n; j += 32) {
      const bool two_cols = n - j > 16;
      float* c00 = c + i * ldc + j;
      float* c01 = c00 + 16;
      float* c10 = c00 + 16 * ldc;
      float* c11 = c10 + 16;
      if (accumulate) {
        _tile_loadd(0, c00, c_stride);
        if (two_cols) _tile_loadd(1, c01, c_stride);
        if (two_rows) _tile_loadd(2, c10, c_stride);
        if (two_rows && two_cols) _tile_loadd(3, c11, c_stride);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t t = 0; t < k; t += 32) {
        _tile_loadd(4, a + i * lda + t, a_stride);
        _tile_loadd(6, b + (t / 2) * ldb + j, b_stride);
        _tile_dpbf16ps(0, 4, 6);
        if (two_cols) {
          _tile_loadd(7, b + (t / 2) * ldb + j + 16, b_stride);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (two_rows) {
          _tile_loadd(5, a + (i + 16) * lda + t, a_stride);
          _tile_dpbf16ps(2, 5, 6);
          if (two_cols) _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, c00, c_stride);
      if (two_cols) _tile_stored(1, c01, c_stride);
      if (two_rows) _tile_stored(2, c10, c_stride);
      if (two_rows && two_cols) _tile_stored(3, c11, c_stride);
    }
  }
  asm volatile("" ::: "memory");  // and C is read only after the tile stores
}

const Bf16Ops kAmxOps = {&configure_tiles, &release_tiles, &matmul_amx, &pack_probabilities, &pack_row_pair};

// Linux hands out the AMX tile state (8 KB of XSAVE area) only on request, once per process.
bool request_amx_permission() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

#endif  // FLASHSDPA_HAVE_AMX

}  // namespace

const Bf16Ops* bf16_ops_avx512bf16() { return &kAvx512Bf16Ops; }

const Bf16Ops* bf16_ops_amx() {
#if FLASHSDPA_HAVE_AMX
  static const bool permitted = request_amx_permission();
  return permitted ? &kAmxOps : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace flashsdpa::cpu

#else  // not x86-64 with GCC or clang

namespace flashsdpa::cpu {
const Bf16Ops* bf16_ops_avx512bf16() { return nullptr; }
const Bf16Ops* bf16_ops_amx() { return nullptr; }
}  // namespace flashsdpa::cpu

#endif
