// The CPU backward: FlashAttention-2's algorithm (Dao 2023, algorithm 2) on the CPU thread pool.
//
// Three passes, each parallel over independent work items:
//   1. row terms     per (sequence, query head): D_i = rowsum(dout_i * out_i) in fp32 and the
//                    softmax statistics P is recomputed against.
//   2. key tiles     per (sequence, kv head, key split): for each key tile of the split, recompute
//                    P for every query head of the group and every query row that can see the
//                    tile, then
//                        dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D) * (d s / d s_raw),
//                        dK += scale * dS^T Q,        dQ_split += scale * dS K.
//                    dk/dv of a tile belong to one work item and are written once, rounded from
//                    fp32; K/V are read per kv head, never expanded over the group. dq receives a
//                    contribution from every key tile, so each split accumulates into its own fp32
//                    plane shaped like dq. With sinks, each split also sums
//                    R_i = sum_j P_ij dP_ij and S_i = sum_j P_ij over its keys.
//   3. reduction     per (sequence, query row chunk): dq = the sum of the split planes, in split
//                    order; per (sequence, query head): the share of
//                    d(sink_h) = -sum_i P_sink,i * D_i, as -sum_i P_sink,i * R_i / (S_i + P_sink,i)^2.
//
// d(sink) sums over every row, so it is held to a tighter standard than the forward's out and
// lse offer: out is rounded to the input dtype, and an fp32 lse scales a whole row of P, P_sink
// included, by one rounding error (1 + e_i). R_i is D_i evaluated through the backward's own P
// (dO_i . out_i = sum_j P_ij dO_i . v_j), and S_i + P_sink,i, which is exactly 1 but for that
// factor, measures (1 + e_i) so it can be divided out. Both cost a row sum per tile.
//
// Softmax statistics: P_ij = exp((s_ij - m_i) - log Z_i), with m_i = the forward's lse_i and
// log Z_i = 0 (P = exp(s - lse)) and D_i from the forward's out, as in FlashAttention-2. That
// relies on the forward's softmax agreeing with the scores recomputed here, which fails for
// extreme logits: an fp32 lse pins P down only to half an ulp of |lse|, and fp32 scores near 1e4
// carry ~1e-3 absolute rounding of their own. The second breaks sum_j dS_ij = 0, an error dQ
// then scales by |mean k|. Rows with |lse| beyond stored_lse_limit() therefore get m_i, log Z_i
// and out_i recomputed in pass 1 from the very scores pass 2 uses, which makes P, D and dS
// consistent with each other again (the float64 reference's own behaviour); ordinary rows cost
// nothing extra.
//
// Determinism: which key tiles a split owns, the order a work item visits them, the tile shapes
// and the order of every accumulation depend on the problem alone (shape and values), never on
// the thread count or on which thread runs an item. Gradients are therefore bit-identical run to
// run and for any thread count (on one machine and instruction set, see tile_math.h), so
// BwdProblem::deterministic needs no separate, slower path.
//
// Memory is O(tokens): the split planes hold splits * rows * Hq * Dqk floats, the split count
// bounded by kMaxSplits and by a scratch budget; per-thread tiles are O(tile * head dim).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "core/mask.h"
#include "core/problem.h"
#include "core/sequence.h"
#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"
#include "cpu/tile_math.h"

namespace flashsdpa::cpu {
namespace {

using core::BwdProblem;
using core::Problem;

constexpr int64_t kKeyTile = 64;     // keys per tile: the unit of dk/dv ownership
constexpr int64_t kQueryBlock = 64;  // query rows processed against one key tile at a time
constexpr size_t kChunkTiles = 4;    // key tiles that share each loaded query block
constexpr int64_t kReduceRows = 64;  // query rows per dq reduction work item

// Key splits per (sequence, kv head). More splits give more parallel work items when batch * kv
// heads is small; each costs a dq-sized fp32 plane. Chosen from the shape only (see above).
constexpr int64_t kTargetWorkItems = 64;
constexpr int64_t kMaxSplits = 16;
constexpr int64_t kSplitScratchBudgetBytes = int64_t{512} << 20;

// Rows whose |lse| exceeds core::stored_lse_limit() have their softmax recomputed (see above).
using core::stored_lse_limit;

// On the bit patterns (an integer max the compiler vectorizes): finite means an exponent below
// all ones.
bool all_finite(const float* x, int64_t n) {
  uint32_t largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    largest = std::max(largest, bits & 0x7fffffffu);
  }
  return largest < 0x7f800000u;
}

// y += a * x
inline void axpy(int64_t n, float a, const float* x, float* y) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// dst[c * pitch + r] = src[r * cols + c]
void transpose(const float* src, int64_t rows, int64_t cols, int64_t pitch, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * pitch + r] = src[r * cols + c];
}

// The modifier values of (sequence b, query head h); applying them is tile_math's score_mods.
core::ScoreMod score_mod(const Problem& p, int64_t b, int64_t h) {
  core::ScoreMod mod;
  mod.softcap = p.softcap;
  if (p.alibi_slopes != nullptr) {
    mod.has_alibi = true;
    mod.alibi_slope = p.alibi_slopes[b * p.alibi_batch_stride + h];
  }
  return mod;
}

// ---- the plan: sequences, splits, work items ----------------------------------------------------

struct SequencePlan {
  core::SeqView seq;
  core::Mask mask;
  int64_t row0 = 0;         // first query row of the sequence in the dense scratch rows
  int64_t stored_keys = 0;  // key rows the sequence owns in k/v (and dk/dv), attended or not
  int64_t key_tiles = 0;
  int64_t splits = 0;       // 0 when the sequence has no key rows (its dq is zero)
};

struct KeyTileItem {
  int64_t batch, kv_head, split;
  int64_t cost;  // query rows x key tiles, to hand out the longest items first
};

class BackwardPlan {
 public:
  explicit BackwardPlan(const BwdProblem& bp) : bp_(bp), p_(bp.fwd) {
    const bool varlen_q = p_.q_layout == core::QLayout::kVarlen;
    rows_ = varlen_q ? p_.total_q : p_.batch * p_.seqlen_q;
    sequences_.resize(static_cast<size_t>(p_.batch));
    for (int64_t b = 0; b < p_.batch; ++b) {
      SequencePlan& s = sequences_[static_cast<size_t>(b)];
      s.seq = core::sequence(p_, b);
      s.mask = core::sequence_mask(p_, s.seq);
      s.row0 = varlen_q ? s.seq.q_row0 : b * p_.seqlen_q;
      s.stored_keys = stored_key_rows(b);
      s.key_tiles = (s.stored_keys + kKeyTile - 1) / kKeyTile;
    }
    splits_ = choose_splits();
    for (int64_t b = 0; b < p_.batch; ++b) {
      SequencePlan& s = sequences_[static_cast<size_t>(b)];
      s.splits = std::min(splits_, s.key_tiles);
      for (int64_t hk = 0; hk < p_.heads_kv; ++hk)
        for (int64_t split = 0; split < s.splits; ++split) {
          const int64_t tiles = (s.key_tiles - split + s.splits - 1) / s.splits;
          items_.push_back({b, hk, split, tiles * std::max<int64_t>(s.seq.sq, 1)});
        }
    }
    // The order only balances the pool; results never depend on it.
    std::stable_sort(items_.begin(), items_.end(),
                     [](const KeyTileItem& x, const KeyTileItem& y) { return x.cost > y.cost; });
  }

  const BwdProblem& bwd() const { return bp_; }
  const Problem& fwd() const { return p_; }
  const SequencePlan& sequence(int64_t b) const { return sequences_[static_cast<size_t>(b)]; }
  int64_t rows() const { return rows_; }
  int64_t splits() const { return splits_; }
  const std::vector<KeyTileItem>& items() const { return items_; }

 private:
  // dk/dv rows belong to sequence b even where seqused_k leaves them unattended (they get zeros).
  int64_t stored_key_rows(int64_t b) const {
    if (p_.kv_layout == core::KvLayout::kVarlen) {
      const int64_t lo = core::clamp_i64(p_.cu_seqlens_k[b], 0, p_.total_k);
      const int64_t hi = core::clamp_i64(p_.cu_seqlens_k[b + 1], 0, p_.total_k);
      return std::max<int64_t>(hi - lo, 0);
    }
    return p_.seqlen_k;
  }

  int64_t choose_splits() const {
    int64_t max_tiles = 0;
    for (const SequencePlan& s : sequences_) max_tiles = std::max(max_tiles, s.key_tiles);
    const int64_t kv_streams = std::max<int64_t>(p_.batch * p_.heads_kv, 1);
    int64_t splits = std::clamp<int64_t>((kTargetWorkItems + kv_streams - 1) / kv_streams, 1, kMaxSplits);
    const int64_t plane_bytes =
        std::max<int64_t>(rows_ * p_.heads_q * p_.head_dim_qk, 1) * static_cast<int64_t>(sizeof(float));
    splits = std::min(splits, std::max<int64_t>(kSplitScratchBudgetBytes / plane_bytes, 1));
    // A split of at least kChunkTiles tiles reuses each loaded query block kChunkTiles times.
    return std::min(splits, std::max<int64_t>(max_tiles / static_cast<int64_t>(kChunkTiles), 1));
  }

  const BwdProblem& bp_;
  const Problem& p_;
  int64_t rows_ = 0;
  int64_t splits_ = 1;
  std::vector<SequencePlan> sequences_;
  std::vector<KeyTileItem> items_;
};

// Dense fp32 scratch shared by the passes; per-row arrays are indexed [h * rows + row].
struct Scratch {
  std::unique_ptr<float[]> row_max;      // m_i
  std::unique_ptr<float[]> row_log_sum;  // log Z_i
  std::unique_ptr<float[]> row_dot;      // D_i
  // dq_split[((split * rows + row) * Hq + h) * Dqk + d]; pages no split touches stay uncommitted
  std::unique_ptr<float[]> dq_split;
  // row_pdp[(split * Hq + h) * rows + row] = R_i over the split's keys, row_psum likewise S_i
  // (sinks only)
  std::unique_ptr<double[]> row_pdp, row_psum;
  std::vector<double> sink_grad;  // [b * Hq + h]: sequence b's share of d(sink_h)
};

// ---- the work of passes 1 and 2 ------------------------------------------------------------------

// One key tile in fp32: K and K^T (scores, dQ), V (pass 1's out) and V^T (pass 2's dP), and the
// tile's dK / dV accumulators. Arrays with a key axis have pitch kKeyTile.
struct KeyTile {
  int64_t j0 = 0, j1 = 0;          // the stored key rows [j0, j1) (dk/dv rows written)
  int64_t attended_end = 0;        // rows [j0, attended_end) can be attended (seqused_k)
  int64_t q_begin = 0, q_end = 0;  // the query rows that can see the tile
  bool finite = true;              // K holds no NaN or infinity
  std::vector<float> k, k_t, v, v_t, dk, dv;
};

// The query rows [i0, i0 + rows) of one head, in fp32, as a view into the loaded block.
struct QueryRows {
  int64_t i0 = 0, rows = 0;
  const float* q = nullptr;     // rows x Dqk
  const float* dout = nullptr;  // rows x Dv (pass 2)
};

// Buffers and steps shared by pass 1 (row terms) and pass 2 (key tiles), so both see bit-identical
// scores.
class TileWorker {
 public:
  TileWorker(const BackwardPlan& plan, Scratch& scratch)
      : plan_(plan), bp_(plan.bwd()), p_(plan.fwd()), ops_(tile_ops()),
        score_product_(p_.dtype == DType::kFloat32 ? ops_.matmul_unfused : ops_.matmul), scratch_(scratch),
        dqk_(p_.head_dim_qk), dv_(p_.head_dim_v) {
    q_ = buffer(kQueryBlock * dqk_);
    dout_ = buffer(kQueryBlock * dv_);
    probs_ = buffer(kQueryBlock * kKeyTile);
    score_grads_ = buffer(kQueryBlock * kKeyTile);
    softcap_grads_ = buffer(kQueryBlock * kKeyTile);
    shift_ = buffer(kKeyTile);
    alibi_slope_ = buffer(kKeyTile);
    alibi_aligned_ = buffer(kKeyTile);
    out_rows_ = buffer(kQueryBlock * dv_);
    dout_row_ = buffer(dv_);
    col_begin_.resize(kQueryBlock);
    col_end_.resize(kQueryBlock);
  }

  // ---- pass 1 ----

  // D_i and the softmax statistics of (sequence b, query head h).
  void row_terms(int64_t b, int64_t h) {
    const SequencePlan& s = plan_.sequence(b);
    const float limit = stored_lse_limit(p_.dtype);
    float* row_max = scratch_.row_max.get() + h * plan_.rows() + s.row0;
    float* row_log_sum = scratch_.row_log_sum.get() + h * plan_.rows() + s.row0;
    float* row_dot = scratch_.row_dot.get() + h * plan_.rows() + s.row0;
    for (int64_t i0 = 0; i0 < s.seq.sq; i0 += kQueryBlock) {
      const int64_t i1 = std::min(i0 + kQueryBlock, s.seq.sq);
      bool recompute = false;
      for (int64_t i = i0; i < i1; ++i) {
        const float lse = p_.lse[core::lse_offset(p_, s.seq, b, i, h)];
        row_max[i] = lse;
        row_log_sum[i] = 0.0f;
        recompute |= std::isfinite(lse) && std::fabs(lse) > limit;
      }
      std::vector<bool> recomputed(static_cast<size_t>(i1 - i0), false);
      if (recompute) recompute_softmax(s, b, h, i0, i1, row_max + i0, row_log_sum + i0, recomputed);
      for (int64_t i = i0; i < i1; ++i) {
        float* out_row = out_rows_.data() + (i - i0) * dv_;
        if (!recomputed[static_cast<size_t>(i - i0)])
          ops_.load_row(element(p_.out.ptr, core::out_offset(p_, s.seq, b, i, h)), p_.dtype, out_row, dv_);
        ops_.load_row(element(bp_.dout.ptr, core::query_side_offset(p_, s.seq, bp_.dout, b, i, h)), p_.dtype,
                      dout_row_.data(), dv_);
        // The same product kernel as dP = dO V^T in pass 2, so that where out_i = v_j exactly (a
        // one-hot row) dP_ij - D_i cancels exactly instead of leaving rounding noise that dK
        // would scale by |q|.
        float dot = 0.0f;
        ops_.matmul(1, 1, dv_, dout_row_.data(), dv_, 1, out_row, 1, &dot, 1, false);
        row_dot[i] = dot;
      }
    }
  }

  // ---- pass 2 ----

  // The key tiles of one split, kChunkTiles at a time: each query block is loaded once per chunk
  // and met with every tile of the chunk that it can see.
  void key_tiles(const KeyTileItem& item) {
    const SequencePlan& s = plan_.sequence(item.batch);
    zero_split_rows(s, item);
    // Tiles are dealt round robin so that under a causal mask every split gets early (long) and
    // late (short) key tiles alike.
    std::vector<int64_t> tiles;
    for (int64_t t = item.split; t < s.key_tiles; t += s.splits) tiles.push_back(t);
    for (size_t first = 0; first < tiles.size(); first += kChunkTiles) {
      const size_t count = std::min<size_t>(kChunkTiles, tiles.size() - first);
      int64_t q_begin = s.seq.sq, q_end = 0;
      for (size_t n = 0; n < count; ++n) {
        KeyTile& tile = key_tile(n);
        start_key_tile(s, item, tiles[first + n], tile);
        if (tile.q_begin < tile.q_end) {
          q_begin = std::min(q_begin, tile.q_begin);
          q_end = std::max(q_end, tile.q_end);
        }
      }
      for (int64_t g = 0; g < p_.group; ++g) {
        const int64_t h = item.kv_head * p_.group + g;
        const core::ScoreMod mod = score_mod(p_, item.batch, h);
        for (int64_t i0 = q_begin; i0 < q_end; i0 += kQueryBlock) {
          const int64_t i1 = std::min(i0 + kQueryBlock, q_end);
          bool loaded = false;
          for (size_t n = 0; n < count; ++n) {
            const KeyTile& tile = key_tile(n);
            const int64_t r0 = std::max(i0, tile.q_begin), r1 = std::min(i1, tile.q_end);
            if (r0 >= r1) continue;
            if (!loaded) load_query_block(s, item.batch, h, i0, i1, /*with_dout=*/true);
            loaded = true;
            QueryRows rows;
            rows.i0 = r0;
            rows.rows = r1 - r0;
            rows.q = q_.data() + (r0 - i0) * dqk_;
            rows.dout = dout_.data() + (r0 - i0) * dv_;
            tile_gradients(s, item, h, mod, rows, key_tile(n));
          }
        }
      }
      for (size_t n = 0; n < count; ++n) store_key_tile(s, item, key_tile(n));
    }
  }

 private:
  static std::vector<float> buffer(int64_t n) { return std::vector<float>(static_cast<size_t>(n)); }

  const void* element(const void* base, int64_t offset) const {
    return static_cast<const char*>(base) + offset * dtype_size(p_.dtype);
  }
  void* mutable_element(void* base, int64_t offset) const {
    return static_cast<char*>(base) + offset * dtype_size(p_.dtype);
  }

  KeyTile& key_tile(size_t n) {
    while (tiles_.size() <= n) {
      KeyTile tile;
      tile.k = buffer(kKeyTile * dqk_);
      tile.k_t = buffer(dqk_ * kKeyTile);
      tile.v = buffer(kKeyTile * dv_);
      tile.v_t = buffer(dv_ * kKeyTile);
      tile.dk = buffer(kKeyTile * dqk_);
      tile.dv = buffer(kKeyTile * dv_);
      tiles_.push_back(std::move(tile));
    }
    return tiles_[n];
  }

  // ---- pass 1 steps ----

  // The forward of rows [i0, i1) of head h over the same scores pass 2 computes: online max, sum
  // and out into out_rows_. Rows whose recomputation succeeds get recomputed[r] = true.
  void recompute_softmax(const SequencePlan& s, int64_t b, int64_t h, int64_t i0, int64_t i1, float* row_max,
                         float* row_log_sum, std::vector<bool>& recomputed) {
    const int64_t rows = i1 - i0;
    std::vector<core::SoftmaxRow<float>> softmax(static_cast<size_t>(rows));
    std::fill(out_rows_.begin(), out_rows_.begin() + rows * dv_, 0.0f);
    load_query_block(s, b, h, i0, i1, /*with_dout=*/false);
    const QueryRows query{i0, rows, q_.data(), nullptr};
    const core::ScoreMod mod = score_mod(p_, b, h);
    KeyTile& tile = key_tile(0);
    const int64_t j_begin = s.mask.row_begin(i0), j_end = s.mask.row_end(i1 - 1);
    for (int64_t j0 = j_begin - (j_begin % kKeyTile); j0 < j_end; j0 += kKeyTile) {
      tile.j0 = j0;
      tile.j1 = tile.attended_end = std::min(j0 + kKeyTile, j_end);
      const int64_t cols = tile.j1 - j0;
      load_key_tile(s, b, h / p_.group, tile, /*values_transposed=*/false);
      compute_scores(s.mask, mod, query, tile);
      for (int64_t r = 0; r < rows; ++r) {
        float* prob = probs_.data() + r * kKeyTile;
        const int64_t c0 = col_begin_[r], c1 = col_end_[r];
        float block_max = -INFINITY;
        for (int64_t c = c0; c < c1; ++c) block_max = std::max(block_max, prob[c]);
        core::SoftmaxRow<float>& row = softmax[static_cast<size_t>(r)];
        const float factor = row.rescale_to(block_max);
        if (factor != 1.0f)
          for (int64_t d = 0; d < dv_; ++d) out_rows_[r * dv_ + d] *= factor;
        std::fill(prob, prob + c0, 0.0f);
        std::fill(prob + c1, prob + cols, 0.0f);
        for (int64_t c = c0; c < c1; ++c) {
          prob[c] = std::exp(prob[c] - row.max);
          row.sum += prob[c];
        }
      }
      if (queries_finite_ && all_finite(tile.v.data(), cols * dv_)) {
        ops_.matmul(rows, dv_, cols, probs_.data(), kKeyTile, 1, tile.v.data(), dv_, out_rows_.data(), dv_, true);
      } else {  // allowed entries only, so a NaN value reaches only the rows that see it
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = col_begin_[r]; c < col_end_[r]; ++c)
            axpy(dv_, probs_[r * kKeyTile + c], tile.v.data() + c * dv_, out_rows_.data() + r * dv_);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      core::SoftmaxRow<float>& row = softmax[static_cast<size_t>(r)];
      if (p_.sinks != nullptr) {
        const float factor = row.add_sink(p_.sinks[h]);
        if (factor != 1.0f)
          for (int64_t d = 0; d < dv_; ++d) out_rows_[r * dv_ + d] *= factor;
      }
      if (!(row.sum > 0.0f) || !std::isfinite(row.max)) continue;  // keep the forward's lse and out
      row_max[r] = row.max;
      row_log_sum[r] = std::log(row.sum);
      const float inv_sum = row.inv_sum();
      for (int64_t d = 0; d < dv_; ++d) out_rows_[r * dv_ + d] *= inv_sum;
      recomputed[static_cast<size_t>(r)] = true;
    }
  }

  // ---- pass 2 steps ----

  float* dq_plane_row(int64_t split, int64_t row, int64_t h) const {
    return scratch_.dq_split.get() + ((split * plan_.rows() + row) * p_.heads_q + h) * dqk_;
  }

  int64_t row_sum_index(int64_t split, int64_t h, int64_t row) const {
    return (split * p_.heads_q + h) * plan_.rows() + row;
  }

  // This split's dq plane rows and row sums of the sequence and kv head start at zero.
  void zero_split_rows(const SequencePlan& s, const KeyTileItem& item) {
    for (int64_t i = 0; i < s.seq.sq; ++i) {
      float* row = dq_plane_row(item.split, s.row0 + i, item.kv_head * p_.group);
      std::fill(row, row + p_.group * dqk_, 0.0f);
    }
    if (scratch_.row_pdp)
      for (int64_t g = 0; g < p_.group; ++g) {
        const int64_t first = row_sum_index(item.split, item.kv_head * p_.group + g, s.row0);
        std::fill(scratch_.row_pdp.get() + first, scratch_.row_pdp.get() + first + s.seq.sq, 0.0);
        std::fill(scratch_.row_psum.get() + first, scratch_.row_psum.get() + first + s.seq.sq, 0.0);
      }
  }

  // Key tile `index` of the sequence: bounds, loaded K and V^T, zeroed gradients, and the query
  // rows that can see it. Keys past k_end (seqused_k) are stored but never attended: their
  // gradients stay zero.
  void start_key_tile(const SequencePlan& s, const KeyTileItem& item, int64_t index, KeyTile& tile) {
    tile.j0 = index * kKeyTile;
    tile.j1 = std::min(tile.j0 + kKeyTile, s.stored_keys);
    tile.attended_end = std::min(tile.j1, s.mask.k_end);
    std::fill(tile.dk.begin(), tile.dk.end(), 0.0f);
    std::fill(tile.dv.begin(), tile.dv.end(), 0.0f);
    tile.q_begin = tile.q_end = 0;
    if (tile.attended_end <= tile.j0) return;
    tile.q_begin = s.mask.query_begin(tile.j0);
    tile.q_end = s.mask.query_end(tile.attended_end - 1);
    if (tile.q_begin < tile.q_end) load_key_tile(s, item.batch, item.kv_head, tile, /*values_transposed=*/true);
  }

  // K rows [j0, attended_end) of kv head hk and K^T; V, and V^T when pass 2 asks for it.
  void load_key_tile(const SequencePlan& s, int64_t b, int64_t hk, KeyTile& tile, bool values_transposed) {
    const int64_t keys = tile.attended_end - tile.j0;
    for (int64_t j = tile.j0; j < tile.attended_end; ++j) {
      float* k_row = tile.k.data() + (j - tile.j0) * dqk_;
      float* v_row = tile.v.data() + (j - tile.j0) * dv_;
      const int64_t k_off = core::key_offset(p_, s.seq, p_.k, b, j);
      const int64_t v_off = core::key_offset(p_, s.seq, p_.v, b, j);
      if (k_off < 0 || v_off < 0) {  // a key that reads nothing (paged block out of range)
        std::fill(k_row, k_row + dqk_, 0.0f);
        std::fill(v_row, v_row + dv_, 0.0f);
        continue;
      }
      ops_.load_row(element(p_.k.ptr, k_off + hk * p_.k.head_stride), p_.dtype, k_row, dqk_);
      ops_.load_row(element(p_.v.ptr, v_off + hk * p_.v.head_stride), p_.dtype, v_row, dv_);
    }
    tile.finite = all_finite(tile.k.data(), keys * dqk_);
    transpose(tile.k.data(), keys, dqk_, kKeyTile, tile.k_t.data());
    if (values_transposed) transpose(tile.v.data(), keys, dv_, kKeyTile, tile.v_t.data());
  }

  void store_key_tile(const SequencePlan& s, const KeyTileItem& item, const KeyTile& tile) {
    for (int64_t j = tile.j0; j < tile.j1; ++j) {
      const int64_t dk_off = core::key_offset(p_, s.seq, bp_.dk, item.batch, j);
      const int64_t dv_off = core::key_offset(p_, s.seq, bp_.dv, item.batch, j);
      if (dk_off >= 0)
        ops_.store_row(tile.dk.data() + (j - tile.j0) * dqk_, 1.0f,
                       mutable_element(bp_.dk.mutable_ptr(), dk_off + item.kv_head * bp_.dk.head_stride), p_.dtype,
                       dqk_);
      if (dv_off >= 0)
        ops_.store_row(tile.dv.data() + (j - tile.j0) * dv_, 1.0f,
                       mutable_element(bp_.dv.mutable_ptr(), dv_off + item.kv_head * bp_.dv.head_stride), p_.dtype,
                       dv_);
    }
  }

  // ---- shared steps ----

  void load_query_block(const SequencePlan& s, int64_t b, int64_t h, int64_t i0, int64_t i1, bool with_dout) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = i - i0;
      ops_.load_row(element(p_.q.ptr, core::q_offset(p_, s.seq, b, i, h)), p_.dtype, q_.data() + r * dqk_, dqk_);
      if (with_dout)
        ops_.load_row(element(bp_.dout.ptr, core::query_side_offset(p_, s.seq, bp_.dout, b, i, h)), p_.dtype,
                      dout_.data() + r * dv_, dv_);
    }
    queries_finite_ = all_finite(q_.data(), (i1 - i0) * dqk_) &&
                      (!with_dout || all_finite(dout_.data(), (i1 - i0) * dv_));
  }

  // Scores with their modifiers, s_ij, for the allowed (i, j) of the query rows x the tile's
  // attended keys; each row's allowed columns go to col_begin_/col_end_ (entries outside them are
  // undefined). With softcap, softcap_grads_ receives d s / d s_raw.
  //
  // Bit for bit the forward's scores (forward.cpp): the same product kernel (fp32 with separately
  // rounded products, as plain fp32 arithmetic), accumulated in the same order, and the same
  // vectorized modifiers, so P = exp(s - lse) is exactly the forward's normalisation. The tile is
  // query-major where the forward's is key-major; ALiBi's aligned key is expressed accordingly.
  void compute_scores(const core::Mask& mask, const core::ScoreMod& mod, const QueryRows& query,
                      const KeyTile& tile) {
    const int64_t rows = query.rows, cols = tile.attended_end - tile.j0, j0 = tile.j0;
    score_product_(rows, cols, dqk_, query.q, dqk_, 1, tile.k_t.data(), kKeyTile, probs_.data(), kKeyTile, false);
    ScoreModTile scale_and_cap;
    scale_and_cap.scale = p_.scale;
    scale_and_cap.softcap = mod.softcap;
    ops_.score_mods(probs_.data(), kKeyTile, rows, cols, scale_and_cap);
    if (mod.softcap > 0.0f) {
      // d (c tanh(x / c)) / dx = 1 - tanh^2, read back from the capped score
      const float inv_cap = 1.0f / mod.softcap;
      for (int64_t r = 0; r < rows; ++r) {
        const float* score = probs_.data() + r * kKeyTile;
        float* cap_grad = softcap_grads_.data() + r * kKeyTile;
        for (int64_t c = 0; c < cols; ++c) {
          const float t = score[c] * inv_cap;
          cap_grad[c] = 1.0f - t * t;
        }
      }
    }
    if (mod.has_alibi) {
      // |i + diag - j| = |col_aligned_key[c] - r| with col_aligned_key[c] = (j0 + c) - diag - i0
      for (int64_t c = 0; c < cols; ++c) {
        alibi_slope_[c] = mod.alibi_slope;
        alibi_aligned_[c] = static_cast<float>((j0 + c) - mask.diag - query.i0);
      }
      ScoreModTile alibi;
      alibi.scale = 1.0f;
      alibi.col_slope = alibi_slope_.data();
      alibi.col_aligned_key = alibi_aligned_.data();
      ops_.score_mods(probs_.data(), kKeyTile, rows, cols, alibi);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = query.i0 + r;
      col_begin_[r] = core::clamp_i64(mask.row_begin(i) - j0, 0, cols);
      col_end_[r] = core::clamp_i64(mask.row_end(i) - j0, col_begin_[r], cols);
    }
  }

  // P_ij = exp((s_ij - m_i) - log Z_i) on the allowed columns, exactly 0 elsewhere.
  void compute_probabilities(int64_t rows, int64_t cols, const float* row_max, const float* row_log_sum) {
    for (int64_t r = 0; r < rows; ++r) {
      float* prob = probs_.data() + r * kKeyTile;
      const int64_t c0 = col_begin_[r];
      int64_t c1 = col_end_[r];
      if (row_max[r] == -INFINITY) c1 = col_end_[r] = c0;  // the forward saw no key and no sink
      std::fill(prob, prob + c0, 0.0f);
      std::fill(prob + c1, prob + cols, 0.0f);
      if (c1 == c0) continue;
      for (int64_t c = c0; c < c1; ++c) prob[c] -= row_max[r];
      std::fill(shift_.begin(), shift_.begin() + (c1 - c0), row_log_sum[r]);
      ops_.exp_shifted(prob + c0, kKeyTile, 1, c1 - c0, shift_.data());
    }
  }

  // dS_ij = scale * P_ij * (dP_ij - D_i) * (d s_ij / d s_raw_ij) with dP = dO V^T: the gradient
  // with respect to the raw product <q_i, k_j>, the scale folded in once for both dQ and dK.
  // Exactly 0 outside the allowed columns. With sinks, also adds each row's sums of P * dP and P
  // to pdp / psum.
  void compute_score_grads(const QueryRows& query, const KeyTile& tile, const float* row_dot, bool softcapped,
                           double* pdp, double* psum) {
    const int64_t rows = query.rows, cols = tile.attended_end - tile.j0;
    ops_.matmul(rows, cols, dv_, query.dout, dv_, 1, tile.v_t.data(), kKeyTile, score_grads_.data(), kKeyTile,
                false);
    for (int64_t r = 0; r < rows; ++r) {
      const float* prob = probs_.data() + r * kKeyTile;
      const float* cap_grad = softcap_grads_.data() + r * kKeyTile;
      float* grad = score_grads_.data() + r * kKeyTile;
      const int64_t c0 = col_begin_[r], c1 = col_end_[r];
      const float dot = row_dot[r];
      std::fill(grad, grad + c0, 0.0f);
      std::fill(grad + c1, grad + cols, 0.0f);
      if (pdp != nullptr) {
        double tile_pdp = 0.0, tile_psum = 0.0;
        for (int64_t c = c0; c < c1; ++c) {
          tile_pdp += static_cast<double>(prob[c]) * grad[c];
          tile_psum += prob[c];
        }
        pdp[r] += tile_pdp;
        psum[r] += tile_psum;
      }
      for (int64_t c = c0; c < c1; ++c) grad[c] = prob[c] * (grad[c] - dot) * p_.scale;
      if (softcapped)
        for (int64_t c = c0; c < c1; ++c) grad[c] *= cap_grad[c];
    }
  }

  // One query-row range of head h against one key tile: P, dS, and the three gradient products.
  void tile_gradients(const SequencePlan& s, const KeyTileItem& item, int64_t h, const core::ScoreMod& mod,
                      const QueryRows& query, KeyTile& tile) {
    const int64_t rows = query.rows, cols = tile.attended_end - tile.j0;
    const int64_t stats = h * plan_.rows() + s.row0 + query.i0;
    const int64_t sums = row_sum_index(item.split, h, s.row0 + query.i0);
    compute_scores(s.mask, mod, query, tile);
    compute_probabilities(rows, cols, scratch_.row_max.get() + stats, scratch_.row_log_sum.get() + stats);
    compute_score_grads(query, tile, scratch_.row_dot.get() + stats, mod.softcap > 0.0f,
                        scratch_.row_pdp ? scratch_.row_pdp.get() + sums : nullptr,
                        scratch_.row_psum ? scratch_.row_psum.get() + sums : nullptr);
    float* dq_rows = dq_plane_row(item.split, s.row0 + query.i0, h);
    const int64_t dq_pitch = p_.heads_q * dqk_;
    if (queries_finite_ && tile.finite) {
      // Masked entries of P and dS are exact zeros, so whole-tile products add exactly nothing
      // for them. (With a NaN among the operands, 0 * NaN would leak: see below.)
      ops_.matmul(cols, dv_, rows, probs_.data(), 1, kKeyTile, query.dout, dv_, tile.dv.data(), dv_, true);
      ops_.matmul(cols, dqk_, rows, score_grads_.data(), 1, kKeyTile, query.q, dqk_, tile.dk.data(), dqk_, true);
      ops_.matmul(rows, dqk_, cols, score_grads_.data(), kKeyTile, 1, tile.k.data(), dqk_, dq_rows, dq_pitch, true);
    } else {
      accumulate_allowed_only(query, tile, dq_rows, dq_pitch);
    }
  }

  // The three gradient products over allowed entries only: a NaN in a query row, dout row or key
  // reaches exactly the gradients it influences.
  void accumulate_allowed_only(const QueryRows& query, KeyTile& tile, float* dq_rows, int64_t dq_pitch) {
    for (int64_t r = 0; r < query.rows; ++r) {
      const float* prob = probs_.data() + r * kKeyTile;
      const float* grad = score_grads_.data() + r * kKeyTile;
      for (int64_t c = col_begin_[r]; c < col_end_[r]; ++c) {
        axpy(dv_, prob[c], query.dout + r * dv_, tile.dv.data() + c * dv_);
        axpy(dqk_, grad[c], query.q + r * dqk_, tile.dk.data() + c * dqk_);
        axpy(dqk_, grad[c], tile.k.data() + c * dqk_, dq_rows + r * dq_pitch);
      }
    }
  }

  const BackwardPlan& plan_;
  const BwdProblem& bp_;
  const Problem& p_;
  const TileOps& ops_;
  decltype(TileOps::matmul) score_product_;  // the forward's choice (forward.cpp)
  Scratch& scratch_;
  const int64_t dqk_, dv_;
  std::vector<KeyTile> tiles_;  // pass 2: one chunk; pass 1: the first
  std::vector<float> q_, dout_;  // the query block
  bool queries_finite_ = true;
  std::vector<float> probs_, score_grads_, softcap_grads_, shift_;
  std::vector<float> alibi_slope_, alibi_aligned_;
  std::vector<int64_t> col_begin_, col_end_;  // allowed columns of each row of the block
  std::vector<float> out_rows_, dout_row_;    // pass 1
};

// ---- pass 3: dq = sum of the split planes, in split order ---------------------------------------

void reduce_dq(const BackwardPlan& plan, const TileOps& ops, int64_t b, int64_t i0, int64_t i1,
               const Scratch& scratch) {
  const BwdProblem& bp = plan.bwd();
  const Problem& p = plan.fwd();
  const SequencePlan& s = plan.sequence(b);
  const int64_t dqk = p.head_dim_qk;
  const int64_t plane = plan.rows() * p.heads_q * dqk;
  std::vector<float> sum(static_cast<size_t>(dqk));
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t h = 0; h < p.heads_q; ++h) {
      std::fill(sum.begin(), sum.end(), 0.0f);
      const float* part = scratch.dq_split.get() + ((s.row0 + i) * p.heads_q + h) * dqk;
      for (int64_t split = 0; split < s.splits; ++split, part += plane)
        for (int64_t d = 0; d < dqk; ++d) sum[d] += part[d];
      const int64_t offset = core::query_side_offset(p, s.seq, bp.dq, b, i, h);
      ops.store_row(sum.data(), 1.0f, static_cast<char*>(bp.dq.mutable_ptr()) + offset * dtype_size(p.dtype),
                    p.dtype, dqk);
    }
  }
}

// Sequence b's share of d(sink_h) = -sum_i P_sink,i D_i: d lse_i / d sink = P_sink,i, and out_i
// depends on the sink only through lse_i. See the top of the file for R_i and S_i.
void sink_gradient_share(const BackwardPlan& plan, int64_t b, int64_t h, Scratch& scratch) {
  const Problem& p = plan.fwd();
  const SequencePlan& s = plan.sequence(b);
  const double sink = p.sinks[h];
  const int64_t first = h * plan.rows() + s.row0;
  const int64_t split_stride = p.heads_q * plan.rows();
  double share = 0.0;
  for (int64_t i = 0; i < s.seq.sq; ++i) {
    const float row_max = scratch.row_max[first + i];
    if (row_max == -INFINITY) continue;
    double pdp = 0.0, psum = 0.0;  // splits in order
    for (int64_t split = 0; split < s.splits; ++split) {
      pdp += scratch.row_pdp[split * split_stride + first + i];
      psum += scratch.row_psum[split * split_stride + first + i];
    }
    const double sink_prob = std::exp((sink - row_max) - scratch.row_log_sum[first + i]);
    const double norm = psum + sink_prob;
    share -= sink_prob * pdp / (norm * norm);
  }
  scratch.sink_grad[static_cast<size_t>(b * p.heads_q + h)] = share;
}

template <typename T>
std::unique_ptr<T[]> uninitialized(int64_t count) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(count, 1))]);
}

}  // namespace

void backward(const core::BwdProblem& bp, int num_threads) {
  const Problem& p = bp.fwd;
  const BackwardPlan plan(bp);
  const int64_t row_terms = plan.rows() * p.heads_q;

  Scratch scratch;
  scratch.row_max = uninitialized<float>(row_terms);
  scratch.row_log_sum = uninitialized<float>(row_terms);
  scratch.row_dot = uninitialized<float>(row_terms);
  scratch.dq_split = uninitialized<float>(plan.splits() * row_terms * p.head_dim_qk);
  scratch.sink_grad.assign(static_cast<size_t>(p.batch * p.heads_q), 0.0);
  const bool sink_gradient = bp.dsinks != nullptr && p.sinks != nullptr;
  if (sink_gradient) {
    scratch.row_pdp = uninitialized<double>(plan.splits() * row_terms);
    scratch.row_psum = uninitialized<double>(plan.splits() * row_terms);
  }

  // Tile buffers per pool worker, made on first use and kept across the passes.
  const int64_t items = static_cast<int64_t>(plan.items().size());
  std::vector<std::unique_ptr<TileWorker>> workers(static_cast<size_t>(
      std::max(workers_for(p.batch * p.heads_q, num_threads), workers_for(items, num_threads))));
  auto worker = [&](int index) -> TileWorker& {
    std::unique_ptr<TileWorker>& w = workers[static_cast<size_t>(index)];
    if (!w) w = std::make_unique<TileWorker>(plan, scratch);
    return *w;
  };

  parallel_for(p.batch * p.heads_q, num_threads,
               [&](int64_t index, int w) { worker(w).row_terms(index / p.heads_q, index % p.heads_q); });

  parallel_for(items, num_threads,
               [&](int64_t index, int w) { worker(w).key_tiles(plan.items()[static_cast<size_t>(index)]); });

  std::vector<std::pair<int64_t, int64_t>> chunks;  // (sequence, first row)
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t i = 0; i < plan.sequence(b).seq.sq; i += kReduceRows) chunks.emplace_back(b, i);
  const TileOps& ops = tile_ops();
  parallel_for(static_cast<int64_t>(chunks.size()), num_threads, [&](int64_t c, int) {
    const auto [b, i0] = chunks[static_cast<size_t>(c)];
    reduce_dq(plan, ops, b, i0, std::min(i0 + kReduceRows, plan.sequence(b).seq.sq), scratch);
  });

  if (sink_gradient)
    parallel_for(p.batch * p.heads_q, num_threads,
                 [&](int64_t index, int) { sink_gradient_share(plan, index / p.heads_q, index % p.heads_q, scratch); });

  if (bp.dsinks != nullptr) {
    for (int64_t h = 0; h < p.heads_q; ++h) {
      double total = 0.0;  // sequences in order, whatever the thread count
      for (int64_t b = 0; b < p.batch; ++b) total += scratch.sink_grad[static_cast<size_t>(b * p.heads_q + h)];
      bp.dsinks[h] = static_cast<float>(total);
    }
  }
}

}  // namespace flashsdpa::cpu
