// Vectorized tile math shared by the CPU forward and backward passes.
//
// Everything here works on fp32 tiles in scratch memory. Each operation exists once per
// instruction set (AVX-512, AVX2+FMA, portable C++) and is picked at run time from what the CPU
// supports, so one binary runs on any x86-64 and the portable set builds anywhere.
//
// Layout convention of a score tile: key-major. s[r * ld + c] holds key (j0 + r) against query
// column c, so per-query (column) softmax state is a plain vector and the two products are
//   S^T[keys x queries] = K[keys x D] · Q^T[D x queries]        (A = K rows, B = Q^T)
//   O[queries x Dv]    += P[queries x keys] · V[keys x Dv]      (A = S^T read transposed, B = V rows)
// Both are the same register-blocked kernel with B row-major and A read either way.
#pragma once

#include <cstdint>

#include "flashsdpa/flashsdpa.h"

namespace flashsdpa::cpu {

enum class Isa : int32_t { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* isa_name(Isa isa);

// Per-column score modifiers of one tile, the vector form of core::ScoreMod::apply:
//   s = scale * s;  s = softcap * tanh(s / softcap) when softcap > 0;
//   s -= col_slope[c] * |col_aligned_key[c] - r|       when col_slope is given,
// where col_aligned_key[c] = (i_c + diag) - j0 is the key aligned with query column c, relative
// to the tile's first key (exact in fp32 for positions below 2^24).
struct ScoreModTile {
  float scale = 1.0f;
  float softcap = 0.0f;
  const float* col_slope = nullptr;
  const float* col_aligned_key = nullptr;
};

struct TileOps {
  Isa isa = Isa::kGeneric;

  // C[m x n] = A[m x k] · B[k x n]  (accumulate: C += ...). A(i, t) is a[i * a_row_stride +
  // t * a_col_stride]; the fast paths need one of the two strides to be 1. B(t, j) is
  // b[t * ldb + j], C(i, j) is c[i * ldc + j]. Reads exactly the m x k / k x n elements.
  void (*matmul)(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row_stride,
                 int64_t a_col_stride, const float* b, int64_t ldb, float* c, int64_t ldc,
                 bool accumulate);

  // matmul with every product and every sum rounded separately, accumulated in order over k:
  // each element of C is bit-identical to a plain fp32 dot product loop. fp32 scores use it so
  // that large logits carry exactly the rounding error of plain fp32 arithmetic.
  void (*matmul_unfused)(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row_stride,
                         int64_t a_col_stride, const float* b, int64_t ldb, float* c, int64_t ldc,
                         bool accumulate);

  // dst[0..n) = src[0..n) widened from dtype to fp32.
  void (*load_row)(const void* src, DType dtype, float* dst, int64_t n);
  // dst[0..n) = src[0..n) * scale, rounded to dtype (nearest even, NaN kept).
  void (*store_row)(const float* src, float scale, void* dst, DType dtype, int64_t n);

  // Applies the score modifiers to a rows x cols key-major score tile in place.
  void (*score_mods)(float* s, int64_t ld, int64_t rows, int64_t cols, const ScoreModTile& mods);

  // One online-softmax step over a key-major tile whose masked entries are -inf. Per column c:
  //   new_max = max(col_max[c], max_r s[r][c]);  factor = exp(col_max[c] - new_max)
  //   s[r][c] = exp(s[r][c] - new_max);           col_sum[c] = col_sum[c] * factor + sum_r s[r][c]
  // with the SoftmaxRow conventions: a column whose max is still -inf gets p = 0 and factor 0,
  // never NaN. col_factor receives the factors the output rows must be multiplied by.
  void (*online_softmax)(float* s, int64_t ld, int64_t rows, int64_t cols, float* col_max,
                         float* col_sum, float* col_factor);

  // s[r][c] = exp(s[r][c] - col_shift[c]); a shift of -inf counts as 0 (a fully masked column).
  void (*exp_shifted)(float* s, int64_t ld, int64_t rows, int64_t cols, const float* col_shift);

  // x[r][0..cols) *= row_factor[r] for every row whose factor is not 1.
  void (*scale_rows)(float* x, int64_t ld, int64_t rows, int64_t cols, const float* row_factor);
};

// The set in use: the best this CPU supports, capped by FLASHSDPA_CPU_ISA=generic|avx2|avx512 in
// the environment or by set_isa_cap(); an unsupported request falls back to the next best.
const TileOps& tile_ops();
// A specific set, or null when this CPU or build cannot run it.
const TileOps* tile_ops_for(Isa isa);
// Caps the instruction set used from now on (tests and benchmarks compare the sets with it);
// returns the set that was in use before. Not meant to race with running attention calls.
Isa set_isa_cap(Isa cap);

}  // namespace flashsdpa::cpu
