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

// Ordered: each level adds to the one before. kAvx512Bf16 and kAmx run the AVX-512 fp32 kernels
// plus a bf16 product (Bf16Ops) for bf16 inputs.
enum class Isa : int32_t { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };
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

// Products on bf16 operands with fp32 accumulation, for bf16 inputs (fp16 and fp32 stay on the
// fp32 kernels: bf16 would drop their mantissa bits). The product C[m x n] (+)= A[m x k] · B reads
//   A(i, t) = a[i * lda + t]                 bf16, row-major
//   B(t, j) = half (t % 2) of b[(t / 2) * ldb + j]   bf16 pairs along the depth ("VNNI" packing)
// and needs m and n to be multiples of 16 and k a multiple of 32 (callers pad with zeros). Products
// of bf16 values are exact in fp32; only the order of the fp32 sums differs from a plain loop.
struct Bf16Ops {
  // Bracket a thread's run of products (AMX: load the tile configuration, release the tiles).
  void (*begin)();
  void (*end)();
  void (*matmul)(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda, const uint32_t* b, int64_t ldb,
                 float* c, int64_t ldc, bool accumulate);
  // Key-major fp32 probabilities s[rows][lds] (rows from `rows` up to rows_pad read as 0) to the
  // A operand of O += P·V: p[c][t] = pair (bf16(s[2t][c]), bf16(s[2t + 1][c])), c < cols.
  // rows_pad is a multiple of 32 and cols of 16; rounding is to nearest even, as core::float_to_bf16.
  void (*pack_probabilities)(const float* s, int64_t lds, int64_t rows, int64_t rows_pad, int64_t cols, uint32_t* p,
                             int64_t ldp);
  // dst[j] = pair (even[j], odd[j]) for j < n, a null row reading as zeros: two rows of B.
  void (*pack_row_pair)(const uint16_t* even, const uint16_t* odd, int64_t n, uint32_t* dst);
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

  // The bf16 product of this set, or null (the bf16 forward then widens to fp32 and uses matmul).
  const Bf16Ops* bf16;
};

// The set in use: the best this CPU supports, capped by FLASHSDPA_CPU_ISA=generic|avx2|avx512|
// avx512bf16|amx in the environment or by set_isa_cap(); an unsupported request falls back to the
// next best.
const TileOps& tile_ops();
// A specific set, or null when this CPU or build cannot run it.
const TileOps* tile_ops_for(Isa isa);
// Caps the instruction set used from now on (tests and benchmarks compare the sets with it);
// returns the set that was in use before. Not meant to race with running attention calls.
Isa set_isa_cap(Isa cap);

}  // namespace flashsdpa::cpu
