// The CUDA backward (tier cuda-bwd): FlashAttention-2's algorithm (Dao 2023, algorithm 2) in
// plain fp32 SIMT arithmetic, every feature the CPU backward serves, any dtype, head dims 1..256.
//
// Four launches on the call's stream, no float atomics anywhere:
//   1. row terms   one warp per (sequence, query head, query row): D_i = rowsum(dO_i * out_i), and
//                  the softmax statistics P is recomputed against (m_i = lse_i, log Z_i = 0).
//   2. key blocks  one block per (sequence, kv head, 16 keys): for every query head of the group
//                  and every 16-row query tile that can see the keys, recompute P and
//                      dV += P^T dO,   dP = dO V^T,   dS = P * (dP - D) * (d s / d s_raw) * scale,
//                      dK += dS^T Q.
//                  dk/dv of the 16 keys are owned by the block and written once.
//   3. query blocks  one block per (sequence, query head, 16 rows): the same P and dS over every
//                  key the rows can see, dQ += dS K, written once; with sinks also each row's
//                  R_i = sum_j P_ij dP_ij and S_i = sum_j P_ij, and its share of d(sink).
//   4. sinks       one block per query head sums the row shares in a fixed order (sequence, row,
//                  then a fixed reduction tree).
//
// Scores: every s_ij is one fmaf chain over d = 0, 1, ... of fp32 operands, the modifiers
// (core::ScoreMod, the one definition) evaluated in double, so passes 1-3 compute bit-identical
// scores for the same (i, j) whatever tile they sit in. P_ij = exp(s_ij - m_i - log Z_i) in double.
// D_i is the same fmaf chain as dP_ij, so where out_i = v_j exactly (a one-hot row) dP_ij - D_i
// cancels exactly, as in the CPU backward.
//
// Extreme logits: rows with |lse| beyond core::stored_lse_limit() get m_i, log Z_i and out_i
// recomputed in pass 1 from the very scores passes 2 and 3 use (see src/cpu/backward.cpp for why
// an fp32 lse from another kernel cannot pin P down there). Ordinary rows cost nothing extra.
//
// d(sink_h) = -sum_i P_sink,i R_i / (S_i + P_sink,i)^2 (the CPU backward's form, exact to fp32
// rounding of the backward's own P rather than the rounded out and lse).
//
// Masking: a key j's allowed query rows and a row i's allowed keys are contiguous ranges
// (core::Mask), so the gradient products loop over allowed entries only: a NaN in a row of q, dO
// or K reaches only the gradients it influences.
//
// Determinism: the work of each block and the order of every sum depend on the shape alone.
// Safety (SPEC §5): every row index comes from core/sequence.h's clamped geometry; query rows are
// also bounded by the grid's coverage (seqlen_q, max_seqlen_q for varlen) so scratch rows that
// pass 1 did not write are never read. Scratch: 3 floats (+ 1 double with a sink gradient) per
// (query row, query head), from cudaMallocAsync on the call's stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/mask.h"
#include "core/problem.h"
#include "core/sequence.h"
#include "cuda/device_utils.cuh"
#include "cuda/launch.h"

namespace flashsdpa::cuda {
namespace {

using core::Mask;
using core::Problem;
using core::SeqView;

constexpr int kThreads = 256;
constexpr int kTileRows = 16;  // query rows of a tile
constexpr int kTileKeys = 16;  // keys of a tile
static_assert(kTileRows * kTileKeys == kThreads, "one thread per (row, key) of a score tile");
constexpr int kMaxHeadDim = 256;
// Gradient accumulators per thread: a 16 x 256 tile over 256 threads.
constexpr int kAccumulators = kTileKeys * kMaxHeadDim / kThreads;
static_assert(kTileRows == kTileKeys, "dQ and dK/dV tiles share kAccumulators");
constexpr int kRowsPerRowTermBlock = kThreads / 32;  // pass 1: one warp per row
constexpr int kOutPerLane = kMaxHeadDim / 32;        // pass 1 recompute: out columns per lane

// Per-row scratch, indexed [h * rows + row] (row: the query row in the dense q row order).
struct RowScratch {
  float* max = nullptr;      // m_i
  float* log_sum = nullptr;  // log Z_i
  float* dot = nullptr;      // D_i
  double* sink_term = nullptr;  // -P_sink,i R_i / (S_i + P_sink,i)^2; null without a sink gradient
  int64_t rows = 0;
};

struct BwdArgs {
  core::BwdProblem bp;
  RowScratch scratch;
  float lse_limit;  // core::stored_lse_limit(dtype)
};

// ---- elements -------------------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <class T>
__device__ __forceinline__ const T* at(const void* base, int64_t offset) {
  return static_cast<const T*>(base) + offset;
}

// ---- geometry ---------------------------------------------------------------------------------------

// Query rows of sequence s the launch covers: the grids span seqlen_q (the max_seqlen_q hint for
// varlen), so with a hint shorter than a sequence no pass touches the rows past it.
__device__ __forceinline__ int64_t covered_rows(const Problem& p, const SeqView& s) {
  return core::min_i64(s.sq, p.seqlen_q);
}

// dk/dv rows belong to sequence b even where seqused_k leaves them unattended (they get zeros).
__device__ __forceinline__ int64_t stored_key_rows(const Problem& p, int64_t b) {
  if (p.kv_layout == core::KvLayout::kVarlen) {
    const int64_t lo = core::clamp_i64(p.cu_seqlens_k[b], 0, p.total_k);
    const int64_t hi = core::clamp_i64(p.cu_seqlens_k[b + 1], 0, p.total_k);
    return core::max_i64(hi - lo, 0);
  }
  return p.seqlen_k;
}

__device__ __forceinline__ int64_t scratch_row(const Problem& p, const SeqView& s, int64_t b, int64_t h, int64_t i,
                                               const RowScratch& scratch) {
  const int64_t row = (p.q_layout == core::QLayout::kVarlen ? s.q_row0 : b * p.seqlen_q) + i;
  return h * scratch.rows + row;
}

__device__ __forceinline__ core::ScoreMod score_mod(const Problem& p, int64_t b, int64_t h) {
  core::ScoreMod mod;
  mod.softcap = p.softcap;
  if (p.alibi_slopes != nullptr) {
    mod.has_alibi = true;
    mod.alibi_slope = p.alibi_slopes[b * p.alibi_batch_stride + h];
  }
  return mod;
}

// ---- the score, its probability and its gradient (shared by every pass) -----------------------

// <a, b> as one fmaf chain over d in order: the same bits wherever the operands come from.
template <class A, class B>
__device__ __forceinline__ float dot_in_order(A a, B b, int n) {
  float acc = 0.0f;
  for (int d = 0; d < n; ++d) acc = fmaf(a(d), b(d), acc);
  return acc;
}

// s_ij = mod(scale * raw) and d s / d(scale * raw), the modifiers in double.
__device__ __forceinline__ float modified_score(const Problem& p, const core::ScoreMod& mod, float raw, int64_t i,
                                                int64_t j, int64_t diag, float* grad) {
  double g = 1.0;
  const double s = mod.apply(static_cast<double>(p.scale * raw), i, j, diag, &g);
  *grad = static_cast<float>(g);
  return static_cast<float>(s);
}

__device__ __forceinline__ float probability(float s, float row_max, float row_log_sum) {
  return static_cast<float>(exp(static_cast<double>(s) - row_max - row_log_sum));
}

// ---- shared-memory tiles of passes 2 and 3 --------------------------------------------------------

// fp32 rows padded by one float, so the 16 keys (or rows) one warp reads at a fixed d fall in 16
// different banks.
struct Tiles {
  float* k;       // [kTileKeys][dqk + 1]
  float* v;       // [kTileKeys][dv + 1]
  float* q;       // [kTileRows][dqk + 1]
  float* dout;    // [kTileRows][dv + 1]
  float* prob;    // [kTileRows][kTileKeys]
  float* dscore;  // [kTileRows][kTileKeys]
  float* row_max;
  float* row_log_sum;
  float* row_dot;
  int qk_pitch, v_pitch;
};

__host__ __device__ inline int64_t tile_floats(int64_t dqk, int64_t dv) {
  return (kTileKeys + kTileRows) * (dqk + 1 + dv + 1) + 2 * kTileRows * kTileKeys + 3 * kTileRows;
}

__device__ __forceinline__ Tiles carve_tiles(float* smem, int dqk, int dv) {
  Tiles t;
  t.qk_pitch = dqk + 1;
  t.v_pitch = dv + 1;
  t.k = smem;
  t.v = t.k + kTileKeys * t.qk_pitch;
  t.q = t.v + kTileKeys * t.v_pitch;
  t.dout = t.q + kTileRows * t.qk_pitch;
  t.prob = t.dout + kTileRows * t.v_pitch;
  t.dscore = t.prob + kTileRows * kTileKeys;
  t.row_max = t.dscore + kTileRows * kTileKeys;
  t.row_log_sum = t.row_max + kTileRows;
  t.row_dot = t.row_log_sum + kTileRows;
  return t;
}

// K and V rows [j0, j_end) of kv head hk into the tile, zeros past j_end.
template <class T>
__device__ void load_key_tile(const Problem& p, const SeqView& s, int64_t b, int64_t hk, int64_t j0, int64_t j_end,
                              const Tiles& t) {
  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);
  for (int e = threadIdx.x; e < kTileKeys * dqk; e += kThreads) {
    const int c = e / dqk, d = e % dqk;
    const int64_t j = j0 + c;
    float x = 0.0f;
    if (j < j_end) {
      const int64_t off = core::key_offset(p, s, p.k, b, j);
      if (off >= 0) x = to_float(*at<T>(p.k.ptr, off + hk * p.k.head_stride + d));
    }
    t.k[c * t.qk_pitch + d] = x;
  }
  for (int e = threadIdx.x; e < kTileKeys * dv; e += kThreads) {
    const int c = e / dv, d = e % dv;
    const int64_t j = j0 + c;
    float x = 0.0f;
    if (j < j_end) {
      const int64_t off = core::key_offset(p, s, p.v, b, j);
      if (off >= 0) x = to_float(*at<T>(p.v.ptr, off + hk * p.v.head_stride + d));
    }
    t.v[c * t.v_pitch + d] = x;
  }
}

// Query rows [i0, i1) of head h: q, dout and the pass-1 row terms; zeros past i1.
template <class T>
__device__ void load_query_tile(const BwdArgs& a, const SeqView& s, int64_t b, int64_t h, int64_t i0, int64_t i1,
                                const Tiles& t) {
  const Problem& p = a.bp.fwd;
  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);
  for (int e = threadIdx.x; e < kTileRows * dqk; e += kThreads) {
    const int r = e / dqk, d = e % dqk;
    const int64_t i = i0 + r;
    t.q[r * t.qk_pitch + d] = i < i1 ? to_float(*at<T>(p.q.ptr, core::q_offset(p, s, b, i, h) + d)) : 0.0f;
  }
  for (int e = threadIdx.x; e < kTileRows * dv; e += kThreads) {
    const int r = e / dv, d = e % dv;
    const int64_t i = i0 + r;
    t.dout[r * t.v_pitch + d] =
        i < i1 ? to_float(*at<T>(a.bp.dout.ptr, core::query_side_offset(p, s, a.bp.dout, b, i, h) + d)) : 0.0f;
  }
  if (threadIdx.x < kTileRows) {
    const int64_t i = i0 + threadIdx.x;
    const bool inside = i < i1;
    const int64_t row = inside ? scratch_row(p, s, b, h, i, a.scratch) : 0;
    t.row_max[threadIdx.x] = inside ? a.scratch.max[row] : -INFINITY;
    t.row_log_sum[threadIdx.x] = inside ? a.scratch.log_sum[row] : 0.0f;
    t.row_dot[threadIdx.x] = inside ? a.scratch.dot[row] : 0.0f;
  }
}

// This thread's entry (row r = tid / 16, key c = tid % 16) of P and dS for the loaded tiles:
// query rows [i0, i1) against keys [j0, j1); exactly 0 where the mask forbids or the row saw
// nothing in the forward. Returns P_ij * dP_ij in *prob_dprob (the sink gradient's R_i term).
__device__ __forceinline__ float tile_scores(const Problem& p, const Mask& mask, const core::ScoreMod& mod, int64_t i0,
                                             int64_t i1, int64_t j0, int64_t j1, const Tiles& t, float* prob_dprob) {
  const int r = threadIdx.x / kTileKeys, c = threadIdx.x % kTileKeys;
  const int64_t i = i0 + r, j = j0 + c;
  float prob = 0.0f, dscore = 0.0f;
  *prob_dprob = 0.0f;
  if (i < i1 && j < j1 && mask.allowed(i, j) && t.row_max[r] != -INFINITY) {
    const float* q_row = t.q + r * t.qk_pitch;
    const float* k_row = t.k + c * t.qk_pitch;
    const float* dout_row = t.dout + r * t.v_pitch;
    const float* v_row = t.v + c * t.v_pitch;
    const float raw = dot_in_order([&](int d) { return q_row[d]; }, [&](int d) { return k_row[d]; },
                                   static_cast<int>(p.head_dim_qk));
    float cap_grad;
    const float s = modified_score(p, mod, raw, i, j, mask.diag, &cap_grad);
    prob = probability(s, t.row_max[r], t.row_log_sum[r]);
    const float dprob = dot_in_order([&](int d) { return dout_row[d]; }, [&](int d) { return v_row[d]; },
                                     static_cast<int>(p.head_dim_v));
    dscore = prob * (dprob - t.row_dot[r]) * p.scale;
    if (p.softcap > 0.0f) dscore *= cap_grad;
    *prob_dprob = prob * dprob;
  }
  t.prob[r * kTileKeys + c] = prob;
  t.dscore[r * kTileKeys + c] = dscore;
  return prob;
}

// ---- pass 1: row terms ----------------------------------------------------------------------------

// The forward of row i, head h, over the scores passes 2 and 3 compute (two sweeps: the max, then
// the sum and out), into *row_max, *row_log_sum and out_row (smem, dv floats). False when the
// row has nothing to normalise: the forward's lse and out are kept then.
template <class T>
__device__ bool recompute_row(const Problem& p, const SeqView& s, int64_t b, int64_t h, int64_t i, float* row_max,
                              float* row_log_sum, float* out_row) {
  const int lane = threadIdx.x % 32;
  const Mask mask = core::sequence_mask(p, s);
  const core::ScoreMod mod = score_mod(p, b, h);
  const int64_t hk = h / p.group;
  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);
  const T* q = at<T>(p.q.ptr, core::q_offset(p, s, b, i, h));
  const int64_t j_begin = mask.row_begin(i), j_end = mask.row_end(i);
  auto score = [&](int64_t j) {
    const int64_t off = core::key_offset(p, s, p.k, b, j);
    float raw = 0.0f;  // a key that reads nothing scores as a zero key, as its tile load gives
    if (off >= 0) {
      const T* k = at<T>(p.k.ptr, off + hk * p.k.head_stride);
      raw = dot_in_order([&](int d) { return to_float(q[d]); }, [&](int d) { return to_float(k[d]); }, dqk);
    }
    float unused;
    return modified_score(p, mod, raw, i, j, mask.diag, &unused);
  };
  // Every lane computes every score (the same bits); lanes split the out columns.
  float m = -INFINITY;
  for (int64_t j = j_begin; j < j_end; ++j) m = fmaxf(m, score(j));
  const float sink = p.sinks != nullptr ? p.sinks[h] : -INFINITY;
  m = fmaxf(m, sink);
  if (!(m > -INFINITY) || !isfinite(m)) return false;
  float acc[kOutPerLane];
#pragma unroll
  for (int u = 0; u < kOutPerLane; ++u) acc[u] = 0.0f;
  double sum = 0.0;
  for (int64_t j = j_begin; j < j_end; ++j) {
    const float w = static_cast<float>(exp(static_cast<double>(score(j)) - m));
    sum += w;
    const int64_t off = core::key_offset(p, s, p.v, b, j);
    if (off < 0) continue;
    const T* v = at<T>(p.v.ptr, off + hk * p.v.head_stride);
#pragma unroll
    for (int u = 0; u < kOutPerLane; ++u) {
      const int d = lane + 32 * u;
      if (d < dv) acc[u] = fmaf(w, to_float(v[d]), acc[u]);
    }
  }
  if (sink > -INFINITY) sum += exp(static_cast<double>(sink) - m);
  if (!(sum > 0.0)) return false;
  *row_max = m;
  *row_log_sum = static_cast<float>(log(sum));
  const float inv_sum = static_cast<float>(1.0 / sum);
#pragma unroll
  for (int u = 0; u < kOutPerLane; ++u) {
    const int d = lane + 32 * u;
    if (d < dv) out_row[d] = acc[u] * inv_sum;
  }
  return true;
}

template <class T>
__global__ void __launch_bounds__(kThreads) row_terms_kernel(BwdArgs a) {
  __shared__ float out_rows[kRowsPerRowTermBlock][kMaxHeadDim];
  const Problem& p = a.bp.fwd;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerRowTermBlock + warp;
  const SeqView s = core::sequence(p, b);
  if (i >= covered_rows(p, s)) return;
  const int dv = static_cast<int>(p.head_dim_v);
  const float lse = p.lse[core::lse_offset(p, s, b, i, h)];
  float row_max = lse, row_log_sum = 0.0f;
  float* out_row = out_rows[warp];
  const bool recomputed = isfinite(lse) && fabsf(lse) > a.lse_limit &&
                          recompute_row<T>(p, s, b, h, i, &row_max, &row_log_sum, out_row);
  if (!recomputed) {
    const T* out = at<T>(p.out.ptr, core::out_offset(p, s, b, i, h));
    for (int d = lane; d < dv; d += 32) out_row[d] = to_float(out[d]);
  }
  __syncwarp();
  // The fmaf chain of dP (tile_scores), so a one-hot row's dP_ij - D_i cancels exactly.
  const T* dout = at<T>(a.bp.dout.ptr, core::query_side_offset(p, s, a.bp.dout, b, i, h));
  const float dot = dot_in_order([&](int d) { return to_float(dout[d]); }, [&](int d) { return out_row[d]; }, dv);
  if (lane == 0) {
    const int64_t row = scratch_row(p, s, b, h, i, a.scratch);
    a.scratch.max[row] = row_max;
    a.scratch.log_sum[row] = row_log_sum;
    a.scratch.dot[row] = dot;
  }
}

// ---- pass 2: dK, dV per key block -------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(kThreads) key_block_kernel(BwdArgs a) {
  extern __shared__ float smem[];
  const Problem& p = a.bp.fwd;
  const int64_t b = blockIdx.z, hk = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTileKeys;
  const SeqView s = core::sequence(p, b);
  const Mask mask = core::sequence_mask(p, s);
  const int64_t stored = stored_key_rows(p, b);
  if (j0 >= stored) return;
  const int64_t j1 = core::min_i64(j0 + kTileKeys, stored);
  const int64_t attended_end = core::max_i64(core::min_i64(j1, mask.k_end), j0);
  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);
  const Tiles t = carve_tiles(smem, dqk, dv);

  float dk_acc[kAccumulators], dv_acc[kAccumulators];
#pragma unroll
  for (int u = 0; u < kAccumulators; ++u) dk_acc[u] = dv_acc[u] = 0.0f;

  if (attended_end > j0) {
    load_key_tile<T>(p, s, b, hk, j0, attended_end, t);
    const int64_t q_begin = mask.query_begin(j0);
    const int64_t q_end = core::min_i64(mask.query_end(attended_end - 1), covered_rows(p, s));
    for (int64_t g = 0; g < p.group; ++g) {
      const int64_t h = hk * p.group + g;
      const core::ScoreMod mod = score_mod(p, b, h);
      for (int64_t i0 = q_begin; i0 < q_end; i0 += kTileRows) {
        const int64_t i1 = core::min_i64(i0 + kTileRows, q_end);
        __syncthreads();  // the previous tile's readers are done
        load_query_tile<T>(a, s, b, h, i0, i1, t);
        __syncthreads();
        float unused;
        tile_scores(p, mask, mod, i0, i1, j0, attended_end, t, &unused);
        __syncthreads();
        // dV_jd += sum_i P_ij dO_id and dK_jd += sum_i dS_ij Q_id over the rows that may see key j
#pragma unroll
        for (int u = 0; u < kAccumulators; ++u) {
          const int e = threadIdx.x + kThreads * u;
          if (e < kTileKeys * dv) {
            const int c = e / dv, d = e % dv;
            const int64_t j = j0 + c;
            if (j >= mask.k_begin && j < attended_end) {
              const int r0 = static_cast<int>(core::max_i64(mask.query_begin(j), i0) - i0);
              const int r1 = static_cast<int>(core::min_i64(mask.query_end(j), i1) - i0);
              for (int r = r0; r < r1; ++r) dv_acc[u] = fmaf(t.prob[r * kTileKeys + c], t.dout[r * t.v_pitch + d], dv_acc[u]);
            }
          }
          if (e < kTileKeys * dqk) {
            const int c = e / dqk, d = e % dqk;
            const int64_t j = j0 + c;
            if (j >= mask.k_begin && j < attended_end) {
              const int r0 = static_cast<int>(core::max_i64(mask.query_begin(j), i0) - i0);
              const int r1 = static_cast<int>(core::min_i64(mask.query_end(j), i1) - i0);
              for (int r = r0; r < r1; ++r) dk_acc[u] = fmaf(t.dscore[r * kTileKeys + c], t.q[r * t.qk_pitch + d], dk_acc[u]);
            }
          }
        }
      }
    }
  }

  // Store: every stored key row of the block, zeros where nothing attended it.
#pragma unroll
  for (int u = 0; u < kAccumulators; ++u) {
    const int e = threadIdx.x + kThreads * u;
    if (e < kTileKeys * dv) {
      const int64_t j = j0 + e / dv;
      const int64_t off = j < j1 ? core::key_offset(p, s, a.bp.dv, b, j) : -1;
      if (off >= 0)
        static_cast<T*>(a.bp.dv.mutable_ptr())[off + hk * a.bp.dv.head_stride + e % dv] = from_float<T>(dv_acc[u]);
    }
    if (e < kTileKeys * dqk) {
      const int64_t j = j0 + e / dqk;
      const int64_t off = j < j1 ? core::key_offset(p, s, a.bp.dk, b, j) : -1;
      if (off >= 0)
        static_cast<T*>(a.bp.dk.mutable_ptr())[off + hk * a.bp.dk.head_stride + e % dqk] = from_float<T>(dk_acc[u]);
    }
  }
}

// ---- pass 3: dQ (and the rows' sink-gradient shares) per query block ----------------------------

template <class T>
__global__ void __launch_bounds__(kThreads) query_block_kernel(BwdArgs a) {
  extern __shared__ float smem[];
  const Problem& p = a.bp.fwd;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const SeqView s = core::sequence(p, b);
  const int64_t rows = covered_rows(p, s);
  if (i0 >= rows) return;
  const int64_t i1 = core::min_i64(i0 + kTileRows, rows);
  const Mask mask = core::sequence_mask(p, s);
  const core::ScoreMod mod = score_mod(p, b, h);
  const int64_t hk = h / p.group;
  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);
  const Tiles t = carve_tiles(smem, dqk, dv);
  const bool sink_gradient = a.scratch.sink_term != nullptr;

  load_query_tile<T>(a, s, b, h, i0, i1, t);
  float dq_acc[kAccumulators];
#pragma unroll
  for (int u = 0; u < kAccumulators; ++u) dq_acc[u] = 0.0f;
  double row_pdp = 0.0, row_psum = 0.0;  // R_i, S_i of row tid / 16, held by its key-0 thread

  const int64_t k_lo = mask.tile_begin(i0, i1), k_hi = mask.tile_end(i0, i1);
  for (int64_t j0 = k_lo; j0 < k_hi; j0 += kTileKeys) {
    const int64_t j1 = core::min_i64(j0 + kTileKeys, k_hi);
    __syncthreads();  // the previous key tile's readers are done (and the query tile is loaded)
    load_key_tile<T>(p, s, b, hk, j0, j1, t);
    __syncthreads();
    float prob_dprob;
    const float prob = tile_scores(p, mask, mod, i0, i1, j0, j1, t, &prob_dprob);
    if (sink_gradient) {
      // The 16 keys of a row are 16 consecutive lanes: a fixed butterfly order.
      double pdp = prob_dprob, psum = prob;
#pragma unroll
      for (int offset = kTileKeys / 2; offset > 0; offset /= 2) {
        pdp += __shfl_xor_sync(0xffffffffu, pdp, offset, kTileKeys);
        psum += __shfl_xor_sync(0xffffffffu, psum, offset, kTileKeys);
      }
      row_pdp += pdp;
      row_psum += psum;
    }
    __syncthreads();
    // dQ_id += sum_j dS_ij K_jd over the keys row i may see
#pragma unroll
    for (int u = 0; u < kAccumulators; ++u) {
      const int e = threadIdx.x + kThreads * u;
      if (e < kTileRows * dqk) {
        const int r = e / dqk, d = e % dqk;
        const int64_t i = i0 + r;
        if (i < i1) {
          const int c0 = static_cast<int>(core::clamp_i64(mask.row_begin(i), j0, j1) - j0);
          const int c1 = static_cast<int>(core::clamp_i64(mask.row_end(i), j0, j1) - j0);
          for (int c = c0; c < c1; ++c) dq_acc[u] = fmaf(t.dscore[r * kTileKeys + c], t.k[c * t.qk_pitch + d], dq_acc[u]);
        }
      }
    }
  }
  __syncthreads();  // the row terms are visible even when no key tile ran

#pragma unroll
  for (int u = 0; u < kAccumulators; ++u) {
    const int e = threadIdx.x + kThreads * u;
    if (e < kTileRows * dqk) {
      const int64_t i = i0 + e / dqk;
      if (i < i1)
        static_cast<T*>(a.bp.dq.mutable_ptr())[core::query_side_offset(p, s, a.bp.dq, b, i, h) + e % dqk] =
            from_float<T>(dq_acc[u]);
    }
  }
  if (sink_gradient && threadIdx.x % kTileKeys == 0) {
    const int r = threadIdx.x / kTileKeys;
    const int64_t i = i0 + r;
    if (i < i1) {
      double term = 0.0;
      if (t.row_max[r] != -INFINITY) {
        const double sink_prob = exp(static_cast<double>(p.sinks[h]) - t.row_max[r] - t.row_log_sum[r]);
        const double norm = row_psum + sink_prob;
        if (norm > 0.0) term = -sink_prob * row_pdp / (norm * norm);
      }
      a.scratch.sink_term[scratch_row(p, s, b, h, i, a.scratch)] = term;
    }
  }
}

// ---- pass 4: d(sink_h), one block per head, fixed order ----------------------------------------

__global__ void __launch_bounds__(kThreads) sink_gradient_kernel(BwdArgs a) {
  __shared__ double partial[kThreads];
  const Problem& p = a.bp.fwd;
  const int64_t h = blockIdx.x;
  double acc = 0.0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const SeqView s = core::sequence(p, b);
    const int64_t rows = covered_rows(p, s);
    for (int64_t i = threadIdx.x; i < rows; i += kThreads) acc += a.scratch.sink_term[scratch_row(p, s, b, h, i, a.scratch)];
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) a.bp.dsinks[h] = static_cast<float>(partial[0]);
}

// ---- launch -------------------------------------------------------------------------------------------

unsigned blocks_for(int64_t count, int64_t per_block) { return static_cast<unsigned>((count + per_block - 1) / per_block); }

template <class T>
void launch_passes(const BwdArgs& args, cudaStream_t stream) {
  const Problem& p = args.bp.fwd;
  const int smem_bytes = static_cast<int>(tile_floats(p.head_dim_qk, p.head_dim_v) * sizeof(float));
  // Granted before anything runs, so a refusal writes nothing.
  require_shared_memory(cudaFuncSetAttribute(key_block_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes),
                        smem_bytes, "cuda-bwd");
  require_shared_memory(cudaFuncSetAttribute(query_block_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes),
                        smem_bytes, "cuda-bwd");
  const unsigned batch = static_cast<unsigned>(p.batch);
  if (p.seqlen_q > 0)
    row_terms_kernel<T><<<dim3(blocks_for(p.seqlen_q, kRowsPerRowTermBlock), static_cast<unsigned>(p.heads_q), batch),
                          kThreads, 0, stream>>>(args);
  if (p.seqlen_k > 0)
    key_block_kernel<T><<<dim3(blocks_for(p.seqlen_k, kTileKeys), static_cast<unsigned>(p.heads_kv), batch), kThreads,
                          smem_bytes, stream>>>(args);
  if (p.seqlen_q > 0)
    query_block_kernel<T><<<dim3(blocks_for(p.seqlen_q, kTileRows), static_cast<unsigned>(p.heads_q), batch), kThreads,
                            smem_bytes, stream>>>(args);
  if (args.bp.dsinks != nullptr)
    sink_gradient_kernel<<<static_cast<unsigned>(p.heads_q), kThreads, 0, stream>>>(args);
}

}  // namespace

void launch_backward(const core::BwdProblem& bp, cudaStream_t stream) {
  const Problem& p = bp.fwd;
  BwdArgs args;
  args.bp = bp;
  if (p.sinks == nullptr) args.bp.dsinks = nullptr;
  args.lse_limit = core::stored_lse_limit(p.dtype);
  if (p.batch == 0 || p.heads_q == 0) {
    return;  // nothing to compute and no gradient element to write
  }
  RowScratch& scratch = args.scratch;
  scratch.rows = p.q_layout == core::QLayout::kVarlen ? p.total_q : p.batch * p.seqlen_q;
  const int64_t entries = scratch.rows * p.heads_q;
  const bool sink_gradient = args.bp.dsinks != nullptr;
  const size_t bytes = static_cast<size_t>(entries) * (3 * sizeof(float) + (sink_gradient ? sizeof(double) : 0));
  void* memory = nullptr;
  if (bytes > 0) check_cuda(cudaMallocAsync(&memory, bytes, stream), "cudaMallocAsync(backward row terms)");
  if (sink_gradient) scratch.sink_term = static_cast<double*>(memory);  // first: 8-byte aligned
  float* floats = static_cast<float*>(memory) + (sink_gradient ? 2 * entries : 0);
  scratch.max = floats;
  scratch.log_sum = floats + entries;
  scratch.dot = floats + 2 * entries;
  try {
    switch (p.dtype) {
      case DType::kFloat16: launch_passes<__half>(args, stream); break;
      case DType::kBFloat16: launch_passes<__nv_bfloat16>(args, stream); break;
      default: launch_passes<float>(args, stream); break;
    }
    check_cuda(cudaGetLastError(), "cuda-bwd launch");
  } catch (...) {
    if (memory != nullptr) cudaFreeAsync(memory, stream);
    throw;
  }
  if (memory != nullptr) check_cuda(cudaFreeAsync(memory, stream), "cudaFreeAsync(backward row terms)");
}

}  // namespace flashsdpa::cuda
