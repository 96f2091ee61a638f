#include "reference/reference.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "core/dtype.h"
#include "core/mask.h"
#include "core/rotary.h"
#include "core/sequence.h"

namespace flashsdpa::reference {
namespace {

using core::KvLayout;
using core::Operand;
using core::Problem;
using core::QLayout;
using core::SeqView;

// The arithmetic of one precision: T is the type every step is carried out in, step() rounds an
// intermediate result to what the input dtype holds (the identity in float64 mode).
template <typename T>
struct Arith {
  DType dtype;
  T step(T x) const;
  T load(const void* base, int64_t index) const {
    return static_cast<T>(core::load_as_float(base, index, dtype));
  }
};
template <>
double Arith<double>::step(double x) const {
  return x;
}
template <>
float Arith<float>::step(float x) const {
  return core::round_to(dtype, x);
}

int64_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

int64_t dense_query_row(const Problem& p, const SeqView& s, int64_t b, int64_t i) {
  return p.q_layout == QLayout::kVarlen ? s.q_row0 + i : b * p.seqlen_q + i;
}

// Dense key-side row of logical key j (see reference.h), or -1 when the key reads nothing.
// core::key_offset over an operand whose unit is one row gives exactly that numbering.
int64_t dense_key_row(const Problem& p, const SeqView& s, int64_t b, int64_t j) {
  Operand rows;
  rows.row_stride = 1;
  switch (p.kv_layout) {
    case KvLayout::kBatched: rows.batch_stride = p.seqlen_k; break;
    case KvLayout::kVarlen: rows.batch_stride = 0; break;
    case KvLayout::kPaged: rows.batch_stride = p.block_size; break;
    case KvLayout::kDenseCache: rows.batch_stride = p.cache_capacity; break;
  }
  return core::key_offset(p, s, rows, b, j);
}

template <typename T>
std::vector<T> load_row(const Arith<T>& a, const void* base, int64_t offset, int64_t n) {
  std::vector<T> row(static_cast<size_t>(n));
  for (int64_t d = 0; d < n; ++d) row[d] = a.load(base, offset + d);
  return row;
}

template <typename T>
std::vector<T> rotary_table_row(const Problem& p, const Arith<T>& a, const void* table, int64_t position) {
  return load_row(a, table, position * p.rotary_row_stride, p.rotary_dim / 2);
}

// Rotates x at `position` when the problem has rotary; core::rotary_row decides what a position
// the tables do not cover does (validation rejects those).
template <typename T>
void rotate(const Problem& p, const Arith<T>& a, int64_t position, std::vector<T>& x) {
  const int64_t table_row = core::rotary_row(p, position);
  if (p.rotary_dim == 0 || table_row < 0) return;
  const std::vector<T> cos_row = rotary_table_row(p, a, p.rotary_cos, table_row);
  const std::vector<T> sin_row = rotary_table_row(p, a, p.rotary_sin, table_row);
  core::rotary_apply(x.data(), cos_row.data(), sin_row.data(), p.rotary_dim, p.rotary_interleaved);
}

// Everything one (sequence, head, query row) needs from the forward, kept for the backward.
template <typename T>
struct RowAttention {
  struct Key {
    int64_t k_offset;   // element offset of this key's head in k
    int64_t v_offset;   // ... in v
    int64_t dense_row;  // key-side row of the gradients
    T score_grad;       // d score / d (scale * <q, k>): the softcap factor
    T prob;             // P_ij, normalised with the sink in the denominator
  };
  std::vector<Key> keys;  // the allowed keys that read something
  T sink_prob = 0;        // exp(sink - lse): the probability mass the sink absorbs
  T lse = -std::numeric_limits<T>::infinity();
  std::vector<T> out;
};

template <typename T>
RowAttention<T> attend_row(const Problem& p, const Arith<T>& a, const SeqView& s, const core::Mask& mask,
                           int64_t b, int64_t i, int64_t h, const std::vector<T>& q) {
  const int64_t kv_head = h / p.group;
  core::ScoreMod mod;
  mod.softcap = p.softcap;
  if (p.alibi_slopes != nullptr) {
    mod.has_alibi = true;
    mod.alibi_slope = p.alibi_slopes[b * p.alibi_batch_stride + h];
  }

  RowAttention<T> row;
  std::vector<T> scores;
  for (int64_t j = mask.row_begin(i); j < mask.row_end(i); ++j) {
    const int64_t k_row = core::key_offset(p, s, p.k, b, j);
    const int64_t v_row = core::key_offset(p, s, p.v, b, j);
    if (k_row < 0 || v_row < 0) continue;
    typename RowAttention<T>::Key key;
    key.k_offset = k_row + kv_head * p.k.head_stride;
    key.v_offset = v_row + kv_head * p.v.head_stride;
    key.dense_row = dense_key_row(p, s, b, j);
    T dot = 0;
    for (int64_t d = 0; d < p.head_dim_qk; ++d) dot += q[d] * a.load(p.k.ptr, key.k_offset + d);
    const T raw_score = a.step(dot * static_cast<T>(p.scale));
    key.prob = 0;
    scores.push_back(a.step(mod.apply(raw_score, i, j, mask.diag, &key.score_grad)));
    row.keys.push_back(key);
  }

  // Softmax over the materialised row; SoftmaxRow owns the empty-row and sink conventions.
  core::SoftmaxRow<T> softmax;
  T row_max = -std::numeric_limits<T>::infinity();
  for (const T score : scores) row_max = score > row_max ? score : row_max;
  softmax.rescale_to(row_max);
  for (const T score : scores) softmax.sum += std::exp(score - softmax.max);
  const bool has_sink = p.sinks != nullptr;
  if (has_sink) softmax.add_sink(static_cast<T>(p.sinks[h]));
  const T inv_sum = softmax.inv_sum();
  row.lse = softmax.lse();
  if (has_sink) row.sink_prob = std::exp(static_cast<T>(p.sinks[h]) - softmax.max) * inv_sum;

  row.out.assign(static_cast<size_t>(p.head_dim_v), T(0));
  for (size_t n = 0; n < row.keys.size(); ++n) {
    auto& key = row.keys[n];
    key.prob = a.step(std::exp(scores[n] - softmax.max) * inv_sum);
    for (int64_t d = 0; d < p.head_dim_v; ++d) row.out[d] += key.prob * a.load(p.v.ptr, key.v_offset + d);
  }
  for (T& x : row.out) x = a.step(x);
  return row;
}

// Query row i of head h as the attention reads it: rotated in a KV-cache call with rotary.
template <typename T>
std::vector<T> query_vector(const Problem& p, const Arith<T>& a, const SeqView& s, int64_t b, int64_t i, int64_t h,
                            bool rotate_q) {
  std::vector<T> q = load_row(a, p.q.ptr, core::q_offset(p, s, b, i, h), p.head_dim_qk);
  if (rotate_q && p.rotary_dim > 0) {
    rotate(p, a, core::rotary_q_position(p, s, i), q);
    for (T& x : q) x = a.step(x);
  }
  return q;
}

template <typename T>
ForwardResult run_forward(const Problem& p, const Arith<T>& a, bool rotate_q) {
  const int64_t rows = query_rows(p);
  ForwardResult result;
  result.out.assign(static_cast<size_t>(rows * p.heads_q * p.head_dim_v), 0.0);
  result.lse.assign(static_cast<size_t>(rows * p.heads_q), -std::numeric_limits<double>::infinity());
  for (int64_t b = 0; b < p.batch; ++b) {
    const SeqView s = core::sequence(p, b);
    const core::Mask mask = core::sequence_mask(p, s);
    for (int64_t h = 0; h < p.heads_q; ++h) {
      for (int64_t i = 0; i < s.sq; ++i) {
        const std::vector<T> q = query_vector(p, a, s, b, i, h, rotate_q);
        const RowAttention<T> row = attend_row(p, a, s, mask, b, i, h, q);
        const int64_t r = dense_query_row(p, s, b, i);
        for (int64_t d = 0; d < p.head_dim_v; ++d) result.out[(r * p.heads_q + h) * p.head_dim_v + d] = row.out[d];
        result.lse[r * p.heads_q + h] = static_cast<double>(row.lse);
      }
    }
  }
  return result;
}

// Writes k_new / v_new into their cache slots, k_new rotated at its slot's position. Dims past
// rotary_dim and all of v are copied bit for bit.
template <typename T>
void append_new_keys(const Problem& p, const Arith<T>& a) {
  const int64_t esize = element_size(p.dtype);
  for (int64_t b = 0; b < p.batch; ++b) {
    const SeqView s = core::sequence(p, b);
    for (int64_t j = s.append_begin; j < s.append_end; ++j) {
      const int64_t t = j - s.append_begin;
      const int64_t k_row = core::key_offset(p, s, p.k, b, j);
      const int64_t v_row = core::key_offset(p, s, p.v, b, j);
      for (int64_t hk = 0; hk < p.heads_kv; ++hk) {
        const int64_t k_src = b * p.k_new.batch_stride + t * p.k_new.row_stride + hk * p.k_new.head_stride;
        const int64_t v_src = b * p.v_new.batch_stride + t * p.v_new.row_stride + hk * p.v_new.head_stride;
        if (k_row >= 0) {
          const int64_t k_dst = k_row + hk * p.k.head_stride;
          std::memcpy(static_cast<char*>(p.k.mutable_ptr()) + k_dst * esize,
                      static_cast<const char*>(p.k_new.ptr) + k_src * esize, p.head_dim_qk * esize);
          if (p.rotary_dim > 0) {
            std::vector<T> x = load_row(a, p.k_new.ptr, k_src, p.head_dim_qk);
            rotate(p, a, j, x);
            for (int64_t d = 0; d < p.rotary_dim; ++d)
              core::store_from_float(p.k.mutable_ptr(), k_dst + d, p.dtype, static_cast<float>(x[d]));
          }
        }
        if (v_row >= 0) {
          std::memcpy(static_cast<char*>(p.v.mutable_ptr()) + (v_row + hk * p.v.head_stride) * esize,
                      static_cast<const char*>(p.v_new.ptr) + v_src * esize, p.head_dim_v * esize);
        }
      }
    }
  }
}

template <typename T>
std::vector<double> finish(const Arith<T>& a, const std::vector<T>& acc, T factor) {
  std::vector<double> out(acc.size());
  for (size_t n = 0; n < acc.size(); ++n) out[n] = static_cast<double>(a.step(acc[n] * factor));
  return out;
}

// Gradients of one row, with P_ij = exp(s_ij - lse_i) and D_i = dout_i . out_i:
//   dv_j += P_ij dout_i
//   dS_ij = P_ij (dout_i . v_j - D_i)          (the sink has no value: its dP is 0)
//   dr_ij = dS_ij * d s / d r   with r = scale <q_i, k_j> (core::ScoreMod: softcap's 1 - tanh^2)
//   dq_i += scale dr_ij k_j,  dk_j += scale dr_ij q_i
//   d sink_h = -sum_i P_sink_i D_i   (lse_i depends on the sink; out_i through P_ij only)
template <typename T>
BackwardResult run_backward(const core::BwdProblem& bp, const Arith<T>& a) {
  const Problem& p = bp.fwd;
  const int64_t q_rows = query_rows(p), k_rows = key_rows(p);
  std::vector<T> dq(static_cast<size_t>(q_rows * p.heads_q * p.head_dim_qk), T(0));
  std::vector<T> dk(static_cast<size_t>(k_rows * p.heads_kv * p.head_dim_qk), T(0));
  std::vector<T> dv(static_cast<size_t>(k_rows * p.heads_kv * p.head_dim_v), T(0));
  std::vector<T> dsinks(static_cast<size_t>(p.sinks != nullptr ? p.heads_q : 0), T(0));
  std::vector<double> dsinks_magnitude(dsinks.size(), 0.0);
  const T scale = static_cast<T>(p.scale);

  for (int64_t b = 0; b < p.batch; ++b) {
    const SeqView s = core::sequence(p, b);
    const core::Mask mask = core::sequence_mask(p, s);
    for (int64_t h = 0; h < p.heads_q; ++h) {
      const int64_t kv_head = h / p.group;
      for (int64_t i = 0; i < s.sq; ++i) {
        const std::vector<T> q = query_vector(p, a, s, b, i, h, false);
        const RowAttention<T> row = attend_row(p, a, s, mask, b, i, h, q);
        const std::vector<T> dout = load_row(a, bp.dout.ptr, core::query_side_offset(p, s, bp.dout, b, i, h), p.head_dim_v);
        T delta = 0;
        double delta_magnitude = 0;
        for (int64_t d = 0; d < p.head_dim_v; ++d) {
          delta += dout[d] * row.out[d];
          delta_magnitude += std::fabs(static_cast<double>(dout[d]) * static_cast<double>(row.out[d]));
        }
        if (!dsinks.empty()) {
          dsinks[h] -= row.sink_prob * delta;
          dsinks_magnitude[h] += static_cast<double>(row.sink_prob) * delta_magnitude;
        }

        T* dq_row = &dq[(dense_query_row(p, s, b, i) * p.heads_q + h) * p.head_dim_qk];
        for (const auto& key : row.keys) {
          T* dv_row = &dv[(key.dense_row * p.heads_kv + kv_head) * p.head_dim_v];
          T* dk_row = &dk[(key.dense_row * p.heads_kv + kv_head) * p.head_dim_qk];
          T dp = 0;
          for (int64_t d = 0; d < p.head_dim_v; ++d) {
            dv_row[d] += key.prob * dout[d];
            dp += dout[d] * a.load(p.v.ptr, key.v_offset + d);
          }
          const T ds = a.step(a.step(key.prob * (a.step(dp) - delta)) * key.score_grad);
          for (int64_t d = 0; d < p.head_dim_qk; ++d) {
            dq_row[d] += ds * a.load(p.k.ptr, key.k_offset + d);
            dk_row[d] += ds * q[d];
          }
        }
      }
    }
  }
  BackwardResult result;
  result.dq = finish(a, dq, scale);
  result.dk = finish(a, dk, scale);
  result.dv = finish(a, dv, T(1));
  result.dsinks.assign(dsinks.begin(), dsinks.end());
  result.dsinks_magnitude = dsinks_magnitude;
  return result;
}

}  // namespace

int64_t query_rows(const Problem& p) {
  return p.q_layout == QLayout::kVarlen ? p.total_q : p.batch * p.seqlen_q;
}

int64_t key_rows(const Problem& p) {
  switch (p.kv_layout) {
    case KvLayout::kBatched: return p.batch * p.seqlen_k;
    case KvLayout::kVarlen: return p.total_k;
    case KvLayout::kPaged: return p.num_blocks * p.block_size;
    case KvLayout::kDenseCache: return p.cache_batch * p.cache_capacity;
  }
  return 0;
}

ForwardResult forward(const Problem& p, Precision prec) {
  if (prec == Precision::kFloat64) return run_forward(p, Arith<double>{p.dtype}, false);
  return run_forward(p, Arith<float>{p.dtype}, false);
}

ForwardResult kvcache(const Problem& p, Precision prec) {
  if (prec == Precision::kFloat64) {
    const Arith<double> a{p.dtype};
    append_new_keys(p, a);
    return run_forward(p, a, true);
  }
  const Arith<float> a{p.dtype};
  append_new_keys(p, a);
  return run_forward(p, a, true);
}

BackwardResult backward(const core::BwdProblem& p, Precision prec) {
  if (prec == Precision::kFloat64) return run_backward(p, Arith<double>{p.fwd.dtype});
  return run_backward(p, Arith<float>{p.fwd.dtype});
}

void paged_kv_write(const core::KvWriteProblem& p) {
  const int64_t esize = element_size(p.dtype);
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t first_row = p.cu_seqlens_new != nullptr ? p.cu_seqlens_new[b] : 0;
    const int64_t count = p.cu_seqlens_new != nullptr ? p.cu_seqlens_new[b + 1] - p.cu_seqlens_new[b] : p.seqlen_new;
    const int64_t batch_offset = p.cu_seqlens_new != nullptr ? 0 : b;
    for (int64_t t = 0; t < count; ++t) {
      const int64_t position = static_cast<int64_t>(p.cache_seqlens[b]) + t;
      const int64_t slot = position / p.block_size;
      if (position < 0 || slot >= p.max_blocks_per_seq) continue;
      const int64_t block = p.block_table[b * p.block_table_stride + slot];
      if (block < 0 || block >= p.num_blocks) continue;
      const int64_t in_block = position - slot * p.block_size;
      for (int64_t h = 0; h < p.heads_kv; ++h) {
        const int64_t src_row = first_row + t;
        const int64_t k_src = batch_offset * p.k_new.batch_stride + src_row * p.k_new.row_stride + h * p.k_new.head_stride;
        const int64_t v_src = batch_offset * p.v_new.batch_stride + src_row * p.v_new.row_stride + h * p.v_new.head_stride;
        const int64_t k_dst = block * p.k_cache.batch_stride + in_block * p.k_cache.row_stride + h * p.k_cache.head_stride;
        const int64_t v_dst = block * p.v_cache.batch_stride + in_block * p.v_cache.row_stride + h * p.v_cache.head_stride;
        std::memcpy(static_cast<char*>(p.k_cache.mutable_ptr()) + k_dst * esize,
                    static_cast<const char*>(p.k_new.ptr) + k_src * esize, p.head_dim_qk * esize);
        std::memcpy(static_cast<char*>(p.v_cache.mutable_ptr()) + v_dst * esize,
                    static_cast<const char*>(p.v_new.ptr) + v_src * esize, p.head_dim_v * esize);
      }
    }
  }
}

std::string check_close(const std::vector<double>& got, const std::vector<double>& ref64,
                        const std::vector<double>& lowp, double factor) {
  std::ostringstream msg;
  msg.precision(9);
  if (got.size() != ref64.size() || lowp.size() != ref64.size()) {
    msg << "size mismatch: got " << got.size() << ", ref64 " << ref64.size() << ", lowp " << lowp.size();
    return msg.str();
  }
  double lowp_error = 0.0;
  for (size_t n = 0; n < ref64.size(); ++n) {
    if (std::isfinite(ref64[n]) && std::isfinite(lowp[n])) lowp_error = std::fmax(lowp_error, std::fabs(lowp[n] - ref64[n]));
  }
  const double tolerance = factor * lowp_error + 1e-6;

  size_t worst = 0;
  double worst_error = -1.0;
  for (size_t n = 0; n < ref64.size(); ++n) {
    const double g = got[n], r = ref64[n];
    if (!std::isfinite(r) || !std::isfinite(g)) {
      const bool matched = std::isnan(r) ? std::isnan(g) : g == r;
      if (!matched) {
        msg << "non-finite mismatch at index " << n << ": got " << g << ", ref64 " << r << ", lowp " << lowp[n];
        return msg.str();
      }
      continue;
    }
    const double error = std::fabs(g - r);
    if (error > worst_error) {
      worst_error = error;
      worst = n;
    }
  }
  if (worst_error <= tolerance) return "";
  msg << "max |got - ref64| = " << worst_error << " at index " << worst << " (got " << got[worst] << ", ref64 "
      << ref64[worst] << ", lowp " << lowp[worst] << ") exceeds " << factor << " * max|lowp - ref64| ("
      << lowp_error << ") + 1e-6 = " << tolerance;
  return msg.str();
}

}  // namespace flashsdpa::reference
