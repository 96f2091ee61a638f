// Per-sequence geometry: where sequence b's query rows and keys live, for every layout, and the
// rotary positions of KV append (SPEC §1, §3). Host and device code share these definitions.
//
// Safety (SPEC §5): index tensors may live on the GPU and are not validated on the fast path, so
// every value read from them is clamped here. A bad cu_seqlens gives an empty or shortened
// sequence; a bad cache_batch_idx gives a sequence with no keys and no append; a block_table
// entry outside [0, num_blocks) makes key_offset() return -1 and the key reads nothing.
#pragma once

#include <cstdint>

#include "core/mask.h"
#include "core/problem.h"

namespace flashsdpa::core {

struct SeqView {
  int64_t q_row0 = 0;   // first row of this sequence in packed q/out (varlen); 0 when batched
  int64_t sq = 0;       // query rows
  int64_t k_row0 = 0;   // first row in packed k/v (varlen kv); 0 otherwise
  int64_t k_begin = 0;  // attended logical keys are [k_begin, k_end)
  int64_t k_end = 0;
  int64_t cache_row = 0;      // dense cache: the cache row serving this sequence
  int64_t append_begin = 0;   // KV append: logical slots [append_begin, append_end) are written
  int64_t append_end = 0;
};

FLASHSDPA_HD SeqView sequence(const Problem& p, int64_t b) {
  SeqView s;
  if (p.q_layout == QLayout::kVarlen) {
    const int64_t lo = clamp_i64(p.cu_seqlens_q[b], 0, p.total_q);
    const int64_t hi = clamp_i64(p.cu_seqlens_q[b + 1], 0, p.total_q);
    s.q_row0 = lo;
    s.sq = max_i64(hi - lo, 0);
  } else {
    s.sq = p.seqlen_q;
  }

  int64_t k_end = p.seqlen_k;
  if (p.kv_layout == KvLayout::kVarlen) {
    const int64_t lo = clamp_i64(p.cu_seqlens_k[b], 0, p.total_k);
    const int64_t hi = clamp_i64(p.cu_seqlens_k[b + 1], 0, p.total_k);
    s.k_row0 = lo;
    k_end = max_i64(hi - lo, 0);
  } else if (p.kv_layout == KvLayout::kPaged && p.cu_seqlens_k != nullptr) {
    // varlen q over a paged cache: cu_seqlens_k gives lengths only
    k_end = clamp_i64(static_cast<int64_t>(p.cu_seqlens_k[b + 1]) - p.cu_seqlens_k[b], 0,
                      p.cache_capacity);
  }

  if (p.cache_seqlens != nullptr || p.cache_seqlen_all >= 0) {
    const int64_t cached = p.cache_seqlens != nullptr ? p.cache_seqlens[b] : p.cache_seqlen_all;
    s.append_begin = clamp_i64(cached, 0, p.cache_capacity);
    s.append_end = clamp_i64(cached + p.seqlen_new, 0, p.cache_capacity);
    if (p.seqlen_new == 0) s.append_end = s.append_begin;
    k_end = clamp_i64(cached + p.seqlen_new, 0, p.cache_capacity);
  }
  if (p.seqused_k != nullptr) k_end = clamp_i64(p.seqused_k[b], 0, k_end);

  if (p.kv_layout == KvLayout::kDenseCache) {
    s.cache_row = p.cache_batch_idx != nullptr ? p.cache_batch_idx[b] : b;
    if (s.cache_row < 0 || s.cache_row >= p.cache_batch) {  // reads and writes nothing
      s.cache_row = 0;
      k_end = 0;
      s.append_begin = s.append_end = 0;
    }
  }
  s.k_end = k_end;
  s.k_begin = p.cache_leftpad != nullptr ? clamp_i64(p.cache_leftpad[b], 0, k_end) : 0;
  return s;
}

FLASHSDPA_HD Mask sequence_mask(const Problem& p, const SeqView& s) {
  return Mask::make(s.sq, s.k_begin, s.k_end, p.window_left, p.window_right);
}

// Element offset of query-side row i, head h in an operand laid out like q (q, out, and the
// backward's dout and dq).
FLASHSDPA_HD int64_t query_side_offset(const Problem& p, const SeqView& s, const Operand& op, int64_t b,
                                       int64_t i, int64_t h) {
  return (p.q_layout == QLayout::kVarlen ? 0 : b * op.batch_stride) + (s.q_row0 + i) * op.row_stride +
         h * op.head_stride;
}
// Element offsets of query row i / output row i of head h.
FLASHSDPA_HD int64_t q_offset(const Problem& p, const SeqView& s, int64_t b, int64_t i, int64_t h) {
  return query_side_offset(p, s, p.q, b, i, h);
}
FLASHSDPA_HD int64_t out_offset(const Problem& p, const SeqView& s, int64_t b, int64_t i, int64_t h) {
  return query_side_offset(p, s, p.out, b, i, h);
}
FLASHSDPA_HD int64_t lse_offset(const Problem& p, const SeqView& s, int64_t b, int64_t i, int64_t h) {
  return (p.q_layout == QLayout::kVarlen ? 0 : b * p.lse_batch_stride) + h * p.lse_head_stride +
         (s.q_row0 + i) * p.lse_row_stride;
}

// Paged KV, in three steps so that a kernel can look the table up ahead of its use: the slot
// of logical key j in its sequence's row of block_table; the block at that slot, or -1 when
// the table gives no valid one (slot past max_blocks_per_seq, entry outside [0, num_blocks));
// the row of key j inside that block.
FLASHSDPA_HD int64_t paged_slot(const Problem& p, int64_t j) { return j / p.block_size; }
// A block_table entry as stored (-1 for a slot past the table), and the block it names (-1: out
// of range). Two steps so that a kernel can load an entry early and check it when it is used.
FLASHSDPA_HD int32_t paged_entry(const Problem& p, int64_t b, int64_t slot) {
  if (slot < 0 || slot >= p.max_blocks_per_seq) return -1;
  return p.block_table[b * p.block_table_stride + slot];
}
FLASHSDPA_HD int64_t paged_checked_block(const Problem& p, int64_t entry) {
  return entry < 0 || entry >= p.num_blocks ? -1 : entry;
}
FLASHSDPA_HD int64_t paged_block(const Problem& p, int64_t b, int64_t slot) {
  return paged_checked_block(p, paged_entry(p, b, slot));
}
FLASHSDPA_HD int64_t paged_row(const Problem& p, const Operand& kv, int64_t block, int64_t slot, int64_t j) {
  return block * kv.batch_stride + (j - slot * p.block_size) * kv.row_stride;
}

// The storage row of logical key j of sequence b in a K or V operand, as "row unit" offset:
// returns the offset of (row, head 0, dim 0) in elements, or -1 when the key reads nothing
// (a block_table entry out of range).
FLASHSDPA_HD int64_t key_offset(const Problem& p, const SeqView& s, const Operand& kv, int64_t b, int64_t j) {
  switch (p.kv_layout) {
    case KvLayout::kBatched:
      return b * kv.batch_stride + j * kv.row_stride;
    case KvLayout::kVarlen:
      return (s.k_row0 + j) * kv.row_stride;
    case KvLayout::kPaged: {
      const int64_t slot = paged_slot(p, j);
      const int64_t block = paged_block(p, b, slot);
      if (block < 0) return -1;
      return paged_row(p, kv, block, slot, j);
    }
    case KvLayout::kDenseCache:
      return s.cache_row * kv.batch_stride + j * kv.row_stride;
  }
  return -1;
}

// Rotary position of query row i in a KV-cache call (SPEC §3): appended tokens' positions when
// causal or windowed, otherwise every row at the cache length.
FLASHSDPA_HD int64_t rotary_q_position(const Problem& p, const SeqView& s, int64_t i) {
  const bool per_row = p.window_left >= 0 || p.window_right >= 0;
  return s.append_begin + (per_row ? i : 0);
}

// Row of the rotary tables for a position, or -1 when the tables do not cover it (the position
// is then left unrotated rather than read out of bounds; checked mode rejects it up front).
FLASHSDPA_HD int64_t rotary_row(const Problem& p, int64_t position) {
  return (position >= 0 && position < p.rotary_rows) ? position : -1;
}

}  // namespace flashsdpa::core
