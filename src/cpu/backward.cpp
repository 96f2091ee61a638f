// The CPU backward: FlashAttention-2's algorithm (Dao 2023, algorithm 2) on a thread pool.
//
// Three passes, each parallel over independent work items:
//   1. row terms     per (sequence, query head): D_i = rowsum(dout_i * out_i) in fp32, and each
//                    sequence's share of d(sink_h) = -sum_i exp(sink_h - lse_i) * D_i.
//   2. key tiles     per (sequence, kv head, key split): for each key tile of the split, recompute
//                    P = exp(s - lse) from q, k and the forward's lse for every query head of the
//                    group and every query row that can see the tile, then
//                        dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D) * (d s / d s_raw),
//                        dK += scale * dS^T Q,        dQ_split += scale * dS K.
//                    dk/dv of a tile are owned by one work item and written once, rounded from
//                    fp32. dq gets a contribution from every key tile, so each split accumulates
//                    into its own fp32 plane sized like dq.
//   3. dq reduction  per (sequence, query row chunk): dq = sum of the split planes, in split order.
//
// Determinism: which key tiles a split owns, the order a work item visits them, and the order of
// every accumulation depend on the problem's shape alone, never on the thread count or on which
// thread runs an item. Gradients are therefore bit-identical run to run and for any thread count,
// and BwdProblem::deterministic needs no separate (slower) path.
//
// Memory is O(tokens): the split planes hold splits * rows * Hq * Dqk floats, with the split count
// bounded by kMaxSplits and by a scratch budget; per-thread tiles are O(tile * head dim).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/dtype.h"
#include "core/mask.h"
#include "core/problem.h"
#include "core/sequence.h"
#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"

namespace flashsdpa::cpu {
namespace {

using core::BwdProblem;
using core::Operand;
using core::Problem;

constexpr int64_t kKeyTile = 64;     // keys per tile: the unit of dk/dv ownership
constexpr int64_t kQueryBlock = 64;  // query rows processed against one key tile at a time
constexpr int64_t kReduceRows = 64;  // query rows per dq reduction work item

// Key splits per (sequence, kv head). More splits give more parallel work items when batch * kv
// heads is small; each split costs a dq-sized fp32 plane. Chosen from the shape only (see the
// determinism note above).
constexpr int64_t kTargetWorkItems = 64;
constexpr int64_t kMaxSplits = 16;
constexpr int64_t kSplitScratchBudgetBytes = int64_t{512} << 20;

// Row conversion with the dtype switch hoisted out of the element loop.
void load_row(const void* base, int64_t offset, DType dtype, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kFloat32: {
      const float* src = static_cast<const float*>(base) + offset;
      std::copy(src, src + n, dst);
      break;
    }
    case DType::kFloat16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = core::fp16_to_float(src[d]);
      break;
    }
    case DType::kBFloat16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = core::bf16_to_float(src[d]);
      break;
    }
    default:
      std::fill(dst, dst + n, 0.0f);
  }
}

void store_row(void* base, int64_t offset, DType dtype, int64_t n, const float* src) {
  switch (dtype) {
    case DType::kFloat32:
      std::copy(src, src + n, static_cast<float*>(base) + offset);
      break;
    case DType::kFloat16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = core::float_to_fp16(src[d]);
      break;
    }
    case DType::kBFloat16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = core::float_to_bf16(src[d]);
      break;
    }
    default:
      break;
  }
}

// y += a * x
inline void axpy(int64_t n, float a, const float* x, float* y) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// c[r][j] = sum_d a[r][d] * bt[d][j] for r < rows, j < cols, where bt is b transposed (depth rows
// of pitch `pitch`) so the inner loop runs along contiguous columns and vectorizes. c has the
// same pitch.
void multiply_transposed(const float* a, int64_t rows, int64_t depth, const float* bt, int64_t cols,
                         int64_t pitch, float* c) {
  for (int64_t r = 0; r < rows; ++r) {
    float* c_row = c + r * pitch;
    std::fill(c_row, c_row + cols, 0.0f);
    const float* a_row = a + r * depth;
    for (int64_t d = 0; d < depth; ++d) axpy(cols, a_row[d], bt + d * pitch, c_row);
  }
}

// dst[c][r] = src[r][c] for a rows x cols src; dst has pitch `pitch`.
void transpose(const float* src, int64_t rows, int64_t cols, int64_t pitch, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * pitch + r] = src[r * cols + c];
}

// What the passes need to know about one sequence.
struct SequencePlan {
  core::SeqView seq;
  core::Mask mask;
  int64_t row0 = 0;         // first query row of the sequence in the dense scratch rows
  int64_t stored_keys = 0;  // key rows the sequence owns in k/v (and dk/dv), attended or not
  int64_t key_tiles = 0;
  int64_t splits = 0;       // 0 when the sequence has no key rows: dq is zero
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
    // Order only balances the pool; results never depend on it.
    std::stable_sort(items_.begin(), items_.end(),
                     [](const KeyTileItem& a, const KeyTileItem& b) { return a.cost > b.cost; });
  }

  const BwdProblem& bwd() const { return bp_; }
  const Problem& fwd() const { return p_; }
  const SequencePlan& sequence(int64_t b) const { return sequences_[static_cast<size_t>(b)]; }
  int64_t rows() const { return rows_; }
  int64_t splits() const { return splits_; }
  const std::vector<KeyTileItem>& items() const { return items_; }

 private:
  // dk/dv rows belong to sequence b even where seqused_k leaves them unattended; they get zeros.
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
    const int64_t plane_bytes = std::max<int64_t>(rows_ * p_.heads_q * p_.head_dim_qk, 1) *
                                static_cast<int64_t>(sizeof(float));
    splits = std::min(splits, std::max<int64_t>(kSplitScratchBudgetBytes / plane_bytes, 1));
    return std::min(splits, std::max<int64_t>(max_tiles, 1));
  }

  const BwdProblem& bp_;
  const Problem& p_;
  int64_t rows_ = 0;
  int64_t splits_ = 1;
  std::vector<SequencePlan> sequences_;
  std::vector<KeyTileItem> items_;
};

// Dense fp32 scratch shared by the passes, indexed by the plan's query rows.
struct Scratch {
  // row_dot[h * rows + r] = D of row r, head h
  std::unique_ptr<float[]> row_dot;
  // dq_split[((split * rows + r) * Hq + h) * Dqk + d]; untouched pages are never committed
  std::unique_ptr<float[]> dq_split;
  // sink_grad[b * Hq + h]: sequence b's share of d(sink_h)
  std::vector<double> sink_grad;
};

// ---- pass 1: D_i and the sink gradient ----------------------------------------------------------

void compute_row_terms(const BackwardPlan& plan, int64_t b, int64_t h, Scratch& scratch) {
  const BwdProblem& bp = plan.bwd();
  const Problem& p = plan.fwd();
  const SequencePlan& s = plan.sequence(b);
  std::vector<float> out_row(static_cast<size_t>(p.head_dim_v));
  std::vector<float> dout_row(static_cast<size_t>(p.head_dim_v));
  const float sink = p.sinks != nullptr ? p.sinks[h] : -INFINITY;
  double sink_grad = 0.0;
  for (int64_t i = 0; i < s.seq.sq; ++i) {
    load_row(p.out.ptr, core::out_offset(p, s.seq, b, i, h), p.dtype, p.head_dim_v, out_row.data());
    load_row(bp.dout.ptr, core::query_side_offset(p, s.seq, bp.dout, b, i, h), p.dtype, p.head_dim_v,
             dout_row.data());
    float dot = 0.0f;
    for (int64_t d = 0; d < p.head_dim_v; ++d) dot += dout_row[d] * out_row[d];
    scratch.row_dot[h * plan.rows() + s.row0 + i] = dot;
    // d lse_i / d sink = P_sink,i and d out_i / d sink = -P_sink,i * out_i.
    const float lse = p.lse[core::lse_offset(p, s.seq, b, i, h)];
    if (sink != -INFINITY && lse != -INFINITY) sink_grad -= std::exp(static_cast<double>(sink) - lse) * dot;
  }
  scratch.sink_grad[static_cast<size_t>(b * p.heads_q + h)] = sink_grad;
}

// ---- pass 2: one (sequence, kv head, split) -----------------------------------------------------

// Tiles are row-major; every array with a key axis has pitch kKeyTile.
class KeyTileWorker {
 public:
  KeyTileWorker(const BackwardPlan& plan, Scratch& scratch)
      : plan_(plan), bp_(plan.bwd()), p_(plan.fwd()), scratch_(scratch), dqk_(p_.head_dim_qk),
        dv_(p_.head_dim_v) {
    auto tile = [](int64_t rows, int64_t cols) { return std::vector<float>(static_cast<size_t>(rows * cols)); };
    k_ = tile(kKeyTile, dqk_);
    v_ = tile(kKeyTile, dv_);
    k_t_ = tile(dqk_, kKeyTile);
    v_t_ = tile(dv_, kKeyTile);
    dk_ = tile(kKeyTile, dqk_);
    dv_acc_ = tile(kKeyTile, dv_);
    q_ = tile(kQueryBlock, dqk_);
    dout_ = tile(kQueryBlock, dv_);
    probs_ = tile(kQueryBlock, kKeyTile);
    score_grads_ = tile(kQueryBlock, kKeyTile);
    softcap_grads_ = tile(kQueryBlock, kKeyTile);
    lse_.resize(kQueryBlock);
    col_begin_.resize(kQueryBlock);
    col_end_.resize(kQueryBlock);
  }

  void run(const KeyTileItem& item) {
    const SequencePlan& s = plan_.sequence(item.batch);
    zero_dq_plane(s, item);
    // Tiles are dealt round robin so that under a causal mask every split gets early (long) and
    // late (short) key tiles alike.
    for (int64_t tile = item.split; tile < s.key_tiles; tile += s.splits) {
      const int64_t j0 = tile * kKeyTile;
      const int64_t j1 = std::min(j0 + kKeyTile, s.stored_keys);
      std::fill(dk_.begin(), dk_.end(), 0.0f);
      std::fill(dv_acc_.begin(), dv_acc_.end(), 0.0f);
      // Keys past k_end (seqused_k) are stored but never attended: their gradients stay zero.
      const int64_t j_end = std::min(j1, s.mask.k_end);
      if (j_end > j0) {
        load_key_tile(s, item, j0, j_end);
        for (int64_t g = 0; g < p_.group; ++g) process_head(s, item, item.kv_head * p_.group + g, j0, j_end);
      }
      store_key_tile(s, item, j0, j1);
    }
  }

 private:
  float* dq_plane_row(int64_t split, int64_t row, int64_t h) const {
    return scratch_.dq_split.get() + ((split * plan_.rows() + row) * p_.heads_q + h) * dqk_;
  }

  void zero_dq_plane(const SequencePlan& s, const KeyTileItem& item) {
    for (int64_t i = 0; i < s.seq.sq; ++i) {
      float* row = dq_plane_row(item.split, s.row0 + i, item.kv_head * p_.group);
      std::fill(row, row + p_.group * dqk_, 0.0f);
    }
  }

  void load_key_tile(const SequencePlan& s, const KeyTileItem& item, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      float* k_row = k_.data() + (j - j0) * dqk_;
      float* v_row = v_.data() + (j - j0) * dv_;
      const int64_t k_off = core::key_offset(p_, s.seq, p_.k, item.batch, j);
      const int64_t v_off = core::key_offset(p_, s.seq, p_.v, item.batch, j);
      if (k_off < 0 || v_off < 0) {  // a key that reads nothing (paged block out of range)
        std::fill(k_row, k_row + dqk_, 0.0f);
        std::fill(v_row, v_row + dv_, 0.0f);
        continue;
      }
      load_row(p_.k.ptr, k_off + item.kv_head * p_.k.head_stride, p_.dtype, dqk_, k_row);
      load_row(p_.v.ptr, v_off + item.kv_head * p_.v.head_stride, p_.dtype, dv_, v_row);
    }
    transpose(k_.data(), j1 - j0, dqk_, kKeyTile, k_t_.data());
    transpose(v_.data(), j1 - j0, dv_, kKeyTile, v_t_.data());
  }

  void store_key_tile(const SequencePlan& s, const KeyTileItem& item, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t dk_off = core::key_offset(p_, s.seq, bp_.dk, item.batch, j);
      const int64_t dv_off = core::key_offset(p_, s.seq, bp_.dv, item.batch, j);
      if (dk_off >= 0)
        store_row(bp_.dk.mutable_ptr(), dk_off + item.kv_head * bp_.dk.head_stride, p_.dtype, dqk_,
                  dk_.data() + (j - j0) * dqk_);
      if (dv_off >= 0)
        store_row(bp_.dv.mutable_ptr(), dv_off + item.kv_head * bp_.dv.head_stride, p_.dtype, dv_,
                  dv_acc_.data() + (j - j0) * dv_);
    }
  }

  // Every query row of head h that can see keys [j0, j1), one block at a time.
  void process_head(const SequencePlan& s, const KeyTileItem& item, int64_t h, int64_t j0, int64_t j1) {
    const int64_t i_begin = s.mask.query_begin(j0);
    const int64_t i_end = s.mask.query_end(j1 - 1);
    const core::ScoreMod mod = score_mod(item.batch, h);
    for (int64_t i0 = i_begin; i0 < i_end; i0 += kQueryBlock) {
      const int64_t i1 = std::min(i0 + kQueryBlock, i_end);
      load_query_block(s, item.batch, h, i0, i1);
      compute_probabilities(s.mask, mod, i0, i1, j0, j1);
      accumulate_dv(i1 - i0);
      compute_score_grads(s, h, i0, i1, j1 - j0, mod.softcap > 0.0f);
      accumulate_dq(item.split, s.row0 + i0, h, i1 - i0);
      accumulate_dk(i1 - i0);
    }
  }

  core::ScoreMod score_mod(int64_t b, int64_t h) const {
    core::ScoreMod mod;
    mod.softcap = p_.softcap;
    if (p_.alibi_slopes != nullptr) {
      mod.has_alibi = true;
      mod.alibi_slope = p_.alibi_slopes[b * p_.alibi_batch_stride + h];
    }
    return mod;
  }

  void load_query_block(const SequencePlan& s, int64_t b, int64_t h, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = i - i0;
      load_row(p_.q.ptr, core::q_offset(p_, s.seq, b, i, h), p_.dtype, dqk_, q_.data() + r * dqk_);
      load_row(bp_.dout.ptr, core::query_side_offset(p_, s.seq, bp_.dout, b, i, h), p_.dtype, dv_,
               dout_.data() + r * dv_);
      lse_[r] = p_.lse[core::lse_offset(p_, s.seq, b, i, h)];
    }
  }

  // P_ij = exp(s_ij - lse_i) from the forward's lse for allowed (i, j), exactly 0 elsewhere. Each
  // row's allowed columns are recorded so the later steps never touch a masked entry: a NaN in a
  // key or row must reach only the gradients it influences.
  void compute_probabilities(const core::Mask& mask, const core::ScoreMod& mod, int64_t i0, int64_t i1,
                             int64_t j0, int64_t j1) {
    const int64_t rows = i1 - i0, cols = j1 - j0;
    multiply_transposed(q_.data(), rows, dqk_, k_t_.data(), cols, kKeyTile, probs_.data());
    const bool plain_scores = !(mod.softcap > 0.0f) && !mod.has_alibi;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const float lse = lse_[r];
      const int64_t c0 = core::clamp_i64(mask.row_begin(i) - j0, 0, cols);
      int64_t c1 = core::clamp_i64(mask.row_end(i) - j0, c0, cols);
      if (lse == -INFINITY) c1 = c0;  // the forward saw no key and no sink: P = 0
      col_begin_[r] = c0;
      col_end_[r] = c1;
      float* prob = probs_.data() + r * kKeyTile;
      float* cap_grad = softcap_grads_.data() + r * kKeyTile;
      if (plain_scores) {
        for (int64_t c = c0; c < c1; ++c) prob[c] = std::exp(prob[c] * p_.scale - lse);
      } else {
        for (int64_t c = c0; c < c1; ++c)
          prob[c] = std::exp(mod.apply(prob[c] * p_.scale, i, j0 + c, mask.diag, &cap_grad[c]) - lse);
      }
    }
  }

  // dV_j += sum_i P_ij dO_i
  void accumulate_dv(int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* prob = probs_.data() + r * kKeyTile;
      const float* dout_row = dout_.data() + r * dv_;
      for (int64_t c = col_begin_[r]; c < col_end_[r]; ++c) axpy(dv_, prob[c], dout_row, dv_acc_.data() + c * dv_);
    }
  }

  // dS_ij = scale * P_ij * (dP_ij - D_i) * (d s_ij / d raw_ij) with dP = dO V^T: the gradient with
  // respect to the raw product <q_i, k_j>, the scale folded in once for both dQ and dK.
  void compute_score_grads(const SequencePlan& s, int64_t h, int64_t i0, int64_t i1, int64_t cols,
                           bool softcapped) {
    const int64_t rows = i1 - i0;
    multiply_transposed(dout_.data(), rows, dv_, v_t_.data(), cols, kKeyTile, score_grads_.data());
    const float* row_dot = scratch_.row_dot.get() + h * plan_.rows() + s.row0 + i0;
    for (int64_t r = 0; r < rows; ++r) {
      const float* prob = probs_.data() + r * kKeyTile;
      const float* cap_grad = softcap_grads_.data() + r * kKeyTile;
      float* grad = score_grads_.data() + r * kKeyTile;
      const float dot = row_dot[r];
      for (int64_t c = col_begin_[r]; c < col_end_[r]; ++c) {
        float g = prob[c] * (grad[c] - dot) * p_.scale;
        if (softcapped) g *= cap_grad[c];
        grad[c] = g;
      }
    }
  }

  // dQ_i += sum_j dS_ij K_j, into this split's plane.
  void accumulate_dq(int64_t split, int64_t row0, int64_t h, int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* grad = score_grads_.data() + r * kKeyTile;
      float* dq_row = dq_plane_row(split, row0 + r, h);
      for (int64_t c = col_begin_[r]; c < col_end_[r]; ++c) axpy(dqk_, grad[c], k_.data() + c * dqk_, dq_row);
    }
  }

  // dK_j += sum_i dS_ij Q_i
  void accumulate_dk(int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* grad = score_grads_.data() + r * kKeyTile;
      const float* q_row = q_.data() + r * dqk_;
      for (int64_t c = col_begin_[r]; c < col_end_[r]; ++c) axpy(dqk_, grad[c], q_row, dk_.data() + c * dqk_);
    }
  }

  const BackwardPlan& plan_;
  const BwdProblem& bp_;
  const Problem& p_;
  Scratch& scratch_;
  const int64_t dqk_, dv_;
  std::vector<float> k_, v_, k_t_, v_t_;  // the key tile
  std::vector<float> dk_, dv_acc_;        // its gradients
  std::vector<float> q_, dout_, lse_;     // the query block
  std::vector<float> probs_, score_grads_, softcap_grads_;
  std::vector<int64_t> col_begin_, col_end_;  // allowed columns of each row of the block
};

// ---- pass 3: dq = sum of the split planes, in split order ---------------------------------------

void reduce_dq(const BackwardPlan& plan, int64_t b, int64_t i0, int64_t i1, const Scratch& scratch) {
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
      store_row(bp.dq.mutable_ptr(), core::query_side_offset(p, s.seq, bp.dq, b, i, h), p.dtype, dqk, sum.data());
    }
  }
}

}  // namespace

void backward(const core::BwdProblem& bp, int num_threads) {
  const Problem& p = bp.fwd;
  const BackwardPlan plan(bp);

  Scratch scratch;
  scratch.row_dot.reset(new float[static_cast<size_t>(std::max<int64_t>(plan.rows() * p.heads_q, 1))]);
  scratch.dq_split.reset(
      new float[static_cast<size_t>(std::max<int64_t>(plan.splits() * plan.rows() * p.heads_q * p.head_dim_qk, 1))]);
  scratch.sink_grad.assign(static_cast<size_t>(p.batch * p.heads_q), 0.0);

  parallel_for(p.batch * p.heads_q, num_threads, [&](int64_t item, int) {
    compute_row_terms(plan, item / p.heads_q, item % p.heads_q, scratch);
  });

  const std::vector<KeyTileItem>& items = plan.items();
  const int64_t item_count = static_cast<int64_t>(items.size());
  // Tile buffers per pool worker, made on first use.
  std::vector<std::unique_ptr<KeyTileWorker>> workers(static_cast<size_t>(workers_for(item_count, num_threads)));
  parallel_for(item_count, num_threads, [&](int64_t index, int worker) {
    std::unique_ptr<KeyTileWorker>& tiles = workers[static_cast<size_t>(worker)];
    if (!tiles) tiles = std::make_unique<KeyTileWorker>(plan, scratch);
    tiles->run(items[static_cast<size_t>(index)]);
  });

  std::vector<std::pair<int64_t, int64_t>> chunks;  // (sequence, first row)
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t i = 0; i < plan.sequence(b).seq.sq; i += kReduceRows) chunks.emplace_back(b, i);
  parallel_for(static_cast<int64_t>(chunks.size()), num_threads, [&](int64_t c, int) {
    const auto [b, i0] = chunks[static_cast<size_t>(c)];
    reduce_dq(plan, b, i0, std::min(i0 + kReduceRows, plan.sequence(b).seq.sq), scratch);
  });

  if (bp.dsinks != nullptr) {
    for (int64_t h = 0; h < p.heads_q; ++h) {
      double total = 0.0;  // sequences in order, whatever the thread count
      for (int64_t b = 0; b < p.batch; ++b) total += scratch.sink_grad[static_cast<size_t>(b * p.heads_q + h)];
      bp.dsinks[h] = static_cast<float>(total);
    }
  }
}

}  // namespace flashsdpa::cpu
