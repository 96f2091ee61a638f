// The CPU backward (cpu::backward) against the float64 reference with SPEC §6's rule (factor 3),
// checked independently by finite differences, and for run-to-run / thread-count determinism.
//
// Problems are described with the public TensorRef/AttnBwdParams and turned into the backend's
// BwdProblem by core::prepare_backward, so the tests exercise validated problems. Every tensor is
// strided with padding between heads, rows and sequences: input padding holds NaN (a read of it
// shows up as NaN in the gradients), output padding and guard regions must stay untouched, and
// outputs start as NaN so an element the backend does not write is caught.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mask.h"
#include "core/problem.h"
#include "core/validate.h"
#include "cpu/cpu_backend.h"
#include "flashsdpa/flashsdpa.h"
#include "reference/reference.h"

namespace flashsdpa {
namespace {

constexpr double kBackwardFactor = 3.0;
constexpr int64_t kGuard = 16;  // elements before and after every buffer
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

int64_t element_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// A [B, S, H, D] (rank 4) or [T, H, D] (rank 3) tensor with padded strides and guard regions.
class PaddedTensor {
 public:
  PaddedTensor() = default;
  PaddedTensor(DType dtype, std::vector<int64_t> shape, float fill) : dtype_(dtype), shape_(std::move(shape)) {
    const int rank = static_cast<int>(shape_.size());
    strides_.assign(shape_.size(), 1);
    // Pads of 3 after each head, 5 after each row, 7 after each sequence.
    const int64_t pads[] = {7, 5, 3, 0};
    const int64_t* pad = pads + (4 - rank);
    for (int d = rank - 2; d >= 0; --d) strides_[d] = shape_[d + 1] * strides_[d + 1] + pad[d + 1];
    span_ = shape_[0] * strides_[0];
    bytes_.assign(static_cast<size_t>((span_ + 2 * kGuard) * element_bytes(dtype_)), 0);
    for (int64_t n = 0; n < span_ + 2 * kGuard; ++n) core::store_from_float(bytes_.data(), n, dtype_, fill);
  }

  TensorRef ref() const {
    TensorRef t;
    t.data = bytes_.data() + kGuard * element_bytes(dtype_);
    t.dtype = dtype_;
    t.rank = static_cast<int32_t>(shape_.size());
    for (size_t d = 0; d < shape_.size(); ++d) {
      t.shape[d] = shape_[d];
      t.stride[d] = strides_[d];
    }
    return t;
  }

  // Logical elements in row-major order of the shape.
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape_) n *= s;
    return n;
  }
  int64_t offset_of(int64_t flat) const {
    int64_t off = 0;
    for (int d = static_cast<int>(shape_.size()) - 1; d >= 0; --d) {
      off += (flat % shape_[d]) * strides_[d];
      flat /= shape_[d];
    }
    return off;
  }
  float get(int64_t flat) const { return core::load_as_float(bytes_.data(), kGuard + offset_of(flat), dtype_); }
  void set(int64_t flat, float value) {
    core::store_from_float(bytes_.data(), kGuard + offset_of(flat), dtype_, value);
  }
  std::vector<double> values() const {
    std::vector<double> v(static_cast<size_t>(numel()));
    for (int64_t n = 0; n < numel(); ++n) v[n] = get(n);
    return v;
  }
  const std::vector<unsigned char>& bytes() const { return bytes_; }

  // True when every byte outside the logical elements still holds `fill`.
  bool padding_holds(float fill) const {
    std::vector<bool> logical(static_cast<size_t>(span_ + 2 * kGuard), false);
    for (int64_t n = 0; n < numel(); ++n) logical[kGuard + offset_of(n)] = true;
    std::vector<unsigned char> expected(static_cast<size_t>(element_bytes(dtype_)));
    core::store_from_float(expected.data(), 0, dtype_, fill);
    for (int64_t n = 0; n < span_ + 2 * kGuard; ++n) {
      if (logical[n]) continue;
      if (std::memcmp(bytes_.data() + n * element_bytes(dtype_), expected.data(), expected.size()) != 0) return false;
    }
    return true;
  }

 private:
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_, strides_;
  int64_t span_ = 0;
  std::vector<unsigned char> bytes_;
};

struct Case {
  std::string name;
  DType dtype = DType::kFloat32;
  int64_t batch = 1, seqlen_q = 1, seqlen_k = 1;  // batched lengths
  std::vector<int32_t> q_lens, k_lens;            // varlen when non-empty
  std::vector<int32_t> used_k;                    // seqused_k when non-empty
  int64_t heads_q = 1, heads_kv = 1, head_dim_qk = 16, head_dim_v = 16;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
  float softcap = 0.0f;
  bool alibi = false;
  bool sinks = false;
  float q_amplitude = 1.0f;  // scales q: large values give extreme logits
  uint32_t seed = 1;
};

std::vector<int32_t> cumulative(const std::vector<int32_t>& lens) {
  std::vector<int32_t> cu(1, 0);
  for (int32_t n : lens) cu.push_back(cu.back() + n);
  return cu;
}

// Inputs, the forward's out/lse (from the float64 reference, stored as a forward would) and the
// gradient outputs of one case.
class BackwardSetup {
 public:
  explicit BackwardSetup(const Case& c) : c_(c) {
    std::mt19937 rng(c.seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    const bool varlen = !c.q_lens.empty();
    const int64_t batch = varlen ? static_cast<int64_t>(c.q_lens.size()) : c.batch;
    auto shape = [&](int64_t rows_or_seqlen, int64_t total, int64_t heads, int64_t dim) {
      return varlen ? std::vector<int64_t>{total, heads, dim} : std::vector<int64_t>{batch, rows_or_seqlen, heads, dim};
    };
    if (varlen) {
      cu_q_ = cumulative(c.q_lens);
      cu_k_ = cumulative(c.k_lens);
    }
    const int64_t tq = varlen ? cu_q_.back() : 0, tk = varlen ? cu_k_.back() : 0;
    q_ = PaddedTensor(c.dtype, shape(c.seqlen_q, tq, c.heads_q, c.head_dim_qk), kNaN);
    k_ = PaddedTensor(c.dtype, shape(c.seqlen_k, tk, c.heads_kv, c.head_dim_qk), kNaN);
    v_ = PaddedTensor(c.dtype, shape(c.seqlen_k, tk, c.heads_kv, c.head_dim_v), kNaN);
    out_ = PaddedTensor(c.dtype, shape(c.seqlen_q, tq, c.heads_q, c.head_dim_v), kNaN);
    dout_ = PaddedTensor(c.dtype, shape(c.seqlen_q, tq, c.heads_q, c.head_dim_v), kNaN);
    dq_ = PaddedTensor(c.dtype, shape(c.seqlen_q, tq, c.heads_q, c.head_dim_qk), kNaN);
    dk_ = PaddedTensor(c.dtype, shape(c.seqlen_k, tk, c.heads_kv, c.head_dim_qk), kNaN);
    dv_ = PaddedTensor(c.dtype, shape(c.seqlen_k, tk, c.heads_kv, c.head_dim_v), kNaN);
    for (int64_t n = 0; n < q_.numel(); ++n) q_.set(n, c.q_amplitude * uniform(rng));
    for (int64_t n = 0; n < k_.numel(); ++n) k_.set(n, uniform(rng));
    for (int64_t n = 0; n < v_.numel(); ++n) v_.set(n, uniform(rng));
    for (int64_t n = 0; n < dout_.numel(); ++n) dout_.set(n, uniform(rng));
    const int64_t q_rows = varlen ? tq : batch * c.seqlen_q;
    lse_.assign(static_cast<size_t>(std::max<int64_t>(q_rows * c.heads_q, 1)), kNaN);  // non-null when empty
    if (c.alibi)
      for (int64_t h = 0; h < c.heads_q; ++h) alibi_.push_back(0.05f * static_cast<float>(h + 1));
    if (c.sinks) {
      for (int64_t h = 0; h < c.heads_q; ++h) sinks_.push_back(0.5f * uniform(rng) + (h % 2 ? 1.5f : -0.5f));
      dsinks_.assign(static_cast<size_t>(c.heads_q), kNaN);
    }
    run_reference_forward();
  }

  AttnBwdParams params() {
    AttnBwdParams bp;
    AttnParams& a = bp.fwd;
    const bool varlen = !c_.q_lens.empty();
    a.q = q_.ref();
    a.k = k_.ref();
    a.v = v_.ref();
    a.out = out_.ref();
    const int64_t hq = c_.heads_q;
    if (varlen) {
      const int64_t tq = cu_q_.back();
      a.lse = TensorRef::contiguous(lse_.data(), DType::kFloat32, {hq, tq});
      a.cu_seqlens_q = TensorRef::contiguous(cu_q_.data(), DType::kInt32, {static_cast<int64_t>(cu_q_.size())});
      a.cu_seqlens_k = TensorRef::contiguous(cu_k_.data(), DType::kInt32, {static_cast<int64_t>(cu_k_.size())});
      int32_t max_q = 0, max_k = 0;
      for (int32_t n : c_.q_lens) max_q = std::max(max_q, n);
      for (int32_t n : c_.k_lens) max_k = std::max(max_k, n);
      a.max_seqlen_q = max_q;
      a.max_seqlen_k = max_k;
    } else {
      a.lse = TensorRef::contiguous(lse_.data(), DType::kFloat32, {c_.batch, hq, c_.seqlen_q});
    }
    if (!c_.used_k.empty())
      a.seqused_k = TensorRef::contiguous(c_.used_k.data(), DType::kInt32, {static_cast<int64_t>(c_.used_k.size())});
    a.causal = c_.causal;
    a.window_left = c_.window_left;
    a.window_right = c_.window_right;
    a.softcap = c_.softcap;
    if (!alibi_.empty()) a.alibi_slopes = TensorRef::contiguous(alibi_.data(), DType::kFloat32, {hq});
    if (!sinks_.empty()) {
      a.sinks = TensorRef::contiguous(sinks_.data(), DType::kFloat32, {hq});
      bp.dsinks = TensorRef::contiguous(dsinks_.data(), DType::kFloat32, {hq});
    }
    bp.dout = dout_.ref();
    bp.dq = dq_.ref();
    bp.dk = dk_.ref();
    bp.dv = dv_.ref();
    return bp;
  }

  core::BwdProblem problem() { return core::prepare_backward(params(), core::ValidateOptions{}); }

  void run(int threads, bool deterministic = false) {
    core::BwdProblem bp = problem();
    bp.deterministic = deterministic;
    cpu::backward(bp, threads);
  }

  PaddedTensor& q() { return q_; }
  PaddedTensor& k() { return k_; }
  PaddedTensor& v() { return v_; }
  PaddedTensor& dout() { return dout_; }
  PaddedTensor& dq() { return dq_; }
  PaddedTensor& dk() { return dk_; }
  PaddedTensor& dv() { return dv_; }
  std::vector<float>& sinks() { return sinks_; }
  std::vector<float>& dsinks() { return dsinks_; }
  const Case& spec() const { return c_; }

  // The forward's results as a forward stores them: out in the input dtype, lse in fp32.
  void run_reference_forward() {
    const reference::ForwardResult f = reference::forward(problem().fwd, reference::Precision::kFloat64);
    for (int64_t n = 0; n < out_.numel(); ++n) out_.set(n, static_cast<float>(f.out[n]));
    // reference lse is [row][head]; the tensor is [B, Hq, Sq] or [Hq, T]
    const bool varlen = !c_.q_lens.empty();
    const int64_t hq = c_.heads_q;
    const int64_t rows = static_cast<int64_t>(f.lse.size()) / hq;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = 0; h < hq; ++h) {
        const int64_t at = varlen ? h * rows + r : ((r / c_.seqlen_q) * hq + h) * c_.seqlen_q + r % c_.seqlen_q;
        lse_[at] = static_cast<float>(f.lse[r * hq + h]);
      }
  }

 private:
  Case c_;
  PaddedTensor q_, k_, v_, out_, dout_, dq_, dk_, dv_;
  std::vector<float> lse_, alibi_, sinks_, dsinks_;
  std::vector<int32_t> cu_q_, cu_k_;
};

std::vector<double> as_doubles(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

void expect_matches_reference(const Case& c, int threads = 3) {
  SCOPED_TRACE(c.name);
  BackwardSetup setup(c);
  setup.run(threads);
  const core::BwdProblem bp = setup.problem();
  const reference::BackwardResult ref64 = reference::backward(bp, reference::Precision::kFloat64);
  const reference::BackwardResult lowp = reference::backward(bp, reference::Precision::kInputDType);
  EXPECT_EQ(reference::check_close(setup.dq().values(), ref64.dq, lowp.dq, kBackwardFactor), "") << "dq";
  EXPECT_EQ(reference::check_close(setup.dk().values(), ref64.dk, lowp.dk, kBackwardFactor), "") << "dk";
  EXPECT_EQ(reference::check_close(setup.dv().values(), ref64.dv, lowp.dv, kBackwardFactor), "") << "dv";
  if (c.sinks) {
    EXPECT_EQ(reference::check_close(as_doubles(setup.dsinks()), ref64.dsinks, lowp.dsinks, kBackwardFactor), "")
        << "dsinks";
  }
  EXPECT_TRUE(setup.dq().padding_holds(kNaN)) << "dq padding or guard written";
  EXPECT_TRUE(setup.dk().padding_holds(kNaN)) << "dk padding or guard written";
  EXPECT_TRUE(setup.dv().padding_holds(kNaN)) << "dv padding or guard written";
}

// ---- the mask's transpose, which the backward walks ---------------------------------------------

TEST(CpuBackwardMask, QueryRangeOfAKeyIsTheTransposeOfTheRowRange) {
  const int64_t windows[] = {-1, 0, 1, 3, 40};
  for (int64_t sq : {1, 5, 17})
    for (int64_t k_end : {1, 4, 17, 30})
      for (int64_t k_begin : {int64_t{0}, k_end / 3})
        for (int64_t wl : windows)
          for (int64_t wr : windows) {
            const core::Mask m = core::Mask::make(sq, k_begin, k_end, wl, wr);
            for (int64_t j = k_begin; j < k_end; ++j)
              for (int64_t i = 0; i < sq; ++i)
                ASSERT_EQ(m.allowed(i, j), i >= m.query_begin(j) && i < m.query_end(j))
                    << "sq=" << sq << " keys [" << k_begin << "," << k_end << ") wl=" << wl << " wr=" << wr
                    << " i=" << i << " j=" << j;
          }
}

// ---- against the float64 reference (SPEC §6, factor 3) ------------------------------------------

TEST(CpuBackward, Fp32Dense) {
  Case c;
  c.name = "fp32 dense";
  c.batch = 2, c.seqlen_q = 97, c.seqlen_k = 97, c.heads_q = 2, c.heads_kv = 2, c.head_dim_qk = 64, c.head_dim_v = 64;
  expect_matches_reference(c);
}

TEST(CpuBackward, CausalSqLongerAndShorterThanSk) {
  for (auto [sq, sk] : {std::pair<int64_t, int64_t>{130, 70}, {70, 130}, {1, 97}, {97, 1}}) {
    Case c;
    c.name = "causal sq=" + std::to_string(sq) + " sk=" + std::to_string(sk);
    c.batch = 2, c.seqlen_q = sq, c.seqlen_k = sk, c.heads_q = 2, c.heads_kv = 1, c.head_dim_qk = 40, c.head_dim_v = 40;
    c.causal = true;
    expect_matches_reference(c);
  }
}

TEST(CpuBackward, WindowAndDifferentHeadDims) {
  Case c;
  c.name = "window (17, 3), Dqk 40, Dv 59";
  c.batch = 1, c.seqlen_q = 150, c.seqlen_k = 140, c.heads_q = 3, c.heads_kv = 3, c.head_dim_qk = 40, c.head_dim_v = 59;
  c.window_left = 17, c.window_right = 3;
  expect_matches_reference(c);
}

TEST(CpuBackward, SoftcapAlibiSinksWindowGqaHalfPrecision) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    Case c;
    c.name = std::string("softcap+alibi+sinks+window+GQA4 ") + dtype_name(dtype);
    c.dtype = dtype;
    c.batch = 2, c.seqlen_q = 75, c.seqlen_k = 131, c.heads_q = 8, c.heads_kv = 2, c.head_dim_qk = 59,
    c.head_dim_v = 32;
    c.window_left = 50, c.window_right = 10;
    c.softcap = 2.0f;
    c.alibi = true;
    c.sinks = true;
    c.q_amplitude = 3.0f;
    expect_matches_reference(c);
  }
}

TEST(CpuBackward, VarlenCausalGqaSinksSeqused) {
  Case c;
  c.name = "varlen causal GQA8 sinks seqused_k";
  c.dtype = DType::kBFloat16;
  c.q_lens = {97, 0, 1, 64, 33};
  c.k_lens = {97, 5, 70, 130, 0};
  c.used_k = {90, 5, 0, 129, 0};
  c.heads_q = 8, c.heads_kv = 1, c.head_dim_qk = 111, c.head_dim_v = 24;
  c.causal = true;
  c.sinks = true;
  expect_matches_reference(c);
}

TEST(CpuBackward, VarlenSoftcapAlibiWindow) {
  Case c;
  c.name = "varlen softcap alibi window fp16";
  c.dtype = DType::kFloat16;
  c.q_lens = {40, 200, 3};
  c.k_lens = {70, 180, 1};
  c.heads_q = 4, c.heads_kv = 2, c.head_dim_qk = 32, c.head_dim_v = 48;
  c.window_left = 30, c.window_right = 0;
  c.softcap = 5.0f;
  c.alibi = true;
  expect_matches_reference(c);
}

TEST(CpuBackward, FullyMaskedRowsWithAndWithoutSinks) {
  for (bool sinks : {false, true}) {
    Case c;
    // Sq > Sk causal: the first Sq - Sk rows see no key at all.
    c.name = sinks ? "fully masked rows, sinks" : "fully masked rows";
    c.batch = 2, c.seqlen_q = 80, c.seqlen_k = 20, c.heads_q = 2, c.heads_kv = 2, c.head_dim_qk = 16,
    c.head_dim_v = 16;
    c.causal = true;
    c.sinks = sinks;
    expect_matches_reference(c);
  }
}

TEST(CpuBackward, ExtremeLogits) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    Case c;
    c.name = std::string("|s| ~ 1e4 ") + dtype_name(dtype);
    c.dtype = dtype;
    c.batch = 1, c.seqlen_q = 33, c.seqlen_k = 130, c.heads_q = 2, c.heads_kv = 1, c.head_dim_qk = 16,
    c.head_dim_v = 16;
    c.q_amplitude = 2500.0f;
    c.sinks = true;
    expect_matches_reference(c);
  }
}

// Scores all near -1e4 and O(1) apart: many keys share the mass, so lse ~ -1e4 + log(n) and an
// fp32 lse alone would pin P down only to ~5e-4 (the softmax statistics must be recomputed).
TEST(CpuBackward, AllScoresNearMinus1e4) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    Case c;
    c.name = std::string("s ~ -1e4 ") + dtype_name(dtype);
    c.dtype = dtype;
    c.batch = 1, c.seqlen_q = 40, c.seqlen_k = 150, c.heads_q = 2, c.heads_kv = 1, c.head_dim_qk = 16,
    c.head_dim_v = 16;
    c.causal = true;
    BackwardSetup setup(c);
    std::mt19937 rng(7);
    std::normal_distribution<float> noise(0.0f, 0.05f);
    const float magnitude = 50.0f;  // scale * 16 * 50 * 50 = 1e4
    for (int64_t n = 0; n < setup.q().numel(); ++n) setup.q().set(n, magnitude);
    for (int64_t n = 0; n < setup.k().numel(); ++n) setup.k().set(n, -magnitude + noise(rng));
    setup.run_reference_forward();
    setup.run(3);
    const core::BwdProblem bp = setup.problem();
    const reference::BackwardResult ref64 = reference::backward(bp, reference::Precision::kFloat64);
    const reference::BackwardResult lowp = reference::backward(bp, reference::Precision::kInputDType);
    SCOPED_TRACE(c.name);
    EXPECT_EQ(reference::check_close(setup.dq().values(), ref64.dq, lowp.dq, kBackwardFactor), "") << "dq";
    EXPECT_EQ(reference::check_close(setup.dk().values(), ref64.dk, lowp.dk, kBackwardFactor), "") << "dk";
    EXPECT_EQ(reference::check_close(setup.dv().values(), ref64.dv, lowp.dv, kBackwardFactor), "") << "dv";
  }
}

TEST(CpuBackward, OddHeadDimsAndMqa) {
  for (auto [dqk, dv] : {std::pair<int64_t, int64_t>{1, 1}, {111, 7}, {256, 512}}) {
    Case c;
    c.name = "Dqk " + std::to_string(dqk) + " Dv " + std::to_string(dv);
    c.batch = 1, c.seqlen_q = 19, c.seqlen_k = 70, c.heads_q = 4, c.heads_kv = 1, c.head_dim_qk = dqk, c.head_dim_v = dv;
    expect_matches_reference(c, 2);
  }
}

TEST(CpuBackward, EmptyProblems) {
  Case c;
  c.name = "all sequences empty";
  c.q_lens = {0, 0};
  c.k_lens = {0, 3};
  c.heads_q = 2, c.heads_kv = 1;
  c.sinks = true;
  BackwardSetup setup(c);
  setup.run(2);
  for (int64_t n = 0; n < setup.dk().numel(); ++n) EXPECT_EQ(setup.dk().get(n), 0.0f);
  for (int64_t n = 0; n < setup.dv().numel(); ++n) EXPECT_EQ(setup.dv().get(n), 0.0f);
  for (float g : setup.dsinks()) EXPECT_EQ(g, 0.0f);
}

// A NaN in a key nobody attends (past seqused_k) must not reach any gradient; a NaN in one query
// row reaches that row's dq and the dk/dv of the keys it sees, nothing else.
TEST(CpuBackward, NanReachesOnlyWhatItTouches) {
  Case c;
  c.name = "nan";
  c.batch = 2, c.seqlen_q = 20, c.seqlen_k = 30, c.heads_q = 2, c.heads_kv = 1, c.head_dim_qk = 8, c.head_dim_v = 8;
  c.used_k = {25, 30};
  c.window_left = 2, c.window_right = 0;
  BackwardSetup setup(c);
  // key 27 of sequence 0 is past seqused_k
  for (int64_t d = 0; d < 8; ++d) setup.k().set(((0 * 30 + 27) * 1 + 0) * 8 + d, kNaN);
  // query row 5 of sequence 1, head 1: sees keys 13..15 (bottom-right diag 10, window (2, 0))
  setup.q().set(((1 * 20 + 5) * 2 + 1) * 8 + 3, kNaN);
  setup.run(2);
  for (int64_t n = 0; n < setup.dq().numel(); ++n) {
    const int64_t row = n / (2 * 8), h = (n / 8) % 2;
    EXPECT_EQ(std::isnan(setup.dq().get(n)), row == 20 + 5 && h == 1) << "dq element " << n;
  }
  for (int64_t n = 0; n < setup.dk().numel(); ++n) {
    const int64_t row = n / 8;
    const bool touched = row >= 30 + 13 && row <= 30 + 15;
    EXPECT_EQ(std::isnan(setup.dk().get(n)), touched) << "dk element " << n;
    EXPECT_EQ(std::isnan(setup.dv().get(n)), touched) << "dv element " << n;
  }
}

// ---- determinism ---------------------------------------------------------------------------------

TEST(CpuBackward, BitIdenticalAcrossRunsAndThreadCounts) {
  Case c;
  c.name = "determinism";
  c.dtype = DType::kFloat32;
  c.q_lens = {300, 17, 129};
  c.k_lens = {280, 40, 129};
  c.heads_q = 4, c.heads_kv = 2, c.head_dim_qk = 24, c.head_dim_v = 16;
  c.causal = true;
  c.softcap = 4.0f;
  c.sinks = true;
  BackwardSetup setup(c);
  setup.run(1, true);
  const auto dq = setup.dq().bytes(), dk = setup.dk().bytes(), dv = setup.dv().bytes();
  const auto dsinks = setup.dsinks();
  for (int threads : {1, 2, 3, 2}) {
    for (bool deterministic : {true, false}) {
      setup.run(threads, deterministic);
      EXPECT_EQ(setup.dq().bytes(), dq) << threads << " threads";
      EXPECT_EQ(setup.dk().bytes(), dk) << threads << " threads";
      EXPECT_EQ(setup.dv().bytes(), dv) << threads << " threads";
      EXPECT_EQ(std::memcmp(setup.dsinks().data(), dsinks.data(), dsinks.size() * sizeof(float)), 0);
    }
  }
}

// ---- finite differences: an independent check of the reference and the backend ------------------

// loss = sum(dout * out) in float64; its gradient with respect to any input is what the backward
// computes for that input.
// (Reference rows are dense [row][head][dim], the logical order of a batched out.)
double loss(BackwardSetup& setup) {
  const reference::ForwardResult f = reference::forward(setup.problem().fwd, reference::Precision::kFloat64);
  double total = 0.0;
  for (size_t n = 0; n < f.out.size(); ++n) total += f.out[n] * setup.dout().get(static_cast<int64_t>(n));
  return total;
}

// Central difference in the value actually stored (fp32 rounding of x +- step is accounted for).
template <typename Set>
double central_difference(BackwardSetup& setup, float x, const Set& set) {
  const float step = 1e-2f * std::max(1.0f, std::fabs(x));
  const float up = x + step, down = x - step;
  set(up);
  const double loss_up = loss(setup);
  set(down);
  const double loss_down = loss(setup);
  set(x);
  return (loss_up - loss_down) / (static_cast<double>(up) - static_cast<double>(down));
}

TEST(CpuBackward, FiniteDifferences) {
  Case c;
  c.name = "finite differences";
  c.batch = 2, c.seqlen_q = 5, c.seqlen_k = 7, c.heads_q = 4, c.heads_kv = 2, c.head_dim_qk = 3, c.head_dim_v = 2;
  c.window_left = 3, c.window_right = 1;
  c.softcap = 1.5f;
  c.alibi = true;
  c.sinks = true;
  c.q_amplitude = 2.0f;
  BackwardSetup setup(c);
  setup.run(2);
  const reference::BackwardResult ref64 = reference::backward(setup.problem(), reference::Precision::kFloat64);

  // float64 central differences have ~1e-5 relative error at this step; fp32 gradients are closer.
  auto expect_gradient = [&](const char* what, int64_t n, double numeric, double reference_grad, double backend_grad) {
    const double tolerance = 1e-4 + 1e-3 * std::fabs(numeric);
    EXPECT_NEAR(reference_grad, numeric, tolerance) << "reference " << what << "[" << n << "]";
    EXPECT_NEAR(backend_grad, numeric, tolerance) << "backend " << what << "[" << n << "]";
  };
  for (int64_t n = 0; n < setup.q().numel(); ++n) {
    const double numeric = central_difference(setup, setup.q().get(n), [&](float x) { setup.q().set(n, x); });
    expect_gradient("dq", n, numeric, ref64.dq[n], setup.dq().get(n));
  }
  for (int64_t n = 0; n < setup.k().numel(); ++n) {
    const double numeric = central_difference(setup, setup.k().get(n), [&](float x) { setup.k().set(n, x); });
    expect_gradient("dk", n, numeric, ref64.dk[n], setup.dk().get(n));
  }
  for (int64_t n = 0; n < setup.v().numel(); ++n) {
    const double numeric = central_difference(setup, setup.v().get(n), [&](float x) { setup.v().set(n, x); });
    expect_gradient("dv", n, numeric, ref64.dv[n], setup.dv().get(n));
  }
  for (int64_t h = 0; h < c.heads_q; ++h) {
    const double numeric =
        central_difference(setup, setup.sinks()[h], [&](float x) { setup.sinks()[h] = x; });
    expect_gradient("dsinks", h, numeric, ref64.dsinks[h], setup.dsinks()[h]);
  }
}

// ---- through the public entry point ---------------------------------------------------------------

TEST(CpuBackward, PublicEntryPoint) {
  Case c;
  c.name = "attention_backward";
  c.dtype = DType::kBFloat16;
  c.batch = 2, c.seqlen_q = 65, c.seqlen_k = 65, c.heads_q = 4, c.heads_kv = 2, c.head_dim_qk = 64, c.head_dim_v = 64;
  c.causal = true;
  c.sinks = true;
  BackwardSetup setup(c);
  ExecContext ctx;
  ctx.backend = Backend::kCpu;
  ctx.num_threads = 2;
  attention_backward(setup.params(), ctx);
  const core::BwdProblem bp = setup.problem();
  const reference::BackwardResult ref64 = reference::backward(bp, reference::Precision::kFloat64);
  const reference::BackwardResult lowp = reference::backward(bp, reference::Precision::kInputDType);
  EXPECT_EQ(reference::check_close(setup.dq().values(), ref64.dq, lowp.dq, kBackwardFactor), "");
  EXPECT_EQ(reference::check_close(setup.dk().values(), ref64.dk, lowp.dk, kBackwardFactor), "");
  EXPECT_EQ(reference::check_close(setup.dv().values(), ref64.dv, lowp.dv, kBackwardFactor), "");
  EXPECT_EQ(reference::check_close(as_doubles(setup.dsinks()), ref64.dsinks, lowp.dsinks, kBackwardFactor), "");
}

}  // namespace
}  // namespace flashsdpa
