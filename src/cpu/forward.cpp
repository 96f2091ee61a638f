// The CPU forward: FlashAttention-2 style tiled online softmax.
//
// Work is cut into items of (sequence, kv head, a group of the query heads that read it, a range
// of query rows[, a range of keys]). One item loads each K/V tile once (widened to fp32) for all
// its query heads, so GQA never expands K/V. Its query rows are held transposed, and scores are
// computed key-major (S^T = K · Q^T, see tile_math.h): the online-softmax state of every query row
// is then a vector across columns.
//
// Per key tile: load K, S^T = K · Q^T, score modifiers, mask (boundary tiles only), online
// softmax, rescale O, load V, O += P · V. Key tiles outside the item's band are skipped whole.
//
// bf16 inputs on a CPU with a bf16 product (AMX or AVX512-BF16, see Bf16Ops) skip the widening:
// Q is packed into bf16 pairs once per item, K is copied as bf16, V is packed into pairs per tile,
// and P is rounded to bf16 (as the bf16 reference does) for O += P · V. Scores, softmax and O stay
// fp32 and in the same layouts.
//
// Memory is O(tokens): per-thread scratch is sized by the tile shape, and split-KV partials by
// (query rows x heads x splits).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "core/dtype.h"
#include "core/mask.h"
#include "core/problem.h"
#include "core/rotary.h"
#include "core/sequence.h"
#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"
#include "cpu/tile_math.h"

namespace flashsdpa::cpu {
namespace {

using core::Mask;
using core::Problem;
using core::SeqView;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Floats per SIMD-friendly row: one AVX-512 register, so every scratch row starts 64-byte aligned.
constexpr int64_t kAlign = 16;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t element_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

const char* element_ptr(const void* base, int64_t offset, DType dtype) {
  return static_cast<const char*>(base) + offset * element_bytes(dtype);
}
char* element_ptr(void* base, int64_t offset, DType dtype) {
  return static_cast<char*>(base) + offset * element_bytes(dtype);
}

std::atomic<size_t> g_last_scratch_bytes{0};

// ---- per-thread scratch -------------------------------------------------------------------------

// Grow-only, 64-byte aligned float storage, one per thread and reused across calls so small
// (decode) calls do not pay for allocation.
class ScratchArena {
 public:
  ~ScratchArena() { std::free(data_); }
  float* reserve(size_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      capacity_ = round_up(static_cast<int64_t>(floats), kAlign);
      data_ = static_cast<float*>(std::aligned_alloc(64, capacity_ * sizeof(float)));
      if (data_ == nullptr) {
        capacity_ = 0;
        throw std::bad_alloc();
      }
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

thread_local ScratchArena t_arena;

// ---- tiling -------------------------------------------------------------------------------------

// The shape of a work item: `heads` query heads of one kv group times `rows` query rows make
// its columns. 128 columns amortise each K/V tile over enough rows for the products to run near
// peak while Q^T, S and O of one item stay within L2.
struct Tiling {
  int64_t heads = 1;      // query heads per item (the last chunk of a group may have fewer)
  int64_t rows = 1;       // query rows per head per item
  int64_t columns = 1;    // heads * rows
  int64_t key_tile = 64;  // keys per tile
  int64_t ld_q = 0;       // row stride of Q^T and of the score tile
  int64_t ld_k = 0;       // row stride of the K tile
  int64_t ld_v = 0;       // row stride of the V tile and of the O accumulator
  bool bf16 = false;      // the bf16 product path (Bf16Ops) runs this call
  int64_t ld_k16 = 0;     // bf16 path: Dqk padded to the product's depth step, row stride of the bf16 K tile
  int64_t ld_p = 0;       // bf16 path: pairs per row of the packed probabilities
};

// The bf16 product pads its depth to multiples of 32 and its rows and columns to 16.
constexpr int64_t kBf16Depth = 32;

Tiling make_tiling(const Problem& p, bool bf16) {
  const int64_t target_columns = p.head_dim_qk + p.head_dim_v > 512 ? 64 : 128;
  Tiling t;
  t.heads = std::min<int64_t>(p.group, target_columns);
  t.rows = std::max<int64_t>(1, target_columns / t.heads);
  t.rows = std::min<int64_t>(t.rows, std::max<int64_t>(p.seqlen_q, 1));
  t.columns = t.heads * t.rows;
  t.ld_q = round_up(t.columns, kAlign);
  t.ld_k = round_up(p.head_dim_qk, kAlign);
  t.ld_v = round_up(p.head_dim_v, kAlign);
  t.bf16 = bf16;
  t.ld_k16 = round_up(p.head_dim_qk, kBf16Depth);
  t.ld_p = t.key_tile / 2;
  return t;
}

// Views of one thread's scratch, carved from its arena.
struct ItemScratch {
  float* q_t = nullptr;           // [Dqk][ld_q]  the item's query rows, transposed
  float* scores = nullptr;        // [key_tile][ld_q]
  float* k_tile = nullptr;        // [key_tile][ld_k]
  float* v_tile = nullptr;        // [key_tile][ld_v]
  float* out_acc = nullptr;       // [columns][ld_v]
  float* col_max = nullptr;       // [ld_q] online softmax state per column
  float* col_sum = nullptr;       // [ld_q]
  float* col_factor = nullptr;    // [ld_q]
  float* col_slope = nullptr;     // [ld_q] ALiBi slope of the column's head
  float* col_aligned = nullptr;   // [ld_q] aligned key of the column relative to the current tile
  float* row = nullptr;           // [max(Dqk, Dv, rotary_dim)] one widened row
  float* rotary = nullptr;        // [rotary_dim] cos then sin of one position
  float* key_valid = nullptr;     // [key_tile] 1 when the key reads something, 0 when its block is out of range
  // bf16 path only (see Bf16Ops for the pair layout):
  uint32_t* q_pairs = nullptr;    // [ld_k16 / 2][ld_q]    Q^T as pairs along the head dim
  uint16_t* k_bf16 = nullptr;     // [key_tile][ld_k16]   the K tile, zero-padded
  uint32_t* p_pairs = nullptr;    // [ld_q][ld_p]         P as pairs along the keys
  uint32_t* v_pairs = nullptr;    // [key_tile / 2][ld_v]  the V tile as pairs along the keys

  // Lays the views out from `base` and returns the floats they span; with base == nullptr only
  // the size is computed (one layout, so the size and the views cannot disagree).
  static size_t carve(float* base, const Problem& p, const Tiling& t, ItemScratch* views) {
    const int64_t row_len = round_up(std::max({p.head_dim_qk, p.head_dim_v, p.rotary_dim, int64_t{1}}), kAlign);
    int64_t used = 0;
    auto take = [&](float** view, int64_t n) {
      if (base != nullptr) *view = base + used;
      used += round_up(n, kAlign);
    };
    ItemScratch ignored;
    ItemScratch& s = views != nullptr ? *views : ignored;
    take(&s.q_t, p.head_dim_qk * t.ld_q);
    take(&s.scores, t.key_tile * t.ld_q);
    take(&s.k_tile, t.key_tile * t.ld_k);
    take(&s.v_tile, t.key_tile * t.ld_v);
    take(&s.out_acc, t.ld_q * t.ld_v);  // ld_q rows: the bf16 product writes whole 16-row tiles
    take(&s.col_max, t.ld_q);
    take(&s.col_sum, t.ld_q);
    take(&s.col_factor, t.ld_q);
    take(&s.col_slope, t.ld_q);
    take(&s.col_aligned, t.ld_q);
    take(&s.row, row_len);
    take(&s.rotary, std::max<int64_t>(p.rotary_dim, 1));
    take(&s.key_valid, t.key_tile);
    if (t.bf16) {
      // 32-bit pairs take one float each, bf16 values half of one.
      auto take_u32 = [&](uint32_t** view, int64_t n) {
        float* f = nullptr;
        take(&f, n);
        *view = reinterpret_cast<uint32_t*>(f);
      };
      take_u32(&s.q_pairs, t.ld_k16 / 2 * t.ld_q);
      float* k = nullptr;
      take(&k, t.key_tile * t.ld_k16 / 2);
      s.k_bf16 = reinterpret_cast<uint16_t*>(k);
      take_u32(&s.p_pairs, t.ld_q * t.ld_p);
      take_u32(&s.v_pairs, t.key_tile / 2 * t.ld_v);
    }
    return static_cast<size_t>(used);
  }
  static size_t floats(const Problem& p, const Tiling& t) { return carve(nullptr, p, t, nullptr); }
  // This thread's views, from its arena.
  static ItemScratch for_this_thread(const Problem& p, const Tiling& t) {
    ItemScratch s;
    carve(t_arena.reserve(floats(p, t)), p, t, &s);
    return s;
  }
};

// ---- work items ---------------------------------------------------------------------------------

struct WorkItem {
  int64_t batch = 0;
  int64_t kv_head = 0;
  int64_t head0 = 0, heads = 0;  // query heads [head0, head0 + heads)
  int64_t row0 = 0, rows = 0;    // query rows [row0, row0 + rows) of the sequence
  int64_t key_begin = 0, key_end = 0;
  int64_t partial = -1;  // split-KV: float offset of this item's partial result; -1 = writes out
  int64_t cost = 0;
};

// A query block whose key range was split: its partials are merged by one combine step.
struct SplitGroup {
  WorkItem block;         // the whole block (key range unused)
  int64_t first_partial;  // float offset of split 0; splits follow each other
  int64_t splits;
};

struct Plan {
  std::vector<WorkItem> items;
  std::vector<SplitGroup> groups;
  int64_t partial_floats = 0;
};

// Floats of one split's partial result: O (columns x Dv), then max and sum per column.
int64_t partial_size(const Problem& p, int64_t columns) { return columns * (p.head_dim_v + 2); }

// How many splits a block with `key_tiles` tiles gets. Splitting pays off only when the blocks
// alone cannot occupy the threads (decoding: few query rows, long caches).
int64_t splits_for(const Problem& p, int64_t key_tiles, int64_t blocks, int threads) {
  if (p.num_splits == 1 || key_tiles <= 1) return 1;
  if (p.num_splits > 1) return std::min<int64_t>(p.num_splits, key_tiles);
  if (blocks >= threads) return 1;
  constexpr int64_t kMinTilesPerSplit = 4;
  const int64_t wanted = ceil_div(2 * threads, blocks);
  return std::clamp<int64_t>(std::min(wanted, key_tiles / kMinTilesPerSplit), 1, 64);
}

Plan make_plan(const Problem& p, const Tiling& t, int threads) {
  std::vector<WorkItem> blocks;
  for (int64_t b = 0; b < p.batch; ++b) {
    const SeqView s = core::sequence(p, b);
    if (s.sq == 0) continue;
    const Mask mask = core::sequence_mask(p, s);
    for (int64_t kv = 0; kv < p.heads_kv; ++kv) {
      for (int64_t hh = 0; hh < p.group; hh += t.heads) {
        for (int64_t i0 = 0; i0 < s.sq; i0 += t.rows) {
          WorkItem w;
          w.batch = b;
          w.kv_head = kv;
          w.head0 = kv * p.group + hh;
          w.heads = std::min(t.heads, p.group - hh);
          w.row0 = i0;
          w.rows = std::min(t.rows, s.sq - i0);
          w.key_begin = mask.tile_begin(i0, i0 + w.rows);
          w.key_end = std::max(w.key_begin, mask.tile_end(i0, i0 + w.rows));
          blocks.push_back(w);
        }
      }
    }
  }

  Plan plan;
  const int64_t block_count = static_cast<int64_t>(blocks.size());
  for (const WorkItem& block : blocks) {
    const int64_t columns = block.heads * block.rows;
    const int64_t key_tiles = ceil_div(block.key_end - block.key_begin, t.key_tile);
    const int64_t splits = splits_for(p, key_tiles, block_count, threads);
    if (splits <= 1) {
      WorkItem w = block;
      w.cost = columns * (w.key_end - w.key_begin + t.key_tile);
      plan.items.push_back(w);
      continue;
    }
    const int64_t tiles_per_split = ceil_div(key_tiles, splits);
    SplitGroup group{block, plan.partial_floats, splits};
    for (int64_t sp = 0; sp < splits; ++sp) {
      WorkItem w = block;
      w.key_begin = std::min(block.key_end, block.key_begin + sp * tiles_per_split * t.key_tile);
      w.key_end = std::min(block.key_end, w.key_begin + tiles_per_split * t.key_tile);
      w.partial = plan.partial_floats;
      w.cost = columns * (w.key_end - w.key_begin + t.key_tile);
      plan.partial_floats += partial_size(p, columns);
      plan.items.push_back(w);
    }
    plan.groups.push_back(group);
  }
  // Most expensive first: the pool hands items out in order, so the long causal rows start early
  // and the short ones fill the gaps at the end.
  std::stable_sort(plan.items.begin(), plan.items.end(),
                   [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
  return plan;
}

// ---- one work item ------------------------------------------------------------------------------

class ItemRunner {
 public:
  ItemRunner(const Problem& p, const Tiling& t, const TileOps& ops, float* partials)
      : p_(p),
        t_(t),
        ops_(ops),
        score_product_(p.dtype == DType::kFloat32 ? ops.matmul_unfused : ops.matmul),
        bf16_(t.bf16 ? ops.bf16 : nullptr),
        partials_(partials) {}

  void run(const WorkItem& w) const {
    const ItemScratch s = ItemScratch::for_this_thread(p_, t_);
    const SeqView seq = core::sequence(p_, w.batch);
    const Mask mask = core::sequence_mask(p_, seq);
    const int64_t columns = w.heads * w.rows;

    if (bf16_ != nullptr) {
      bf16_->begin();
      pack_queries_bf16(w, seq, s);
    } else {
      load_queries(w, seq, s);
    }
    init_columns(w, s);

    bool first_tile = true;
    for (int64_t j0 = w.key_begin; j0 < w.key_end; j0 += t_.key_tile) {
      const int64_t n = std::min(t_.key_tile, w.key_end - j0);
      // The bf16 product runs on whole tiles: keys up to a multiple of 32, columns up to ld_q.
      const int64_t n_pad = round_up(n, kBf16Depth);
      bool any_invalid = false;
      if (bf16_ != nullptr) {
        any_invalid = load_key_tile_bf16(w, seq, j0, n, n_pad, s);
        prefetch_next_tile(w, seq, j0 + n);
        // S^T[n_pad x ld_q] = K[n_pad x Dqk] · Q^T[Dqk x ld_q]; padded rows and columns read zeros
        bf16_->matmul(n_pad, t_.ld_q, t_.ld_k16, s.k_bf16, t_.ld_k16, s.q_pairs, t_.ld_q, s.scores, t_.ld_q, false);
      } else {
        any_invalid = load_key_tile(w, seq, j0, n, s);
        prefetch_next_tile(w, seq, j0 + n);
        // S^T[n x columns] = K[n x Dqk] · Q^T[Dqk x columns]
        score_product_(n, columns, p_.head_dim_qk, s.k_tile, t_.ld_k, 1, s.q_t, t_.ld_q, s.scores, t_.ld_q, false);
      }
      apply_score_mods(w, mask, j0, n, s);
      const bool masked = any_invalid || !mask.tile_unmasked(w.row0, w.row0 + w.rows, j0, j0 + n);
      if (masked) mask_tile(w, mask, j0, n, s);
      ops_.online_softmax(s.scores, t_.ld_q, n, columns, s.col_max, s.col_sum, s.col_factor);
      if (!first_tile) ops_.scale_rows(s.out_acc, t_.ld_v, columns, p_.head_dim_v, s.col_factor);
      std::vector<IsolatedRow> isolated;
      if (bf16_ != nullptr) {
        isolated = pack_value_tile_bf16(w, seq, j0, n, n_pad, masked, s);
        bf16_->pack_probabilities(s.scores, t_.ld_q, n, n_pad, t_.ld_q, s.p_pairs, t_.ld_p);
        // O[ld_q x ld_v] += P[ld_q x n_pad] · V[n_pad x ld_v] (padding adds zeros)
        bf16_->matmul(t_.ld_q, t_.ld_v, n_pad, reinterpret_cast<const uint16_t*>(s.p_pairs), 2 * t_.ld_p, s.v_pairs,
                      t_.ld_v, s.out_acc, t_.ld_v, !first_tile);
      } else {
        load_value_tile(w, seq, j0, n, s);
        if (masked) isolated = isolate_nonfinite_values(n, s);
        // O[columns x Dv] += P[columns x n] · V[n x Dv], P read transposed from the score tile
        ops_.matmul(columns, p_.head_dim_v, n, s.scores, 1, t_.ld_q, s.v_tile, t_.ld_v, s.out_acc, t_.ld_v,
                    !first_tile);
      }
      if (!isolated.empty()) add_isolated_rows(w, mask, j0, isolated, s);
      first_tile = false;
    }
    if (bf16_ != nullptr) bf16_->end();
    if (first_tile) {  // no key tile: the output is zero (or the sink alone)
      for (int64_t c = 0; c < columns; ++c) std::fill_n(s.out_acc + c * t_.ld_v, p_.head_dim_v, 0.0f);
    }

    if (w.partial >= 0) {
      store_partial(w, s);
    } else {
      store_output(w, seq, s.out_acc, t_.ld_v, s.col_max, s.col_sum);
    }
  }

  // Merges the splits of one block (each a partial without the sink) and writes the output.
  void combine(const SplitGroup& g) const {
    const WorkItem& w = g.block;
    const int64_t columns = w.heads * w.rows;
    const int64_t dv = p_.head_dim_v;
    const int64_t ld = round_up(dv, kAlign);
    float* acc = t_arena.reserve(static_cast<size_t>(columns * ld + 2 * round_up(columns, kAlign)));
    float* max = acc + columns * ld;
    float* sum = max + round_up(columns, kAlign);
    for (int64_t c = 0; c < columns; ++c) {
      core::SoftmaxRow<float> row;
      if (p_.sinks != nullptr) row.add_sink(p_.sinks[w.head0 + c / w.rows]);
      float* o = acc + c * ld;
      std::fill_n(o, dv, 0.0f);
      for (int64_t sp = 0; sp < g.splits; ++sp) {
        const float* part = partials_ + g.first_partial + sp * partial_size(p_, columns);
        const float part_max = part[columns * dv + c];
        const float part_sum = part[columns * dv + columns + c];
        if (part_sum == 0.0f) continue;  // a split that saw no key (a NaN sum still merges)
        const float factor = row.rescale_to(part_max);
        const float weight = std::exp(part_max - row.max);
        row.sum += part_sum * weight;
        const float* part_o = part + c * dv;
        for (int64_t d = 0; d < dv; ++d) o[d] = o[d] * factor + part_o[d] * weight;
      }
      max[c] = row.max;
      sum[c] = row.sum;
    }
    const SeqView seq = core::sequence(p_, w.batch);
    store_output(w, seq, acc, ld, max, sum);
  }

 private:
  // In a masked tile P = 0 for forbidden pairs, but 0 * inf or 0 * NaN from a value row would
  // still reach those rows through the product. A value row that is not finite is zeroed for the
  // product and added back afterwards to the columns allowed to see it (a rare path).
  struct IsolatedRow {
    int64_t key;
    std::vector<float> values;
  };

  // Widens the item's query rows (rotated in a KV-cache call with rotary) and stores them
  // transposed: q_t[d][c] for column c = head offset * rows + row offset.
  void load_queries(const WorkItem& w, const SeqView& seq, const ItemScratch& s) const {
    const int64_t dqk = p_.head_dim_qk;
    for (int64_t hh = 0; hh < w.heads; ++hh) {
      for (int64_t r = 0; r < w.rows; ++r) {
        const int64_t i = w.row0 + r;
        const int64_t c = hh * w.rows + r;
        const int64_t offset = core::q_offset(p_, seq, w.batch, i, w.head0 + hh);
        ops_.load_row(element_ptr(p_.q.ptr, offset, p_.dtype), p_.dtype, s.row, dqk);
        if (p_.rotary_dim > 0) rotate(core::rotary_q_position(p_, seq, i), s);
        for (int64_t d = 0; d < dqk; ++d) s.q_t[d * t_.ld_q + c] = s.row[d];
      }
    }
  }

  // bf16 path: q_pairs[t][c] = pair (q_c[2t], q_c[2t + 1]) for column c; zero past Dqk and for
  // the padding columns up to ld_q. (Calls with rotary take the fp32 path: see forward().)
  void pack_queries_bf16(const WorkItem& w, const SeqView& seq, const ItemScratch& s) const {
    const int64_t pairs = t_.ld_k16 / 2;
    const int64_t columns = w.heads * w.rows;
    uint16_t* row = reinterpret_cast<uint16_t*>(s.row);  // row_len floats hold ld_k16 bf16 values
    for (int64_t c = 0; c < t_.ld_q; ++c) {
      std::fill_n(row, t_.ld_k16, uint16_t{0});
      if (c < columns) {
        const int64_t hh = c / w.rows, r = c % w.rows;
        const int64_t offset = core::q_offset(p_, seq, w.batch, w.row0 + r, w.head0 + hh);
        std::memcpy(row, element_ptr(p_.q.ptr, offset, p_.dtype), p_.head_dim_qk * sizeof(uint16_t));
      }
      for (int64_t t = 0; t < pairs; ++t) {
        uint32_t pair;
        std::memcpy(&pair, row + 2 * t, sizeof(pair));
        s.q_pairs[t * t_.ld_q + c] = pair;
      }
    }
  }

  // Rotates s.row in place at `position` (left alone where the tables do not reach).
  void rotate(int64_t position, const ItemScratch& s) const {
    const int64_t table_row = core::rotary_row(p_, position);
    if (table_row < 0) return;
    const int64_t half = p_.rotary_dim / 2;
    const int64_t offset = table_row * p_.rotary_row_stride;
    ops_.load_row(element_ptr(p_.rotary_cos, offset, p_.dtype), p_.dtype, s.rotary, half);
    ops_.load_row(element_ptr(p_.rotary_sin, offset, p_.dtype), p_.dtype, s.rotary + half, half);
    core::rotary_apply(s.row, s.rotary, s.rotary + half, p_.rotary_dim, p_.rotary_interleaved);
  }

  void init_columns(const WorkItem& w, const ItemScratch& s) const {
    // A split's partial leaves the sink to the combine step, which adds it once.
    const bool sink_here = p_.sinks != nullptr && w.partial < 0;
    for (int64_t hh = 0; hh < w.heads; ++hh) {
      const int64_t h = w.head0 + hh;
      core::SoftmaxRow<float> start;
      if (sink_here) start.add_sink(p_.sinks[h]);
      const float slope = p_.alibi_slopes != nullptr ? p_.alibi_slopes[w.batch * p_.alibi_batch_stride + h] : 0.0f;
      for (int64_t r = 0; r < w.rows; ++r) {
        const int64_t c = hh * w.rows + r;
        s.col_max[c] = start.max;
        s.col_sum[c] = start.sum;
        s.col_slope[c] = slope;
      }
    }
  }

  // Widens keys [j0, j0 + n) of the item's kv head into the K tile; keys whose block is out of
  // range become zero rows. Returns whether any key was out of range.
  bool load_key_tile(const WorkItem& w, const SeqView& seq, int64_t j0, int64_t n, const ItemScratch& s) const {
    bool any_invalid = false;
    for (int64_t r = 0; r < n; ++r) {
      const int64_t offset = core::key_offset(p_, seq, p_.k, w.batch, j0 + r);
      float* dst = s.k_tile + r * t_.ld_k;
      if (offset < 0) {
        std::fill_n(dst, p_.head_dim_qk, 0.0f);
        s.key_valid[r] = 0.0f;
        any_invalid = true;
        continue;
      }
      s.key_valid[r] = 1.0f;
      ops_.load_row(element_ptr(p_.k.ptr, offset + w.kv_head * p_.k.head_stride, p_.dtype), p_.dtype, dst,
                    p_.head_dim_qk);
    }
    return any_invalid;
  }

  // bf16 path: copies keys [j0, j0 + n) into the bf16 K tile, zero past Dqk and for the rows up
  // to n_pad; out-of-range keys become zero rows as in load_key_tile.
  bool load_key_tile_bf16(const WorkItem& w, const SeqView& seq, int64_t j0, int64_t n, int64_t n_pad,
                          const ItemScratch& s) const {
    bool any_invalid = false;
    const int64_t dqk = p_.head_dim_qk;
    for (int64_t r = 0; r < n_pad; ++r) {
      uint16_t* dst = s.k_bf16 + r * t_.ld_k16;
      const int64_t offset = r < n ? core::key_offset(p_, seq, p_.k, w.batch, j0 + r) : -1;
      if (offset < 0) {
        std::fill_n(dst, t_.ld_k16, uint16_t{0});
        if (r < n) {
          s.key_valid[r] = 0.0f;
          any_invalid = true;
        }
        continue;
      }
      s.key_valid[r] = 1.0f;
      std::memcpy(dst, element_ptr(p_.k.ptr, offset + w.kv_head * p_.k.head_stride, p_.dtype), dqk * sizeof(uint16_t));
      std::fill(dst + dqk, dst + t_.ld_k16, uint16_t{0});
    }
    return any_invalid;
  }

  // bf16 path: packs values [j0, j0 + n) into pairs of rows, zero rows up to n_pad and for keys
  // that read nothing. In a masked tile a row holding inf or NaN is packed as zeros and returned
  // for add_isolated_rows (see isolate_nonfinite_values).
  std::vector<IsolatedRow> pack_value_tile_bf16(const WorkItem& w, const SeqView& seq, int64_t j0, int64_t n,
                                                int64_t n_pad, bool masked, const ItemScratch& s) const {
    std::vector<IsolatedRow> isolated;
    const int64_t dv = p_.head_dim_v;
    auto value_row = [&](int64_t r) -> const uint16_t* {
      if (r >= n) return nullptr;
      const int64_t offset = core::key_offset(p_, seq, p_.v, w.batch, j0 + r);
      if (offset < 0) return nullptr;
      const auto* row = reinterpret_cast<const uint16_t*>(
          element_ptr(p_.v.ptr, offset + w.kv_head * p_.v.head_stride, p_.dtype));
      if (!masked) return row;
      bool finite = true;
      for (int64_t d = 0; d < dv; ++d) finite &= (row[d] & 0x7f80u) != 0x7f80u;  // exponent all ones: inf, NaN
      if (finite) return row;
      IsolatedRow kept{r, std::vector<float>(static_cast<size_t>(dv))};
      for (int64_t d = 0; d < dv; ++d) kept.values[d] = core::bf16_to_float(row[d]);
      isolated.push_back(std::move(kept));
      return nullptr;
    };
    for (int64_t r = 0; r < n_pad; r += 2) {
      uint32_t* dst = s.v_pairs + (r / 2) * t_.ld_v;
      bf16_->pack_row_pair(value_row(r), value_row(r + 1), dv, dst);
      std::fill(dst + dv, dst + t_.ld_v, 0u);
    }
    return isolated;
  }

  // Asks for the next tile's K and V rows (into L2) while this tile computes: the rows are
  // strided by heads x head dim, and a whole tile of them would otherwise miss at once.
  void prefetch_next_tile(const WorkItem& w, const SeqView& seq, int64_t j0) const {
    const int64_t n = std::min(t_.key_tile, w.key_end - j0);
    const int64_t esize = element_bytes(p_.dtype);
    constexpr int64_t kLine = 64;
    for (int64_t r = 0; r < n; ++r) {
      const int64_t k_offset = core::key_offset(p_, seq, p_.k, w.batch, j0 + r);
      const int64_t v_offset = core::key_offset(p_, seq, p_.v, w.batch, j0 + r);
      if (k_offset >= 0) {
        const char* row = element_ptr(p_.k.ptr, k_offset + w.kv_head * p_.k.head_stride, p_.dtype);
        for (int64_t byte = 0; byte < p_.head_dim_qk * esize; byte += kLine) __builtin_prefetch(row + byte, 0, 2);
      }
      if (v_offset >= 0) {
        const char* row = element_ptr(p_.v.ptr, v_offset + w.kv_head * p_.v.head_stride, p_.dtype);
        for (int64_t byte = 0; byte < p_.head_dim_v * esize; byte += kLine) __builtin_prefetch(row + byte, 0, 2);
      }
    }
  }

  void load_value_tile(const WorkItem& w, const SeqView& seq, int64_t j0, int64_t n, const ItemScratch& s) const {
    for (int64_t r = 0; r < n; ++r) {
      const int64_t offset = core::key_offset(p_, seq, p_.v, w.batch, j0 + r);
      float* dst = s.v_tile + r * t_.ld_v;
      if (offset < 0) {
        std::fill_n(dst, p_.head_dim_v, 0.0f);
        continue;
      }
      ops_.load_row(element_ptr(p_.v.ptr, offset + w.kv_head * p_.v.head_stride, p_.dtype), p_.dtype, dst,
                    p_.head_dim_v);
    }
  }

  void apply_score_mods(const WorkItem& w, const Mask& mask, int64_t j0, int64_t n, const ItemScratch& s) const {
    ScoreModTile mods;
    mods.scale = p_.scale;
    mods.softcap = p_.softcap;
    if (p_.alibi_slopes != nullptr) {
      for (int64_t hh = 0; hh < w.heads; ++hh)
        for (int64_t r = 0; r < w.rows; ++r)
          s.col_aligned[hh * w.rows + r] = static_cast<float>(w.row0 + r + mask.diag - j0);
      mods.col_slope = s.col_slope;
      mods.col_aligned_key = s.col_aligned;
    }
    ops_.score_mods(s.scores, t_.ld_q, n, w.heads * w.rows, mods);
  }

  // -inf for every (key, column) the mask forbids and for keys that read nothing.
  void mask_tile(const WorkItem& w, const Mask& mask, int64_t j0, int64_t n, const ItemScratch& s) const {
    const int64_t ld = t_.ld_q;
    for (int64_t r = 0; r < w.rows; ++r) {
      const int64_t i = w.row0 + r;
      const int64_t lo = std::clamp<int64_t>(mask.row_begin(i) - j0, 0, n);
      const int64_t hi = std::clamp<int64_t>(mask.row_end(i) - j0, lo, n);
      for (int64_t hh = 0; hh < w.heads; ++hh) {
        float* col = s.scores + hh * w.rows + r;
        for (int64_t k = 0; k < lo; ++k) col[k * ld] = kNegInf;
        for (int64_t k = hi; k < n; ++k) col[k * ld] = kNegInf;
      }
    }
    const int64_t columns = w.heads * w.rows;
    for (int64_t k = 0; k < n; ++k) {
      if (s.key_valid[k] == 0.0f) std::fill_n(s.scores + k * ld, columns, kNegInf);
    }
  }

  std::vector<IsolatedRow> isolate_nonfinite_values(int64_t n, const ItemScratch& s) const {
    std::vector<IsolatedRow> isolated;
    const int64_t dv = p_.head_dim_v;
    for (int64_t k = 0; k < n; ++k) {
      float* v = s.v_tile + k * t_.ld_v;
      bool finite = true;
      for (int64_t d = 0; d < dv; ++d) finite &= std::isfinite(v[d]);
      if (finite) continue;
      isolated.push_back({k, std::vector<float>(v, v + dv)});
      std::fill_n(v, dv, 0.0f);
    }
    return isolated;
  }

  void add_isolated_rows(const WorkItem& w, const Mask& mask, int64_t j0, const std::vector<IsolatedRow>& isolated,
                         const ItemScratch& s) const {
    const int64_t columns = w.heads * w.rows;
    for (const IsolatedRow& row : isolated) {
      if (s.key_valid[row.key] == 0.0f) continue;
      for (int64_t c = 0; c < columns; ++c) {
        if (!mask.allowed(w.row0 + c % w.rows, j0 + row.key)) continue;
        const float prob = s.scores[row.key * t_.ld_q + c];
        float* o = s.out_acc + c * t_.ld_v;
        for (int64_t d = 0; d < p_.head_dim_v; ++d) o[d] += prob * row.values[d];
      }
    }
  }

  void store_partial(const WorkItem& w, const ItemScratch& s) const {
    const int64_t columns = w.heads * w.rows;
    const int64_t dv = p_.head_dim_v;
    float* part = partials_ + w.partial;
    for (int64_t c = 0; c < columns; ++c) std::copy_n(s.out_acc + c * t_.ld_v, dv, part + c * dv);
    std::copy_n(s.col_max, columns, part + columns * dv);
    std::copy_n(s.col_sum, columns, part + columns * dv + columns);
  }

  // Normalises and writes out (and lse) for every column of a block.
  void store_output(const WorkItem& w, const SeqView& seq, const float* acc, int64_t ld, const float* col_max,
                    const float* col_sum) const {
    for (int64_t hh = 0; hh < w.heads; ++hh) {
      const int64_t h = w.head0 + hh;
      for (int64_t r = 0; r < w.rows; ++r) {
        const int64_t c = hh * w.rows + r;
        const int64_t i = w.row0 + r;
        core::SoftmaxRow<float> row;
        row.max = col_max[c];
        row.sum = col_sum[c];
        const int64_t offset = core::out_offset(p_, seq, w.batch, i, h);
        ops_.store_row(acc + c * ld, row.inv_sum(), element_ptr(p_.out.mutable_ptr(), offset, p_.dtype), p_.dtype,
                       p_.head_dim_v);
        if (p_.lse != nullptr) p_.lse[core::lse_offset(p_, seq, w.batch, i, h)] = row.lse();
      }
    }
  }

  const Problem& p_;
  const Tiling& t_;
  const TileOps& ops_;
  decltype(TileOps::matmul) score_product_;
  const Bf16Ops* bf16_;  // the bf16 product, or null when this call widens to fp32
  float* partials_;
};

}  // namespace

size_t last_scratch_bytes() { return g_last_scratch_bytes.load(std::memory_order_relaxed); }

void forward(const Problem& p, int num_threads) {
  const TileOps& ops = tile_ops();
  // The bf16 product only for bf16 inputs (fp16 would lose mantissa bits) and not with rotary,
  // whose rotated queries are kept in fp32.
  const bool bf16 = ops.bf16 != nullptr && p.dtype == DType::kBFloat16 && p.rotary_dim == 0;
  const Tiling tiling = make_tiling(p, bf16);
  const int threads = resolve_num_threads(num_threads);
  const Plan plan = make_plan(p, tiling, threads);

  std::vector<float> partials(static_cast<size_t>(plan.partial_floats));
  const ItemRunner runner(p, tiling, ops, partials.data());
  const int64_t item_count = static_cast<int64_t>(plan.items.size());
  const int workers = workers_for(item_count, num_threads);
  g_last_scratch_bytes.store(static_cast<size_t>(workers) * ItemScratch::floats(p, tiling) * sizeof(float) +
                                 partials.size() * sizeof(float),
                             std::memory_order_relaxed);

  parallel_for(item_count, num_threads, [&](int64_t index, int) { runner.run(plan.items[index]); });
  if (!plan.groups.empty()) {
    parallel_for(static_cast<int64_t>(plan.groups.size()), num_threads,
                 [&](int64_t index, int) { runner.combine(plan.groups[index]); });
  }
}

}  // namespace flashsdpa::cpu
