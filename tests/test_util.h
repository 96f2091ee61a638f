// Shared test utilities: seeded random tensors of any dtype, guarded host buffers, builders of
// AttnParams for every layout, and checks of a backend against the float64 reference (SPEC §6).
//
// Nothing here depends on GoogleTest: every check returns "" on success or a message saying what
// went wrong, so the CPU tests, the CUDA tests and the benchmarks can share it:
//     EXPECT_EQ(check_forward(c, cpu_context()), "") << c.config.describe();
//
// Device buffers: a HostTensor's guarded_bytes() (guards included) can be mirrored into device
// memory as is; view_at(device_base) then gives the TensorRef of the mirrored tensor, and after
// copying the bytes back, check_guards() and values() work unchanged.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/problem.h"
#include "core/sequence.h"
#include "core/validate.h"
#include "flashsdpa/flashsdpa.h"
#include "reference/reference.h"

namespace flashsdpa::test {

using Shape = std::vector<int64_t>;

// ---------------------------------------------------------------------------------------------
// Randomness: one engine per test, seeded explicitly, so every failure reproduces.

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  double normal(double mean = 0.0, double stddev = 1.0) { return std::normal_distribution<double>(mean, stddev)(engine_); }
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(engine_); }
  int64_t uniform_int(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(engine_); }  // inclusive
  bool coin(double p_true = 0.5) { return std::bernoulli_distribution(p_true)(engine_); }
  template <typename T>
  const T& pick(const std::vector<T>& choices) {
    return choices[static_cast<size_t>(uniform_int(0, static_cast<int64_t>(choices.size()) - 1))];
  }
  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
};

// Grid sampling: value number covering_pick(axis, n, size) of an axis for case n. Every run of
// `size` consecutive cases visits each value once, in an order reshuffled per run and per axis,
// so each listed value appears and the axes do not move in lockstep (as n % size would make
// axes of related sizes do).
inline size_t covering_pick(uint64_t axis, int n, size_t size) {
  std::vector<size_t> order(size);
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 engine(axis * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(n) / size);
  std::shuffle(order.begin(), order.end(), engine);
  return order[static_cast<size_t>(n) % size];
}

// ---------------------------------------------------------------------------------------------
// HostTensor: a strided tensor that owns its storage, with guard regions before and after and a
// byte pattern in every byte that is not an element (guards and stride gaps), so a write outside
// the tensor's elements is detected.

class HostTensor {
 public:
  static constexpr int64_t kGuardBytes = 512;

  HostTensor() = default;
  // Contiguous (row-major).
  HostTensor(DType dtype, Shape shape) : HostTensor(dtype, shape, contiguous_strides(shape)) {}
  // Explicit strides in elements; the last one should be 1 for operands (validation insists).
  HostTensor(DType dtype, Shape shape, Shape strides)
      : dtype_(dtype), shape_(std::move(shape)), strides_(std::move(strides)) {
    numel_ = 1;
    int64_t last = 0;
    for (size_t d = 0; d < shape_.size(); ++d) {
      numel_ *= shape_[d];
      if (shape_[d] > 0) last += (shape_[d] - 1) * strides_[d];
    }
    span_ = numel_ > 0 ? last + 1 : 0;
    storage_.resize(static_cast<size_t>(2 * kGuardBytes + span_ * element_size()));
    for (size_t n = 0; n < storage_.size(); ++n) storage_[n] = sentinel(n);
    fill(0.0);
  }
  // Every dimension but the last padded by `pad` elements: outer strides are not compact, so the
  // gaps between rows and heads are checked like guards.
  static HostTensor padded(DType dtype, Shape shape, int64_t pad) {
    Shape strides(shape.size(), 1);
    for (int d = static_cast<int>(shape.size()) - 2; d >= 0; --d)
      strides[d] = strides[d + 1] * shape[d + 1] + pad * (static_cast<int64_t>(shape.size()) - 1 - d);
    return HostTensor(dtype, std::move(shape), std::move(strides));
  }
  static HostTensor int32(const std::vector<int32_t>& values, Shape shape = {}) {
    if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
    HostTensor t(DType::kInt32, shape);
    for (int64_t n = 0; n < t.numel(); ++n) t.set_int(n, values[static_cast<size_t>(n)]);
    return t;
  }
  static HostTensor float32(const std::vector<float>& values, Shape shape = {}) {
    if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
    HostTensor t(DType::kFloat32, shape);
    for (int64_t n = 0; n < t.numel(); ++n) t.set(n, values[static_cast<size_t>(n)]);
    return t;
  }
  static Shape contiguous_strides(const Shape& shape) {
    Shape strides(shape.size(), 1);
    for (int d = static_cast<int>(shape.size()) - 2; d >= 0; --d) strides[d] = strides[d + 1] * shape[d + 1];
    return strides;
  }

  bool defined() const { return !shape_.empty(); }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t numel() const { return numel_; }
  int64_t element_size() const { return dtype_size(dtype_); }
  void* data() { return storage_.data() + kGuardBytes; }
  const void* data() const { return storage_.data() + kGuardBytes; }

  // The view the API takes; an undefined tensor gives the "not given" TensorRef.
  TensorRef ref() const { return view_at(data()); }
  TensorRef view_at(const void* element0) const {
    TensorRef t;
    if (!defined()) return t;
    t.data = element0;
    t.dtype = dtype_;
    t.rank = static_cast<int32_t>(shape_.size());
    for (size_t d = 0; d < shape_.size(); ++d) {
      t.shape[d] = shape_[d];
      t.stride[d] = strides_[d];
    }
    return t;
  }

  // Storage offset (elements) of the element with row-major logical index `linear`.
  int64_t offset(int64_t linear) const {
    int64_t off = 0;
    for (int d = static_cast<int>(shape_.size()) - 1; d >= 0; --d) {
      off += (linear % shape_[d]) * strides_[d];
      linear /= shape_[d];
    }
    return off;
  }
  double get(int64_t linear) const {
    if (dtype_ == DType::kInt32) return get_int(linear);
    return core::load_as_float(data(), offset(linear), dtype_);
  }
  void set(int64_t linear, double value) {
    if (dtype_ == DType::kInt32) return set_int(linear, static_cast<int32_t>(value));
    core::store_from_float(data(), offset(linear), dtype_, static_cast<float>(value));
  }
  int32_t get_int(int64_t linear) const { return static_cast<const int32_t*>(data())[offset(linear)]; }
  void set_int(int64_t linear, int32_t value) { static_cast<int32_t*>(data())[offset(linear)] = value; }

  // All elements in row-major logical order.
  std::vector<double> values() const {
    std::vector<double> v(static_cast<size_t>(numel_));
    for (int64_t n = 0; n < numel_; ++n) v[static_cast<size_t>(n)] = get(n);
    return v;
  }
  std::vector<int32_t> int_values() const {
    std::vector<int32_t> v(static_cast<size_t>(numel_));
    for (int64_t n = 0; n < numel_; ++n) v[static_cast<size_t>(n)] = get_int(n);
    return v;
  }

  void fill(double value) {
    for (int64_t n = 0; n < numel_; ++n) set(n, value);
  }
  // Normal values, rounded to the dtype.
  void fill_normal(Rng& rng, double stddev = 1.0, double mean = 0.0) {
    for (int64_t n = 0; n < numel_; ++n) set(n, rng.normal(mean, stddev));
  }
  // NaN in every element (int32: a value no index can hold), so an element a kernel forgot to
  // write stands out.
  void poison() {
    for (int64_t n = 0; n < numel_; ++n) {
      if (dtype_ == DType::kInt32) set_int(n, std::numeric_limits<int32_t>::min());
      else set(n, std::numeric_limits<double>::quiet_NaN());
    }
  }
  int64_t count_nan() const {
    int64_t count = 0;
    for (int64_t n = 0; n < numel_; ++n) count += std::isnan(get(n)) ? 1 : 0;
    return count;
  }

  // "" when every byte that is not an element (guards, stride gaps) still holds its pattern.
  std::string check_guards(const std::string& name = "tensor") const {
    std::vector<bool> is_element(static_cast<size_t>(span_), false);
    for (int64_t n = 0; n < numel_; ++n) is_element[static_cast<size_t>(offset(n))] = true;
    const int64_t esize = element_size();
    for (size_t byte = 0; byte < storage_.size(); ++byte) {
      const int64_t rel = static_cast<int64_t>(byte) - kGuardBytes;
      const bool element_byte = rel >= 0 && rel < span_ * esize && is_element[static_cast<size_t>(rel / esize)];
      if (!element_byte && storage_[byte] != sentinel(byte)) {
        std::ostringstream msg;
        msg << name << ": byte " << rel << " relative to element 0 was overwritten ("
            << (rel < 0 ? "guard before" : rel >= span_ * esize ? "guard after" : "stride gap") << ")";
        return msg.str();
      }
    }
    return "";
  }

  // Raw storage with the guards: element 0 sits kGuardBytes in. For snapshots and device mirrors.
  const std::vector<uint8_t>& guarded_bytes() const { return storage_; }
  std::vector<uint8_t>& guarded_bytes() { return storage_; }

 private:
  static uint8_t sentinel(size_t byte) { return static_cast<uint8_t>(0xA5u ^ ((byte * 0x3Bu) >> 1)); }

  DType dtype_ = DType::kFloat32;
  Shape shape_, strides_;
  int64_t numel_ = 0;
  int64_t span_ = 0;  // elements between the first and one past the last element
  std::vector<uint8_t> storage_;
};

// ---------------------------------------------------------------------------------------------
// One attention call, described as plain numbers.

enum class Layout {
  kBatched,     // q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D]; seqused_k optional
  kVarlen,      // packed q/k/v with cu_seqlens_q/k from seqlens_q/k
  kPaged,       // k/v paged with block_table; q batched (seqlens_q empty, key lengths via seqused_k)
                // or varlen (seqlens_q given, key lengths via cu_seqlens_k)
  kDenseCache,  // attention_kvcache over k/v [B_cache, S_max, Hkv, D]
  kPagedCache,  // attention_kvcache over a paged cache
};

enum class Alibi { kNone, kPerHead, kPerBatch };

inline const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::kBatched: return "batched";
    case Layout::kVarlen: return "varlen";
    case Layout::kPaged: return "paged";
    case Layout::kDenseCache: return "dense-cache";
    case Layout::kPagedCache: return "paged-cache";
  }
  return "?";
}

struct AttnConfig {
  DType dtype = DType::kFloat32;
  Layout layout = Layout::kBatched;
  int64_t batch = 1, heads_q = 1, heads_kv = 1, head_dim_qk = 32, head_dim_v = 32;

  int64_t seqlen_q = 1, seqlen_k = 1;   // batched (and kv-cache q) lengths
  std::vector<int64_t> seqlens_q;       // varlen / paged-varlen: per sequence (0 allowed)
  std::vector<int64_t> seqlens_k;       // varlen: per sequence; paged: keys per sequence
  std::vector<int64_t> seqused_k;       // batched / varlen: optional per-sequence key counts
  int64_t block_size = 16;              // paged layouts
  int64_t spare_blocks = 3;             // blocks no sequence uses (paged), filled with garbage

  // attention_kvcache
  std::vector<int64_t> cache_seqlens;   // keys already cached, per sequence
  int64_t cache_capacity = 0;           // dense: S_max; paged: >= what the block table covers
  int64_t seqlen_new = 0;               // tokens appended (k_new / v_new), 0 = none
  int64_t rotary_dim = 0;               // 0 = no rotary
  bool rotary_interleaved = true;
  bool cache_batch_idx = false;         // dense: a shuffled cache row per batch entry
  int64_t extra_cache_rows = 0;         // dense: B_cache = batch + this
  std::vector<int64_t> cache_leftpad;   // optional, per sequence

  // Score modifiers
  float scale = kDefaultScale;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  Alibi alibi = Alibi::kNone;
  bool sinks = false;
  double sink_mean = 0.0, sink_stddev = 1.0;

  bool with_lse = true;
  bool padded_strides = false;  // non-compact outer strides on every float operand
  double q_stddev = 1.0;        // large logits: raise this (|s| ~ q_stddev * sqrt(D) * scale...)
  int num_splits = 0;
  uint64_t seed = 1;

  bool is_kvcache() const { return layout == Layout::kDenseCache || layout == Layout::kPagedCache; }
  bool is_paged() const { return layout == Layout::kPaged || layout == Layout::kPagedCache; }
  bool varlen_q() const { return layout == Layout::kVarlen || (layout == Layout::kPaged && !seqlens_q.empty()); }

  std::string describe() const {
    std::ostringstream os;
    auto list = [&os](const char* name, const std::vector<int64_t>& v) {
      if (v.empty()) return;
      os << ' ' << name << "=[";
      for (size_t n = 0; n < v.size(); ++n) os << (n ? "," : "") << v[n];
      os << ']';
    };
    os << layout_name(layout) << ' ' << dtype_name(dtype) << " B=" << batch << " Hq=" << heads_q << " Hkv=" << heads_kv
       << " Dqk=" << head_dim_qk << " Dv=" << head_dim_v;
    if (!varlen_q()) os << " Sq=" << seqlen_q;
    if (layout == Layout::kBatched) os << " Sk=" << seqlen_k;
    list("seqlens_q", seqlens_q);
    list("seqlens_k", seqlens_k);
    list("seqused_k", seqused_k);
    if (is_paged()) os << " block_size=" << block_size;
    if (is_kvcache()) {
      list("cache_seqlens", cache_seqlens);
      os << " capacity=" << cache_capacity << " Snew=" << seqlen_new;
      if (rotary_dim) os << " rotary_dim=" << rotary_dim << (rotary_interleaved ? " interleaved" : " neox");
      if (cache_batch_idx) os << " cache_batch_idx(+" << extra_cache_rows << ")";
      list("leftpad", cache_leftpad);
    }
    if (!std::isnan(scale)) os << " scale=" << scale;
    if (causal) os << " causal";
    if (window_left >= 0 || window_right >= 0) os << " window=(" << window_left << "," << window_right << ")";
    if (softcap > 0) os << " softcap=" << softcap;
    if (alibi != Alibi::kNone) os << (alibi == Alibi::kPerHead ? " alibi[Hq]" : " alibi[B,Hq]");
    if (sinks) os << " sinks(mean " << sink_mean << ")";
    if (!with_lse) os << " no-lse";
    if (padded_strides) os << " padded";
    if (q_stddev != 1.0) os << " q_stddev=" << q_stddev;
    if (num_splits) os << " splits=" << num_splits;
    os << " seed=" << seed;
    return os.str();
  }
};

// A config with the given dtype, head dims, head counts and lengths; everything else default.
inline AttnConfig shaped_config(DType dtype, int64_t dqk, int64_t dv, int64_t hq, int64_t hkv, int64_t sq, int64_t sk) {
  AttnConfig c;
  c.dtype = dtype;
  c.head_dim_qk = dqk;
  c.head_dim_v = dv;
  c.heads_q = hq;
  c.heads_kv = hkv;
  c.seqlen_q = sq;
  c.seqlen_k = sk;
  return c;
}

// Grid case n's head counts: GQA ratio 1, 2 or 8 (axis 3 of covering_pick), or MQA with 3 to
// max_mqa_heads query heads on one kv head.
inline void pick_heads(AttnConfig& c, Rng& rng, int n, int64_t max_mqa_heads) {
  const int ratio_kind = static_cast<int>(covering_pick(3, n, 4));
  if (ratio_kind == 3) {
    c.heads_kv = 1;
    c.heads_q = rng.uniform_int(3, max_mqa_heads);
  } else {
    const int64_t ratio = std::vector<int64_t>{1, 2, 8}[ratio_kind];
    c.heads_kv = ratio == 8 ? 1 : rng.uniform_int(1, 2);
    c.heads_q = c.heads_kv * ratio;
  }
}

// Grid case n's geometry, mask and modifiers, after its dtype, head dims and heads: Sq < Sk,
// Sq == Sk or Sq > Sk (axis 4) with lengths drawn from `sizes`, halved while Sq x Sk exceeds
// `pair_budget`; batched or varlen with empty sequences (axis 5); no mask, causal, a window, or
// causal + left window (axis 6); softcap, ALiBi and sinks in every combination (axis 7); padded
// strides in a quarter of the cases. Shared by the CPU and CUDA backward grids.
inline void pick_geometry_and_modifiers(AttnConfig& c, Rng& rng, int n, const std::vector<int64_t>& sizes,
                                        int64_t pair_budget) {
  auto pair = [&](int relation) {
    int64_t a = rng.pick(sizes), b = rng.pick(sizes);
    while (a * b > pair_budget) (a > b ? a : b) /= 2;
    a = std::max<int64_t>(a, 1);
    b = std::max<int64_t>(b, 1);
    if (relation == 1) return std::make_pair(a, a);
    if (a == b) b = a + 3;
    return relation == 0 ? std::make_pair(std::min(a, b), std::max(a, b)) : std::make_pair(std::max(a, b), std::min(a, b));
  };
  const int relation = static_cast<int>(covering_pick(4, n, 3));
  if (covering_pick(5, n, 3) == 2) {
    c.layout = Layout::kVarlen;
    c.batch = rng.uniform_int(2, 4);
    for (int64_t b = 0; b < c.batch; ++b) {
      auto [sq, sk] = pair(relation);
      c.seqlens_q.push_back(rng.coin(0.2) ? 0 : sq);
      c.seqlens_k.push_back(rng.coin(0.2) ? 0 : sk);
    }
  } else {
    c.batch = rng.uniform_int(1, 2);
    std::tie(c.seqlen_q, c.seqlen_k) = pair(relation);
  }
  const int mask_kind = static_cast<int>(covering_pick(6, n, 4));
  if (mask_kind == 1) c.causal = true;
  if (mask_kind == 2) {
    c.window_left = rng.uniform_int(0, 30);
    c.window_right = rng.coin() ? -1 : rng.uniform_int(0, 30);
  }
  if (mask_kind == 3) {
    c.causal = true;
    c.window_left = rng.uniform_int(0, 30);
  }
  const int modifiers = static_cast<int>(covering_pick(7, n, 8));
  if (modifiers & 1) c.softcap = static_cast<float>(rng.pick(std::vector<double>{2.0, 10.0, 50.0}));
  if (modifiers & 2) c.alibi = rng.coin() ? Alibi::kPerHead : Alibi::kPerBatch;
  if (modifiers & 4) {
    c.sinks = true;
    c.sink_mean = rng.uniform(-1.0, 2.0);
  }
  c.padded_strides = rng.coin(0.25);
}

inline std::vector<int32_t> prefix_sums(const std::vector<int64_t>& lengths) {
  std::vector<int32_t> cu(lengths.size() + 1, 0);
  for (size_t n = 0; n < lengths.size(); ++n) cu[n + 1] = cu[n] + static_cast<int32_t>(lengths[n]);
  return cu;
}

// Every tensor of one call, filled from an AttnConfig, plus the AttnParams viewing them.
class AttnCase {
 public:
  AttnConfig config;
  HostTensor q, k, v, out, lse;
  HostTensor cu_seqlens_q, cu_seqlens_k, seqused_k, block_table;
  HostTensor cache_seqlens, cache_batch_idx, cache_leftpad, k_new, v_new, rotary_cos, rotary_sin;
  HostTensor alibi_slopes, sinks;
  HostTensor dout, dq, dk, dv, dsinks;  // backward (batched / varlen only)

  explicit AttnCase(const AttnConfig& c) : config(c) {
    Rng rng(c.seed);
    const DType dt = c.dtype;
    auto operand = [&](Shape shape) {
      return c.padded_strides ? HostTensor::padded(dt, std::move(shape), 3) : HostTensor(dt, std::move(shape));
    };
    const int64_t B = c.batch, Hq = c.heads_q, Hkv = c.heads_kv, Dqk = c.head_dim_qk, Dv = c.head_dim_v;

    // Queries
    if (c.varlen_q()) {
      const auto cu = prefix_sums(c.seqlens_q);
      cu_seqlens_q = HostTensor::int32(cu);
      q = operand({cu.back(), Hq, Dqk});
      out = operand({cu.back(), Hq, Dv});
      if (c.with_lse) lse = c.padded_strides ? HostTensor::padded(DType::kFloat32, {Hq, cu.back()}, 2)
                                             : HostTensor(DType::kFloat32, {Hq, cu.back()});
    } else {
      q = operand({B, c.seqlen_q, Hq, Dqk});
      out = operand({B, c.seqlen_q, Hq, Dv});
      if (c.with_lse) lse = c.padded_strides ? HostTensor::padded(DType::kFloat32, {B, Hq, c.seqlen_q}, 2)
                                             : HostTensor(DType::kFloat32, {B, Hq, c.seqlen_q});
    }
    q.fill_normal(rng, c.q_stddev);

    // Keys and values
    switch (c.layout) {
      case Layout::kBatched:
        k = operand({B, c.seqlen_k, Hkv, Dqk});
        v = operand({B, c.seqlen_k, Hkv, Dv});
        if (!c.seqused_k.empty()) seqused_k = HostTensor::int32(to_int32(c.seqused_k));
        break;
      case Layout::kVarlen: {
        const auto cu = prefix_sums(c.seqlens_k);
        cu_seqlens_k = HostTensor::int32(cu);
        k = operand({cu.back(), Hkv, Dqk});
        v = operand({cu.back(), Hkv, Dv});
        if (!c.seqused_k.empty()) seqused_k = HostTensor::int32(to_int32(c.seqused_k));
        break;
      }
      case Layout::kPaged:
        build_paged_cache(rng, c.seqlens_k, *std::max_element(c.seqlens_k.begin(), c.seqlens_k.end()));
        if (c.varlen_q()) cu_seqlens_k = HostTensor::int32(prefix_sums(c.seqlens_k));
        else seqused_k = HostTensor::int32(to_int32(c.seqlens_k));
        break;
      case Layout::kDenseCache: {
        const int64_t rows = B + (c.cache_batch_idx ? c.extra_cache_rows : 0);
        k = operand({rows, c.cache_capacity, Hkv, Dqk});
        v = operand({rows, c.cache_capacity, Hkv, Dv});
        if (c.cache_batch_idx) {
          std::vector<int32_t> idx(static_cast<size_t>(rows));
          std::iota(idx.begin(), idx.end(), 0);
          std::shuffle(idx.begin(), idx.end(), rng.engine());
          idx.resize(static_cast<size_t>(B));
          cache_batch_idx = HostTensor::int32(idx);
        }
        break;
      }
      case Layout::kPagedCache: {
        std::vector<int64_t> used(static_cast<size_t>(B));
        for (int64_t b = 0; b < B; ++b) used[b] = c.cache_seqlens[b] + c.seqlen_new;
        build_paged_cache(rng, used, c.cache_capacity);
        break;
      }
    }
    k.fill_normal(rng);
    v.fill_normal(rng);

    if (c.is_kvcache()) {
      cache_seqlens = HostTensor::int32(to_int32(c.cache_seqlens));
      if (!c.cache_leftpad.empty()) cache_leftpad = HostTensor::int32(to_int32(c.cache_leftpad));
      if (c.seqlen_new > 0) {
        k_new = operand({B, c.seqlen_new, Hkv, Dqk});
        v_new = operand({B, c.seqlen_new, Hkv, Dv});
        k_new.fill_normal(rng);
        v_new.fill_normal(rng);
      }
      if (c.rotary_dim > 0) {
        const int64_t positions = c.cache_capacity + c.seqlen_q + 1;
        rotary_cos = HostTensor(dt, {positions, c.rotary_dim / 2});
        rotary_sin = HostTensor(dt, {positions, c.rotary_dim / 2});
        for (int64_t pos = 0; pos < positions; ++pos) {
          for (int64_t t = 0; t < c.rotary_dim / 2; ++t) {
            const double angle = pos * std::pow(10000.0, -2.0 * t / c.rotary_dim);
            rotary_cos.set(pos * (c.rotary_dim / 2) + t, std::cos(angle));
            rotary_sin.set(pos * (c.rotary_dim / 2) + t, std::sin(angle));
          }
        }
      }
    }

    if (c.alibi == Alibi::kPerHead) {
      alibi_slopes = HostTensor(DType::kFloat32, {Hq});
      alibi_slopes.fill_normal(rng, 0.1, 0.3);
    } else if (c.alibi == Alibi::kPerBatch) {
      alibi_slopes = HostTensor(DType::kFloat32, {B, Hq});
      alibi_slopes.fill_normal(rng, 0.1, 0.3);
    }
    if (c.sinks) {
      sinks = HostTensor(DType::kFloat32, {Hq});
      sinks.fill_normal(rng, c.sink_stddev, c.sink_mean);
    }

    if (!c.is_kvcache() && !c.is_paged()) {
      dout = operand(out.shape());
      dout.fill_normal(rng);
      dq = operand(q.shape());
      dk = operand(k.shape());
      dv = operand(v.shape());
      if (c.sinks) dsinks = HostTensor(DType::kFloat32, {Hq});
    }
  }

  AttnParams params() const {
    AttnParams p;
    p.q = q.ref();
    p.k = k.ref();
    p.v = v.ref();
    p.out = out.ref();
    p.lse = lse.ref();
    p.cu_seqlens_q = cu_seqlens_q.ref();
    p.cu_seqlens_k = cu_seqlens_k.ref();
    p.seqused_k = seqused_k.ref();
    p.block_table = block_table.ref();
    p.cache_seqlens = cache_seqlens.ref();
    p.cache_batch_idx = cache_batch_idx.ref();
    p.cache_leftpad = cache_leftpad.ref();
    p.k_new = k_new.ref();
    p.v_new = v_new.ref();
    p.rotary_cos = rotary_cos.ref();
    p.rotary_sin = rotary_sin.ref();
    p.rotary_interleaved = config.rotary_interleaved;
    p.scale = config.scale;
    p.causal = config.causal;
    p.window_left = config.window_left;
    p.window_right = config.window_right;
    p.softcap = config.softcap;
    p.alibi_slopes = alibi_slopes.ref();
    p.sinks = sinks.ref();
    p.num_splits = config.num_splits;
    return p;
  }

  AttnBwdParams bwd_params(bool deterministic = false) const {
    AttnBwdParams p;
    p.fwd = params();
    p.dout = dout.ref();
    p.dq = dq.ref();
    p.dk = dk.ref();
    p.dv = dv.ref();
    p.dsinks = dsinks.ref();
    p.deterministic = deterministic;
    return p;
  }

  // Every tensor, named, for guard checks and byte snapshots.
  std::vector<std::pair<std::string, HostTensor*>> tensors() {
    std::vector<std::pair<std::string, HostTensor*>> all = {
        {"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}, {"lse", &lse}, {"cu_seqlens_q", &cu_seqlens_q},
        {"cu_seqlens_k", &cu_seqlens_k}, {"seqused_k", &seqused_k}, {"block_table", &block_table},
        {"cache_seqlens", &cache_seqlens}, {"cache_batch_idx", &cache_batch_idx}, {"cache_leftpad", &cache_leftpad},
        {"k_new", &k_new}, {"v_new", &v_new}, {"rotary_cos", &rotary_cos}, {"rotary_sin", &rotary_sin},
        {"alibi_slopes", &alibi_slopes}, {"sinks", &sinks}, {"dout", &dout}, {"dq", &dq}, {"dk", &dk},
        {"dv", &dv}, {"dsinks", &dsinks}};
    all.erase(std::remove_if(all.begin(), all.end(), [](const auto& t) { return !t.second->defined(); }), all.end());
    return all;
  }

 private:
  static std::vector<int32_t> to_int32(const std::vector<int64_t>& v) { return std::vector<int32_t>(v.begin(), v.end()); }

  // A paged cache whose sequences hold `used[b]` keys, with a block table covering `capacity`
  // keys per sequence. Blocks are handed out shuffled so logical and physical order differ, and
  // table entries past a sequence's last used block still name real (foreign) blocks.
  void build_paged_cache(Rng& rng, const std::vector<int64_t>& used, int64_t capacity) {
    const AttnConfig& c = config;
    const int64_t bs = c.block_size;
    const int64_t max_blocks = std::max<int64_t>((capacity + bs - 1) / bs, 1);
    int64_t needed = 0;
    for (const int64_t n : used) needed += (n + bs - 1) / bs;
    const int64_t num_blocks = needed + c.spare_blocks + 1;
    std::vector<int32_t> order(static_cast<size_t>(num_blocks));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng.engine());
    std::vector<int32_t> table(static_cast<size_t>(c.batch * max_blocks));
    size_t next = 0;
    for (int64_t b = 0; b < c.batch; ++b) {
      const int64_t blocks = (used[b] + bs - 1) / bs;
      for (int64_t s = 0; s < max_blocks; ++s)
        table[b * max_blocks + s] = s < blocks ? order[next++] : static_cast<int32_t>(rng.uniform_int(0, num_blocks - 1));
    }
    block_table = HostTensor::int32(table, {c.batch, max_blocks});
    auto operand = [&](Shape shape) {
      return c.padded_strides ? HostTensor::padded(c.dtype, std::move(shape), 3) : HostTensor(c.dtype, std::move(shape));
    };
    k = operand({num_blocks, bs, c.heads_kv, c.head_dim_qk});
    v = operand({num_blocks, bs, c.heads_kv, c.head_dim_v});
  }
};

// ---------------------------------------------------------------------------------------------
// Running a backend and checking it

inline ExecContext cpu_context(int num_threads = 0) {
  ExecContext ctx;
  ctx.backend = Backend::kCpu;
  ctx.num_threads = num_threads;
  return ctx;
}

// Validates params into the Problem the reference reads (host-resident tensors).
inline core::Problem problem_for(const AttnParams& params, bool kvcache) {
  core::ValidateOptions options;
  return kvcache ? core::prepare_kvcache(params, options) : core::prepare_forward(params, options);
}

// The lse tensor in the reference's dense order lse[r * Hq + h].
inline std::vector<double> dense_lse(const AttnCase& c) {
  const HostTensor& l = c.lse;
  std::vector<double> dense(static_cast<size_t>(l.numel()));
  const int64_t Hq = c.config.heads_q;
  if (l.shape().size() == 3) {  // [B, Hq, Sq]
    const int64_t Sq = l.shape()[2];
    for (int64_t b = 0; b < l.shape()[0]; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Sq; ++i) dense[((b * Sq + i) * Hq) + h] = l.get((b * Hq + h) * Sq + i);
  } else {  // [Hq, Tq]
    const int64_t Tq = l.shape()[1];
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t r = 0; r < Tq; ++r) dense[r * Hq + h] = l.get(h * Tq + r);
  }
  return dense;
}

inline std::string prefixed(const std::string& what, const std::string& failure) {
  return failure.empty() ? failure : what + ": " + failure;
}

inline std::string check_all_guards(AttnCase& c) {
  for (auto& [name, tensor] : c.tensors()) {
    const std::string failure = tensor->check_guards(name);
    if (!failure.empty()) return failure;
  }
  return "";
}

// Byte snapshots of a set of tensors, to prove they were left alone.
class Snapshot {
 public:
  explicit Snapshot(std::vector<std::pair<std::string, HostTensor*>> tensors) : tensors_(std::move(tensors)) {
    for (auto& named : tensors_) bytes_.push_back(named.second->guarded_bytes());
  }
  // "" when every tensor is byte-identical to the snapshot, else the first that changed.
  std::string changed() const {
    for (size_t n = 0; n < tensors_.size(); ++n)
      if (tensors_[n].second->guarded_bytes() != bytes_[n]) return tensors_[n].first + " was modified";
    return "";
  }

 private:
  std::vector<std::pair<std::string, HostTensor*>> tensors_;
  std::vector<std::vector<uint8_t>> bytes_;
};

inline std::string run_and_catch(const std::function<void()>& call) {
  try {
    call();
  } catch (const std::exception& e) {
    return std::string("threw: ") + e.what();
  }
  return "";
}

// The checks every forward-like call ends with: out and lse against the reference under the
// SPEC §6 rule (factor 2), every guard intact, and no input byte changed.
inline std::string check_outputs(AttnCase& c, const reference::ForwardResult& ref64,
                                 const reference::ForwardResult& lowp, const Snapshot& before) {
  std::string failure = prefixed("out", reference::check_close(c.out.values(), ref64.out, lowp.out, 2.0));
  if (failure.empty() && c.lse.defined())
    failure = prefixed("lse", reference::check_close(dense_lse(c), ref64.lse, lowp.lse, 2.0));
  if (failure.empty()) failure = check_all_guards(c);
  if (failure.empty()) failure = before.changed();
  return failure;
}

// Poisons out/lse, runs `run` (which returns "" or a failure), and checks out and lse against
// the reference built with `options` (the GPU tests pass unchecked index values, so bad index
// tensors compare against the clamped geometry), that every element was written and that no
// guard or input byte changed.
inline std::string check_forward_run(AttnCase& c, const core::ValidateOptions& options,
                                     const std::function<std::string()>& run) {
  c.out.poison();
  if (c.lse.defined()) c.lse.poison();
  std::vector<std::pair<std::string, HostTensor*>> inputs;
  for (auto& named : c.tensors())
    if (named.first != "out" && named.first != "lse") inputs.push_back(named);
  const Snapshot before(inputs);
  std::string failure = run();
  if (!failure.empty()) return failure;

  const core::Problem p = core::prepare_forward(c.params(), options);
  const auto ref64 = reference::forward(p, reference::Precision::kFloat64);
  const auto lowp = reference::forward(p, reference::Precision::kInputDType);
  return check_outputs(c, ref64, lowp, before);
}

// check_forward_run for attention_forward on host tensors.
inline std::string check_forward(AttnCase& c, const ExecContext& ctx) {
  const AttnParams params = c.params();
  return check_forward_run(c, core::ValidateOptions{}, [&] { return run_and_catch([&] { attention_forward(params, ctx); }); });
}

// Element-wise comparison of a cache the backend appended to with the reference's copy:
// untouched elements must keep their bytes; rotated keys may differ by the rounding of the dtype.
inline std::string check_cache(const std::string& name, const HostTensor& got, const HostTensor& original,
                               const HostTensor& expected) {
  const double eps = got.dtype() == DType::kFloat16 ? 1.0 / 1024 : got.dtype() == DType::kBFloat16 ? 1.0 / 128 : 1.0 / (1 << 23);
  const int64_t esize = got.element_size();
  const auto* got_bytes = static_cast<const uint8_t*>(got.data());
  const auto* original_bytes = static_cast<const uint8_t*>(original.data());
  const auto* expected_bytes = static_cast<const uint8_t*>(expected.data());
  for (int64_t n = 0; n < got.numel(); ++n) {
    const int64_t off = got.offset(n) * esize;
    const bool appended = std::memcmp(expected_bytes + off, original_bytes + off, esize) != 0;
    const bool same_as_expected = std::memcmp(got_bytes + off, expected_bytes + off, esize) == 0;
    if (same_as_expected) continue;
    const double g = got.get(n), e = expected.get(n);
    if (!appended || !(std::fabs(g - e) <= eps * std::fabs(e) + 1e-5)) {
      std::ostringstream msg;
      msg << name << "[" << n << "] = " << g << ", expected " << e << (appended ? " (appended slot)" : " (must be untouched)");
      return msg.str();
    }
  }
  return got.check_guards(name);
}

// attention_kvcache: the reference appends into its own copies of the caches; the backend's
// caches must match them (only appended slots change) and out/lse must pass the SPEC §6 rule.
// `run` makes the call (returning "" or a failure); the reference's Problem is built with
// `options`, as in check_forward_run.
inline std::string check_kvcache_run(AttnCase& c, const core::ValidateOptions& options,
                                     const std::function<std::string()>& run) {
  c.out.poison();
  if (c.lse.defined()) c.lse.poison();
  const HostTensor k_original = c.k, v_original = c.v;
  HostTensor k64 = c.k, v64 = c.v, k_lowp = c.k, v_lowp = c.v;
  AttnParams params64 = c.params(), params_lowp = c.params();
  params64.k = k64.ref();
  params64.v = v64.ref();
  params_lowp.k = k_lowp.ref();
  params_lowp.v = v_lowp.ref();
  const core::Problem p64 = core::prepare_kvcache(params64, options);
  const core::Problem p_lowp = core::prepare_kvcache(params_lowp, options);

  std::vector<std::pair<std::string, HostTensor*>> inputs;
  for (auto& named : c.tensors())
    if (named.first != "out" && named.first != "lse" && named.first != "k" && named.first != "v") inputs.push_back(named);
  const Snapshot before(inputs);
  std::string failure = run();
  if (!failure.empty()) return failure;

  const auto ref64 = reference::kvcache(p64, reference::Precision::kFloat64);
  const auto lowp = reference::kvcache(p_lowp, reference::Precision::kInputDType);
  failure = check_cache("k_cache", c.k, k_original, k64);
  if (failure.empty()) failure = check_cache("v_cache", c.v, v_original, v64);
  if (failure.empty()) failure = check_outputs(c, ref64, lowp, before);
  return failure;
}

// check_kvcache_run for attention_kvcache on host tensors.
inline std::string check_kvcache(AttnCase& c, const ExecContext& ctx) {
  const AttnParams params = c.params();
  return check_kvcache_run(c, core::ValidateOptions{}, [&] { return run_and_catch([&] { attention_kvcache(params, ctx); }); });
}

// One unit in the last place of `dtype` at |x| (normal range).
inline double ulp_of(DType dtype, double x) {
  const int mantissa_bits = dtype == DType::kFloat16 ? 10 : dtype == DType::kBFloat16 ? 7 : 23;
  const double magnitude = std::max(std::fabs(x), static_cast<double>(std::numeric_limits<float>::min()));
  return std::ldexp(1.0, std::ilogb(magnitude) - mantissa_bits);
}

// The SPEC §6 rule for gradients stored in fp16 / bf16, with one addition: an element within one
// ulp of its dtype from ref64 passes. The rule's tolerance comes from ref_lowp's largest error,
// which over a small gradient (head dim 1, a few keys) is a handful of samples and can fall far
// below one rounding step of the dtype; a backend that rounds its fp32 result to the neighbour
// of the correctly rounded value would then fail by chance. fp32 gradients get the plain rule.
inline std::string check_gradient(const std::vector<double>& got, const std::vector<double>& ref64,
                                  const std::vector<double>& lowp, DType dtype) {
  const std::string failure = reference::check_close(got, ref64, lowp, 3.0);
  if (failure.empty() || dtype == DType::kFloat32 || got.size() != ref64.size() || lowp.size() != ref64.size())
    return failure;
  double lowp_error = 0.0;
  for (size_t n = 0; n < ref64.size(); ++n)
    if (std::isfinite(ref64[n]) && std::isfinite(lowp[n])) lowp_error = std::max(lowp_error, std::fabs(lowp[n] - ref64[n]));
  const double tolerance = 3.0 * lowp_error + 1e-6;
  for (size_t n = 0; n < ref64.size(); ++n) {
    if (!std::isfinite(ref64[n]) || !std::isfinite(got[n])) {
      const bool matched = std::isnan(ref64[n]) ? std::isnan(got[n]) : got[n] == ref64[n];
      if (!matched) return failure;
      continue;
    }
    const double error = std::fabs(got[n] - ref64[n]);
    if (error > tolerance && error > ulp_of(dtype, ref64[n])) return failure;
  }
  return "";
}

// dsinks: the SPEC §6 rule, and where it fails, eight units of fp32 rounding of the sum of the
// magnitudes of its products, 8 u sum|P_sink_i dout_id out_id| with u = 2^-24. dsinks has one
// element per head, so ref_lowp's largest error is a sample of one or a few and no estimate of
// the rounding level of a reduction over every row of the head; this states that level directly
// (two orders of magnitude below Higham's probabilistic bound 3 sqrt(terms) u sum|products|,
// and above what fp32 backends measure).
inline std::string check_sink_gradient(const std::vector<double>& got, const reference::BackwardResult& ref64,
                                       const reference::BackwardResult& lowp) {
  const std::string failure = reference::check_close(got, ref64.dsinks, lowp.dsinks, 3.0);
  if (failure.empty() || got.size() != ref64.dsinks.size()) return failure;
  const double unit = std::ldexp(1.0, -24);
  for (size_t h = 0; h < got.size(); ++h) {
    const double bound = 8.0 * unit * ref64.dsinks_magnitude[h];
    if (!(std::fabs(got[h] - ref64.dsinks[h]) <= std::max(bound, 1e-6))) return failure;
  }
  return "";
}

// Runs the forward (for out and lse) through `run_forward` and then the backward through
// `run_backward` with poisoned gradients, and checks dq, dk, dv (and dsinks) against the
// reference of c's host tensors (validated with `options`) with the backward factor 3. Each run
// returns "" or what failed; the GPU tests pass runs on device mirrors (tests/cuda).
inline std::string check_backward_run(AttnCase& c, const core::ValidateOptions& options,
                                      const std::function<std::string()>& run_forward,
                                      const std::function<std::string()>& run_backward) {
  if (!c.lse.defined()) return "check_backward needs a case with lse";
  std::string failure = run_forward();
  if (!failure.empty()) return prefixed("forward", failure);
  for (HostTensor* g : {&c.dq, &c.dk, &c.dv, &c.dsinks})
    if (g->defined()) g->poison();
  std::vector<std::pair<std::string, HostTensor*>> inputs;
  for (auto& named : c.tensors())
    if (named.first.size() < 2 || named.first[0] != 'd' || named.first == "dout") inputs.push_back(named);
  const Snapshot before(inputs);
  failure = run_backward();
  if (!failure.empty()) return failure;

  const core::BwdProblem p = core::prepare_backward(c.bwd_params(), options);
  const auto ref64 = reference::backward(p, reference::Precision::kFloat64);
  const auto lowp = reference::backward(p, reference::Precision::kInputDType);
  const DType dtype = c.config.dtype;
  failure = prefixed("dq", check_gradient(c.dq.values(), ref64.dq, lowp.dq, dtype));
  if (failure.empty()) failure = prefixed("dk", check_gradient(c.dk.values(), ref64.dk, lowp.dk, dtype));
  if (failure.empty()) failure = prefixed("dv", check_gradient(c.dv.values(), ref64.dv, lowp.dv, dtype));
  if (failure.empty() && c.dsinks.defined())
    failure = prefixed("dsinks", check_sink_gradient(c.dsinks.values(), ref64, lowp));
  if (failure.empty()) failure = check_all_guards(c);
  if (failure.empty()) failure = before.changed();
  return failure;
}

// check_backward_run for attention_forward and attention_backward on host tensors.
inline std::string check_backward(AttnCase& c, const ExecContext& ctx, bool deterministic = false) {
  const AttnParams fwd = c.params();
  const AttnBwdParams bwd = c.bwd_params(deterministic);
  return check_backward_run(
      c, core::ValidateOptions{}, [&] { return run_and_catch([&] { attention_forward(fwd, ctx); }); },
      [&] { return run_and_catch([&] { attention_backward(bwd, ctx); }); });
}

// ---------------------------------------------------------------------------------------------
// paged_kv_write

struct KvWriteConfig {
  DType dtype = DType::kFloat16;
  bool varlen = false;  // k_new [T, Hkv, D] with cu_seqlens_new, else [B, Snew, Hkv, D]
  int64_t batch = 2, heads_kv = 2, head_dim_qk = 16, head_dim_v = 16, block_size = 16;
  std::vector<int64_t> cache_seqlens;  // per sequence
  std::vector<int64_t> new_tokens;     // varlen: per sequence; batched: all equal to seqlen_new
  int64_t seqlen_new = 1;
  int64_t max_blocks_per_seq = 4;
  bool padded_strides = false;
  uint64_t seed = 1;

  std::string describe() const {
    std::ostringstream os;
    os << "paged_kv_write " << dtype_name(dtype) << (varlen ? " varlen" : " batched") << " B=" << batch
       << " Hkv=" << heads_kv << " Dqk=" << head_dim_qk << " Dv=" << head_dim_v << " block_size=" << block_size
       << " max_blocks=" << max_blocks_per_seq << " cache_seqlens=[";
    for (size_t n = 0; n < cache_seqlens.size(); ++n) os << (n ? "," : "") << cache_seqlens[n];
    os << "]";
    if (varlen) {
      os << " new=[";
      for (size_t n = 0; n < new_tokens.size(); ++n) os << (n ? "," : "") << new_tokens[n];
      os << "]";
    } else {
      os << " Snew=" << seqlen_new;
    }
    if (padded_strides) os << " padded";
    os << " seed=" << seed;
    return os.str();
  }
};

class KvWriteCase {
 public:
  KvWriteConfig config;
  HostTensor k_cache, v_cache, k_new, v_new, block_table, cache_seqlens, cu_seqlens_new;

  explicit KvWriteCase(const KvWriteConfig& c) : config(c) {
    Rng rng(c.seed);
    auto operand = [&](Shape shape) {
      return c.padded_strides ? HostTensor::padded(c.dtype, std::move(shape), 3) : HostTensor(c.dtype, std::move(shape));
    };
    const int64_t num_blocks = c.batch * c.max_blocks_per_seq + 2;
    std::vector<int32_t> order(static_cast<size_t>(num_blocks));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng.engine());
    order.resize(static_cast<size_t>(c.batch * c.max_blocks_per_seq));
    block_table = HostTensor::int32(order, {c.batch, c.max_blocks_per_seq});
    cache_seqlens = HostTensor::int32(std::vector<int32_t>(c.cache_seqlens.begin(), c.cache_seqlens.end()));
    k_cache = operand({num_blocks, c.block_size, c.heads_kv, c.head_dim_qk});
    v_cache = operand({num_blocks, c.block_size, c.heads_kv, c.head_dim_v});
    k_cache.fill_normal(rng);
    v_cache.fill_normal(rng);
    if (c.varlen) {
      const auto cu = prefix_sums(c.new_tokens);
      cu_seqlens_new = HostTensor::int32(cu);
      k_new = operand({cu.back(), c.heads_kv, c.head_dim_qk});
      v_new = operand({cu.back(), c.heads_kv, c.head_dim_v});
    } else {
      k_new = operand({c.batch, c.seqlen_new, c.heads_kv, c.head_dim_qk});
      v_new = operand({c.batch, c.seqlen_new, c.heads_kv, c.head_dim_v});
    }
    k_new.fill_normal(rng);
    v_new.fill_normal(rng);
  }

  KvWriteParams params() const {
    KvWriteParams p;
    p.k_cache = k_cache.ref();
    p.v_cache = v_cache.ref();
    p.k_new = k_new.ref();
    p.v_new = v_new.ref();
    p.block_table = block_table.ref();
    p.cache_seqlens = cache_seqlens.ref();
    p.cu_seqlens_new = cu_seqlens_new.ref();
    return p;
  }

  std::vector<std::pair<std::string, HostTensor*>> tensors() {
    std::vector<std::pair<std::string, HostTensor*>> all = {
        {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"k_new", &k_new}, {"v_new", &v_new},
        {"block_table", &block_table}, {"cache_seqlens", &cache_seqlens}, {"cu_seqlens_new", &cu_seqlens_new}};
    all.erase(std::remove_if(all.begin(), all.end(), [](const auto& t) { return !t.second->defined(); }), all.end());
    return all;
  }
};

// The backend's caches must equal, byte for byte and guards included, the reference's copies.
inline std::string check_kv_write(KvWriteCase& c, const ExecContext& ctx) {
  HostTensor k_expected = c.k_cache, v_expected = c.v_cache;
  KvWriteParams expected_params = c.params();
  expected_params.k_cache = k_expected.ref();
  expected_params.v_cache = v_expected.ref();
  const core::KvWriteProblem p = core::prepare_kv_write(expected_params, core::ValidateOptions{});
  reference::paged_kv_write(p);

  std::vector<std::pair<std::string, HostTensor*>> inputs;
  for (auto& named : c.tensors())
    if (named.first != "k_cache" && named.first != "v_cache") inputs.push_back(named);
  const Snapshot before(inputs);
  const KvWriteParams params = c.params();
  std::string failure = run_and_catch([&] { paged_kv_write(params, ctx); });
  if (!failure.empty()) return failure;
  if (c.k_cache.guarded_bytes() != k_expected.guarded_bytes()) return "k_cache differs from the expected copy";
  if (c.v_cache.guarded_bytes() != v_expected.guarded_bytes()) return "v_cache differs from the expected copy";
  return before.changed();
}

}  // namespace flashsdpa::test
