// Writing new keys and values into caches: the append of flash_attn_with_kvcache (optionally
// rotating the keys) and the one-call paged write. Every destination slot comes from
// core::sequence / core::key_offset (or the same bounds for a KvWriteProblem), so a slot that is
// out of range is skipped: it reads and writes nothing.
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/problem.h"
#include "core/rotary.h"
#include "core/sequence.h"
#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"
#include "cpu/tile_math.h"

namespace flashsdpa::cpu {
namespace {

int64_t element_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

void copy_elements(void* dst_base, int64_t dst_offset, const void* src_base, int64_t src_offset, int64_t n,
                   DType dtype) {
  const int64_t esize = element_bytes(dtype);
  std::memcpy(static_cast<char*>(dst_base) + dst_offset * esize,
              static_cast<const char*>(src_base) + src_offset * esize, static_cast<size_t>(n * esize));
}

// Rotates the first rotary_dim elements of the key already copied to k at `dst`, reading the
// unrotated source at `src`: widened to fp32, rotated, rounded back to the dtype. Elements past
// rotary_dim keep the source's exact bits.
void rotate_key(const core::Problem& p, const TileOps& ops, int64_t position, int64_t src, int64_t dst,
                std::vector<float>& buffer) {
  const int64_t table_row = core::rotary_row(p, position);
  if (table_row < 0) return;
  const int64_t esize = element_bytes(p.dtype);
  const int64_t half = p.rotary_dim / 2;
  buffer.resize(static_cast<size_t>(p.rotary_dim * 2));
  float* x = buffer.data();
  float* cos_sin = x + p.rotary_dim;
  const int64_t table_offset = table_row * p.rotary_row_stride;
  ops.load_row(static_cast<const char*>(p.k_new.ptr) + src * esize, p.dtype, x, p.rotary_dim);
  ops.load_row(static_cast<const char*>(p.rotary_cos) + table_offset * esize, p.dtype, cos_sin, half);
  ops.load_row(static_cast<const char*>(p.rotary_sin) + table_offset * esize, p.dtype, cos_sin + half, half);
  core::rotary_apply(x, cos_sin, cos_sin + half, p.rotary_dim, p.rotary_interleaved);
  ops.store_row(x, 1.0f, static_cast<char*>(p.k.mutable_ptr()) + dst * esize, p.dtype, p.rotary_dim);
}

// The append of a KV-cache call: token t of sequence b goes to logical slot append_begin + t.
void append_new_tokens(const core::Problem& p, int num_threads) {
  if (p.seqlen_new == 0 || p.k_new.ptr == nullptr) return;
  const TileOps& ops = tile_ops();
  parallel_for(p.batch * p.seqlen_new, num_threads, [&](int64_t index, int) {
    const int64_t b = index / p.seqlen_new;
    const int64_t t = index % p.seqlen_new;
    const core::SeqView s = core::sequence(p, b);
    const int64_t slot = s.append_begin + t;
    if (slot >= s.append_end) return;
    const int64_t k_row = core::key_offset(p, s, p.k, b, slot);
    const int64_t v_row = core::key_offset(p, s, p.v, b, slot);
    std::vector<float> buffer;
    for (int64_t h = 0; h < p.heads_kv; ++h) {
      const int64_t k_src = b * p.k_new.batch_stride + t * p.k_new.row_stride + h * p.k_new.head_stride;
      const int64_t v_src = b * p.v_new.batch_stride + t * p.v_new.row_stride + h * p.v_new.head_stride;
      if (k_row >= 0) {
        const int64_t k_dst = k_row + h * p.k.head_stride;
        copy_elements(p.k.mutable_ptr(), k_dst, p.k_new.ptr, k_src, p.head_dim_qk, p.dtype);
        if (p.rotary_dim > 0) rotate_key(p, ops, slot, k_src, k_dst, buffer);
      }
      if (v_row >= 0) {
        copy_elements(p.v.mutable_ptr(), v_row + h * p.v.head_stride, p.v_new.ptr, v_src, p.head_dim_v, p.dtype);
      }
    }
  });
}

}  // namespace

void kvcache(const core::Problem& p, int num_threads) {
  append_new_tokens(p, num_threads);
  forward(p, num_threads);
}

void paged_kv_write(const core::KvWriteProblem& p, int num_threads) {
  const bool varlen = p.cu_seqlens_new != nullptr;
  // Batched: one index per (sequence, token). Varlen: one per sequence (lengths differ).
  const int64_t count = varlen ? p.batch : p.batch * p.seqlen_new;
  parallel_for(count, num_threads, [&](int64_t index, int) {
    const int64_t b = varlen ? index : index / p.seqlen_new;
    // Varlen rows are clamped to [0, total_new): a bad cu_seqlens_new shortens the sequence.
    const int64_t row0 = varlen ? core::clamp_i64(p.cu_seqlens_new[b], 0, p.total_new) : 0;
    const int64_t row1 = varlen ? core::clamp_i64(p.cu_seqlens_new[b + 1], row0, p.total_new) : 0;
    const int64_t t_begin = varlen ? 0 : index % p.seqlen_new;
    const int64_t t_end = varlen ? row1 - row0 : t_begin + 1;
    const int64_t base = varlen ? 0 : b * p.k_new.batch_stride;
    const int64_t v_base = varlen ? 0 : b * p.v_new.batch_stride;
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t position = static_cast<int64_t>(p.cache_seqlens[b]) + t;
      if (position < 0) continue;
      const int64_t slot = position / p.block_size;
      if (slot >= p.max_blocks_per_seq) continue;
      const int64_t block = p.block_table[b * p.block_table_stride + slot];
      if (block < 0 || block >= p.num_blocks) continue;
      const int64_t within = position - slot * p.block_size;
      for (int64_t h = 0; h < p.heads_kv; ++h) {
        copy_elements(p.k_cache.mutable_ptr(),
                      block * p.k_cache.batch_stride + within * p.k_cache.row_stride + h * p.k_cache.head_stride,
                      p.k_new.ptr, base + (row0 + t) * p.k_new.row_stride + h * p.k_new.head_stride, p.head_dim_qk,
                      p.dtype);
        copy_elements(p.v_cache.mutable_ptr(),
                      block * p.v_cache.batch_stride + within * p.v_cache.row_stride + h * p.v_cache.head_stride,
                      p.v_new.ptr, v_base + (row0 + t) * p.v_new.row_stride + h * p.v_new.head_stride, p.head_dim_v,
                      p.dtype);
      }
    }
  });
}

}  // namespace flashsdpa::cpu
