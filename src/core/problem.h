// The one plain parameter struct every backend consumes (the role of flash-attn 2's flash.h).
//
// core::prepare_*() (validate.cpp) checks the public AttnParams and fills a Problem: raw pointers,
// int64 strides in elements, resolved options (scale, causal folded into window_right, the
// source of each sequence's key length). Backends never see TensorRef and never re-validate.
// The struct is trivially copyable so CUDA kernels take it by value.
#pragma once

#include <cstdint>

#include "flashsdpa/flashsdpa.h"

namespace flashsdpa::core {

enum class QLayout : int32_t {
  kBatched = 0,  // q [B, Sq, Hq, D]
  kVarlen = 1,   // q [Tq, Hq, D] + cu_seqlens_q
};

enum class KvLayout : int32_t {
  kBatched = 0,     // k [B, Sk, Hkv, D]
  kVarlen = 1,      // k [Tk, Hkv, D] + cu_seqlens_k
  kPaged = 2,       // k [num_blocks, block_size, Hkv, D] + block_table
  kDenseCache = 3,  // k [B_cache, S_max, Hkv, D] + cache_seqlens (+ cache_batch_idx)
};

// A [batch or block, row, head, dim] strided operand. Elements; the dim stride is 1.
struct Operand {
  const void* ptr = nullptr;
  int64_t batch_stride = 0;  // batched: per sequence; paged: per block; dense cache: per cache row
  int64_t row_stride = 0;
  int64_t head_stride = 0;
#if defined(__CUDACC__)
  __host__ __device__
#endif
  void* mutable_ptr() const { return const_cast<void*>(ptr); }
};

struct Problem {
  DType dtype = DType::kFloat32;
  QLayout q_layout = QLayout::kBatched;
  KvLayout kv_layout = KvLayout::kBatched;

  int64_t batch = 0;
  int64_t heads_q = 0, heads_kv = 0;
  int64_t group = 1;  // heads_q / heads_kv: query head h reads kv head h / group
  int64_t head_dim_qk = 0, head_dim_v = 0;

  // Batched: the fixed lengths. Varlen/paged/cache: upper bounds (max_seqlen hints or capacity).
  int64_t seqlen_q = 0, seqlen_k = 0;
  int64_t total_q = 0, total_k = 0;  // rows of q / k in the varlen layout; 0 otherwise

  Operand q, k, v, out;

  // LSE (fp32), optional. Row r of sequence b, head h at
  // lse[b * lse_batch_stride + h * lse_head_stride + r * lse_row_stride] (batched) or
  // lse[h * lse_head_stride + (cu_seqlens_q[b] + r) * lse_row_stride] (varlen).
  float* lse = nullptr;
  int64_t lse_batch_stride = 0, lse_head_stride = 0, lse_row_stride = 0;

  // Varlen
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* seqused_k = nullptr;

  // Paged KV
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0;  // elements between rows of block_table
  int64_t max_blocks_per_seq = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 0;

  // KV cache: keys [cache_leftpad[b], cache_seqlens[b] + seqlen_new) are attended
  const int32_t* cache_seqlens = nullptr;  // or cache_seqlen_all when null
  int64_t cache_seqlen_all = -1;           // -1 = no cache lengths
  const int32_t* cache_batch_idx = nullptr;
  const int32_t* cache_leftpad = nullptr;
  int64_t cache_batch = 0;     // rows of a dense cache
  int64_t cache_capacity = 0;  // key slots per sequence: S_max (dense) or max_blocks * block_size

  // KV append (with optional rotary); seqlen_new == 0 means no append
  Operand k_new, v_new;
  int64_t seqlen_new = 0;
  const void* rotary_cos = nullptr;
  const void* rotary_sin = nullptr;
  int64_t rotary_row_stride = 0;  // elements between rows of cos/sin (same for both)
  int64_t rotary_dim = 0;         // 0 = no rotary
  int64_t rotary_rows = 0;        // S_ro: positions covered by the tables
  bool rotary_interleaved = true;

  // Score modifiers (see mask.h for their single definition)
  float scale = 1.0f;
  float softcap = 0.0f;          // 0 = off
  int64_t window_left = -1;      // -1 = unbounded
  int64_t window_right = -1;     // causal is folded in here as 0
  bool causal = false;           // kept for reporting; window_right already says it
  const float* alibi_slopes = nullptr;
  int64_t alibi_batch_stride = 0;  // 0 for [Hq] slopes, Hq-ish for [B, Hq]
  const float* sinks = nullptr;

  int num_splits = 0;
  bool exact_fp32 = false;  // AttnParams::exact_fp32: no 3xTF32 tier

  // Execution, not the problem: where CUDA scratch comes from (ExecContext::scratch).
  ScratchAllocator scratch;
};

// Backward: the forward problem plus the gradient operands.
struct BwdProblem {
  Problem fwd;       // fwd.out and fwd.lse are read
  Operand dout;
  Operand dq, dk, dv;
  float* dsinks = nullptr;
  bool deterministic = false;
};

// Backward rows whose |lse| exceeds this have their softmax (m, log Z, out) recomputed from the
// backward's own scores before P = exp(s - m - log Z) is formed: half an ulp of an fp32 lse
// (|lse| * 2^-24) then stays well under the input dtype's own unit roundoff (fp16 and bf16: 1/8 of
// it; fp32: the level of fp32 accumulation error, for the |lse| of ordinary logits). See
// src/cpu/backward.cpp for why an fp32 lse cannot pin P down for extreme logits.
inline float stored_lse_limit(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return 1024.0f;   // u = 2^-11
    case DType::kBFloat16: return 8192.0f;  // u = 2^-8
    default: return 16.0f;                  // u = 2^-24
  }
}

struct KvWriteProblem {
  DType dtype = DType::kFloat32;
  int64_t batch = 0, heads_kv = 0, head_dim_qk = 0, head_dim_v = 0;
  Operand k_cache, v_cache;  // paged: batch_stride is the block stride
  Operand k_new, v_new;      // batched: batch_stride per sequence; varlen: rows via cu_seqlens_new
  int64_t seqlen_new = 0;    // batched only
  int64_t total_new = 0;     // varlen only: rows of k_new / v_new (bounds every read of them)
  const int32_t* cu_seqlens_new = nullptr;
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0, max_blocks_per_seq = 0, num_blocks = 0, block_size = 0;
  const int32_t* cache_seqlens = nullptr;
};

}  // namespace flashsdpa::core
