// Writing new tokens into KV caches:
//   - the append of attention_kvcache (k_new / v_new into a dense or paged cache, k rotated at its
//     slot's position), launched before the attention kernel (cuda-decode's for fp16/bf16,
//     cuda-fp32's for fp32) on the same stream;
//   - paged_kv_write: batched or varlen new tokens into a paged cache, one launch.
//
// One warp per (token, kv head) row. Every index read from a tensor is clamped or bounds-checked
// (SPEC §5): a bad cache_seqlens, cache_batch_idx, block_table or cu_seqlens_new entry makes its
// rows write nothing, never out of bounds.
#include <cuda_runtime.h>

#include "core/rotary.h"
#include "core/sequence.h"
#include "cuda/cuda_backend.h"
#include "cuda/decode_common.h"
#include "cuda/decode_launch.h"

namespace flashsdpa::cuda {
namespace decode {
namespace {

constexpr int kWarpsPerBlock = 4;

// Storage types of every cache dtype: fp32 caches move as raw 32-bit words, fp16/bf16 as 16-bit
// ones, so a copy never converts; rotation works in fp32 and rounds once to the storage type.
template <typename F>
void dispatch_storage(DType dtype, F&& f) {
  if (dtype == DType::kFloat32) f(float{});
  else if (dtype == DType::kFloat16) f(__half{});
  else f(__nv_bfloat16{});
}

// dst[0, n) = src[0, n), bit for bit, spread over the warp.
template <typename T>
__device__ __forceinline__ void copy_row(T* dst, const T* src, int64_t n, int lane) {
  for (int64_t d = lane; d < n; d += 32) dst[d] = src[d];
}

// The first rotary_dim elements rotated at table row `table_row` (core::rotary_pair gives the
// pairs), the rest copied. table_row < 0: the position has no table row and is copied unrotated.
template <typename T>
__device__ void rotate_row(T* dst, const T* src, const core::Problem& p, int64_t table_row, int lane) {
  if (p.rotary_dim == 0 || table_row < 0) return copy_row(dst, src, p.head_dim_qk, lane);
  const T* cos_row = static_cast<const T*>(p.rotary_cos) + table_row * p.rotary_row_stride;
  const T* sin_row = static_cast<const T*>(p.rotary_sin) + table_row * p.rotary_row_stride;
  for (int64_t t = lane; t < p.rotary_dim / 2; t += 32) {
    int64_t a, b;
    core::rotary_pair(t, p.rotary_dim, p.rotary_interleaved, &a, &b);
    const float x0 = to_float(src[a]), x1 = to_float(src[b]);
    const float c = to_float(cos_row[t]), s = to_float(sin_row[t]);
    dst[a] = from_float<T>(x0 * c - x1 * s);
    dst[b] = from_float<T>(x0 * s + x1 * c);
  }
  for (int64_t d = p.rotary_dim + lane; d < p.head_dim_qk; d += 32) dst[d] = src[d];
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) kv_append_kernel(const core::Problem p) {
  const int lane = threadIdx.x % 32;
  const int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (item >= p.batch * p.seqlen_new * p.heads_kv) return;
  const int64_t hkv = item % p.heads_kv;
  const int64_t t = (item / p.heads_kv) % p.seqlen_new;
  const int64_t b = item / (p.heads_kv * p.seqlen_new);

  const core::SeqView s = core::sequence(p, b);
  const int64_t j = s.append_begin + t;  // logical slot of new token t
  if (j >= s.append_end) return;         // past the cache's capacity, or a bad cache row
  const int64_t k_row = core::key_offset(p, s, p.k, b, j);
  const int64_t v_row = core::key_offset(p, s, p.v, b, j);
  if (k_row >= 0) {
    const T* src = static_cast<const T*>(p.k_new.ptr) + b * p.k_new.batch_stride + t * p.k_new.row_stride +
                   hkv * p.k_new.head_stride;
    T* dst = static_cast<T*>(p.k.mutable_ptr()) + k_row + hkv * p.k.head_stride;
    rotate_row(dst, src, p, core::rotary_row(p, j), lane);
  }
  if (v_row >= 0) {
    const T* src = static_cast<const T*>(p.v_new.ptr) + b * p.v_new.batch_stride + t * p.v_new.row_stride +
                   hkv * p.v_new.head_stride;
    T* dst = static_cast<T*>(p.v.mutable_ptr()) + v_row + hkv * p.v.head_stride;
    copy_row(dst, src, p.head_dim_v, lane);
  }
}

// The sequence that packed row `row` of varlen k_new belongs to: the last b with
// cu[b] <= row, found by bisection over the clamped offsets. -1 when none holds the row.
__device__ int64_t varlen_sequence_of(const core::KvWriteProblem& p, int64_t row, int64_t* first_row) {
  auto offset = [&](int64_t b) { return core::clamp_i64(p.cu_seqlens_new[b], 0, p.total_new); };
  int64_t lo = 0, hi = p.batch;  // invariant: the answer is in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offset(mid) <= row) lo = mid;
    else hi = mid;
  }
  const int64_t begin = offset(lo), end = offset(lo + 1);
  if (row < begin || row >= end) return -1;  // non-monotonic cu_seqlens_new: the row is nobody's
  *first_row = begin;
  return lo;
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) paged_kv_write_kernel(const core::KvWriteProblem p) {
  const int lane = threadIdx.x % 32;
  const int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const bool varlen = p.cu_seqlens_new != nullptr;
  const int64_t rows = varlen ? p.total_new : p.batch * p.seqlen_new;
  if (item >= rows * p.heads_kv) return;
  const int64_t hkv = item % p.heads_kv;
  const int64_t row = item / p.heads_kv;

  int64_t b, t, src_batch;
  if (varlen) {
    int64_t first_row = 0;
    b = varlen_sequence_of(p, row, &first_row);
    if (b < 0) return;
    t = row - first_row;
    src_batch = 0;
  } else {
    b = row / p.seqlen_new;
    t = row % p.seqlen_new;
    src_batch = b;
  }
  const int64_t position = int64_t(p.cache_seqlens[b]) + t;
  const int64_t slot = position / p.block_size;
  if (position < 0 || slot >= p.max_blocks_per_seq) return;
  const int64_t block = p.block_table[b * p.block_table_stride + slot];
  if (block < 0 || block >= p.num_blocks) return;
  const int64_t in_block = position - slot * p.block_size;
  const int64_t src_row = varlen ? row : t;

  const T* k_src = static_cast<const T*>(p.k_new.ptr) + src_batch * p.k_new.batch_stride +
                   src_row * p.k_new.row_stride + hkv * p.k_new.head_stride;
  const T* v_src = static_cast<const T*>(p.v_new.ptr) + src_batch * p.v_new.batch_stride +
                   src_row * p.v_new.row_stride + hkv * p.v_new.head_stride;
  T* k_dst = static_cast<T*>(p.k_cache.mutable_ptr()) + block * p.k_cache.batch_stride +
             in_block * p.k_cache.row_stride + hkv * p.k_cache.head_stride;
  T* v_dst = static_cast<T*>(p.v_cache.mutable_ptr()) + block * p.v_cache.batch_stride +
             in_block * p.v_cache.row_stride + hkv * p.v_cache.head_stride;
  copy_row(k_dst, k_src, p.head_dim_qk, lane);
  copy_row(v_dst, v_src, p.head_dim_v, lane);
}

}  // namespace
}  // namespace decode

void launch_kv_append(const core::Problem& p, cudaStream_t stream) {
  const int64_t items = p.batch * p.seqlen_new * p.heads_kv;
  if (items == 0) return;
  const dim3 grid(static_cast<unsigned>(decode::ceil_div(items, decode::kWarpsPerBlock)));
  decode::dispatch_storage(p.dtype, [&](auto tag) {  // cuda-decode (fp16/bf16) and cuda-fp32
    using T = decltype(tag);
    decode::kv_append_kernel<T><<<grid, decode::kWarpsPerBlock * 32, 0, stream>>>(p);
  });
  check_cuda(cudaGetLastError(), "kv_append_kernel launch");
}

void paged_kv_write(const core::KvWriteProblem& p, void* stream) {
  const int64_t rows = p.cu_seqlens_new != nullptr ? p.total_new : p.batch * p.seqlen_new;
  const int64_t items = rows * p.heads_kv;
  if (items == 0 || p.batch == 0) return;
  const dim3 grid(static_cast<unsigned>(decode::ceil_div(items, decode::kWarpsPerBlock)));
  decode::dispatch_storage(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    decode::paged_kv_write_kernel<T>
        <<<grid, decode::kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  check_cuda(cudaGetLastError(), "paged_kv_write_kernel launch");
}

}  // namespace flashsdpa::cuda
