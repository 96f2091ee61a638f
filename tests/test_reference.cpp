// The float64 reference checked against first principles: closed-form cases for the forward and
// finite differences of the forward for the backward (softcap, ALiBi, sinks, GQA, windows,
// varlen with empty sequences). Everything else is tested against this reference.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"

namespace flashsdpa::test {
namespace {

using reference::Precision;

constexpr double kInf = std::numeric_limits<double>::infinity();

AttnConfig small_config(Layout layout = Layout::kBatched) {
  AttnConfig c;
  c.layout = layout;
  c.dtype = DType::kFloat32;
  c.batch = 2;
  c.heads_q = 4;
  c.heads_kv = 2;
  c.head_dim_qk = 5;
  c.head_dim_v = 3;
  c.seqlen_q = 4;
  c.seqlen_k = 6;
  return c;
}

TEST(Reference, SingleKeyReturnsItsValue) {
  AttnConfig c = small_config();
  c.seqlen_k = 1;
  AttnCase a(c);
  const auto r = reference::forward(problem_for(a.params(), false), Precision::kFloat64);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t i = 0; i < c.seqlen_q; ++i)
      for (int64_t h = 0; h < c.heads_q; ++h)
        for (int64_t d = 0; d < c.head_dim_v; ++d)
          EXPECT_DOUBLE_EQ(r.out[((b * c.seqlen_q + i) * c.heads_q + h) * c.head_dim_v + d],
                           a.v.get((b * 1 * c.heads_kv + h / 2) * c.head_dim_v + d));
}

// q = 0 makes every allowed score equal: out is the mean of the allowed values and
// lse = log(count), so the count of allowed keys per row is visible directly.
TEST(Reference, ZeroQueryAveragesAllowedKeys) {
  AttnConfig c = small_config();
  c.batch = 1;
  c.heads_q = c.heads_kv = 1;
  c.seqlen_q = 5;
  c.seqlen_k = 3;  // Sq > Sk: bottom-right causal leaves the first two rows with no key
  c.causal = true;
  AttnCase a(c);
  a.q.fill(0.0);
  const auto r = reference::forward(problem_for(a.params(), false), Precision::kFloat64);
  for (int64_t i = 0; i < c.seqlen_q; ++i) {
    const int64_t allowed = std::max<int64_t>(0, i + c.seqlen_k - c.seqlen_q + 1);
    if (allowed == 0) {
      EXPECT_EQ(r.lse[i], -kInf);
      for (int64_t d = 0; d < c.head_dim_v; ++d) EXPECT_EQ(r.out[i * c.head_dim_v + d], 0.0);
      continue;
    }
    EXPECT_NEAR(r.lse[i], std::log(static_cast<double>(allowed)), 1e-12);
    for (int64_t d = 0; d < c.head_dim_v; ++d) {
      double mean = 0;
      for (int64_t j = 0; j < allowed; ++j) mean += a.v.get(j * c.head_dim_v + d) / allowed;
      EXPECT_NEAR(r.out[i * c.head_dim_v + d], mean, 1e-12);
    }
  }
}

TEST(Reference, SinkJoinsTheNormaliserOnly) {
  AttnConfig c = small_config();
  c.batch = 1;
  c.heads_q = c.heads_kv = 1;
  c.seqlen_q = 3;
  c.seqlen_k = 3;
  c.window_left = 0;
  c.window_right = 0;  // each row sees exactly its diagonal key
  c.sinks = true;
  AttnCase a(c);
  const auto r = reference::forward(problem_for(a.params(), false), Precision::kFloat64);
  const double sink = a.sinks.get(0);
  const double scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim_qk)));  // the API takes a float
  for (int64_t i = 0; i < c.seqlen_q; ++i) {
    double s = 0;
    for (int64_t d = 0; d < c.head_dim_qk; ++d) s += a.q.get(i * c.head_dim_qk + d) * a.k.get(i * c.head_dim_qk + d);
    s *= scale;
    const double lse = std::log(std::exp(s) + std::exp(sink));
    EXPECT_NEAR(r.lse[i], lse, 1e-12);
    for (int64_t d = 0; d < c.head_dim_v; ++d)
      EXPECT_NEAR(r.out[i * c.head_dim_v + d], std::exp(s - lse) * a.v.get(i * c.head_dim_v + d), 1e-12);
  }
}

TEST(Reference, FullyMaskedRowWithSinkHasSinkLse) {
  AttnConfig c = small_config();
  c.seqlen_q = 6;
  c.seqlen_k = 2;
  c.causal = true;
  c.sinks = true;
  AttnCase a(c);
  const auto r = reference::forward(problem_for(a.params(), false), Precision::kFloat64);
  for (int64_t h = 0; h < c.heads_q; ++h) {
    EXPECT_EQ(r.lse[0 * c.heads_q + h], a.sinks.get(h));  // row 0 sees no key
    EXPECT_EQ(r.out[(0 * c.heads_q + h) * c.head_dim_v], 0.0);
  }
}

TEST(Reference, LowPrecisionFp32IsCloseToFloat64) {
  AttnConfig c = small_config();
  c.softcap = 5.0f;
  c.alibi = Alibi::kPerBatch;
  AttnCase a(c);
  const core::Problem p = problem_for(a.params(), false);
  const auto r64 = reference::forward(p, Precision::kFloat64);
  const auto r32 = reference::forward(p, Precision::kInputDType);
  for (size_t n = 0; n < r64.out.size(); ++n) EXPECT_NEAR(r32.out[n], r64.out[n], 1e-5);
}

TEST(Reference, PagedAndDenseLayoutsAgree) {
  AttnConfig c = small_config(Layout::kPaged);
  c.seqlens_k = {7, 3};
  c.seqlen_q = 3;
  c.block_size = 2;
  c.causal = true;
  AttnCase paged(c);
  AttnConfig d = c;
  d.layout = Layout::kBatched;
  d.seqlens_k.clear();
  d.seqlen_k = 7;
  d.seqused_k = {7, 3};
  AttnCase dense(d);
  dense.q = paged.q;
  // Gather the paged keys into the batched tensors.
  const auto table = paged.block_table.int_values();
  const int64_t max_blocks = paged.block_table.shape()[1];
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t j = 0; j < c.seqlens_k[b]; ++j) {
      const int64_t row = table[b * max_blocks + j / c.block_size] * c.block_size + j % c.block_size;
      for (int64_t h = 0; h < c.heads_kv; ++h) {
        for (int64_t e = 0; e < c.head_dim_qk; ++e)
          dense.k.set(((b * 7 + j) * c.heads_kv + h) * c.head_dim_qk + e, paged.k.get((row * c.heads_kv + h) * c.head_dim_qk + e));
        for (int64_t e = 0; e < c.head_dim_v; ++e)
          dense.v.set(((b * 7 + j) * c.heads_kv + h) * c.head_dim_v + e, paged.v.get((row * c.heads_kv + h) * c.head_dim_v + e));
      }
    }
  const auto rp = reference::forward(problem_for(paged.params(), false), Precision::kFloat64);
  const auto rd = reference::forward(problem_for(dense.params(), false), Precision::kFloat64);
  EXPECT_EQ(rp.out, rd.out);
  EXPECT_EQ(rp.lse, rd.lse);
}

TEST(Reference, CheckCloseRule) {
  using reference::check_close;
  const double nan = std::nan("");
  EXPECT_EQ(check_close({1.0, 2.0}, {1.0, 2.0}, {1.0, 2.0}, 2.0), "");
  EXPECT_EQ(check_close({1.0 + 5e-7}, {1.0}, {1.0}, 2.0), "");                 // the 1e-6 floor
  EXPECT_NE(check_close({1.0 + 5e-6}, {1.0}, {1.0}, 2.0), "");
  EXPECT_EQ(check_close({1.0 + 0.19}, {1.0}, {1.1}, 2.0), "");                 // within 2 * 0.1
  EXPECT_NE(check_close({1.0 + 0.21}, {1.0}, {1.1}, 2.0), "");
  EXPECT_EQ(check_close({nan, -kInf}, {nan, -kInf}, {nan, -kInf}, 2.0), "");   // matching non-finite
  EXPECT_NE(check_close({0.0}, {nan}, {nan}, 2.0), "");                          // NaN not reproduced
  EXPECT_NE(check_close({nan}, {0.0}, {0.0}, 2.0), "");                          // NaN left behind
  EXPECT_NE(check_close({kInf}, {-kInf}, {-kInf}, 2.0), "");
  EXPECT_NE(check_close({1.0}, {1.0, 2.0}, {1.0, 2.0}, 2.0), "");               // sizes
}

// The append writes k_new rotated at its slot's position: (x0, x1) -> (x0 cos - x1 sin,
// x0 sin + x1 cos) over pairs (2t, 2t+1) interleaved or (t, t + rotary_dim / 2) NeoX, dims past
// rotary_dim copied; v_new copied; every other slot untouched.
TEST(ReferenceKvCache, AppendRotatesNewKeysAtTheirPositions) {
  for (bool interleaved : {true, false}) {
    AttnConfig c;
    c.layout = Layout::kDenseCache;
    c.dtype = DType::kFloat32;
    c.batch = 2;
    c.heads_q = c.heads_kv = 1;
    c.head_dim_qk = 10;
    c.head_dim_v = 3;
    c.seqlen_q = 1;
    c.seqlen_new = 2;
    c.cache_capacity = 8;
    c.cache_seqlens = {0, 5};
    c.rotary_dim = 6;
    c.rotary_interleaved = interleaved;
    AttnCase a(c);
    const HostTensor original_k = a.k, original_v = a.v;
    reference::kvcache(problem_for(a.params(), true), Precision::kFloat64);
    const int64_t half = c.rotary_dim / 2;
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t j = 0; j < c.cache_capacity; ++j) {
        const int64_t t = j - c.cache_seqlens[b];
        const bool appended = t >= 0 && t < c.seqlen_new;
        for (int64_t d = 0; d < c.head_dim_qk; ++d) {
          const int64_t at = (b * c.cache_capacity + j) * c.head_dim_qk + d;
          if (!appended) {
            EXPECT_EQ(a.k.get(at), original_k.get(at));
            continue;
          }
          auto x = [&](int64_t e) { return a.k_new.get((b * c.seqlen_new + t) * c.head_dim_qk + e); };
          double expected = x(d);
          if (d < c.rotary_dim) {
            const int64_t freq = interleaved ? d / 2 : d % half;
            const bool first = interleaved ? d % 2 == 0 : d < half;
            const int64_t partner = interleaved ? (first ? d + 1 : d - 1) : (first ? d + half : d - half);
            const double cs = a.rotary_cos.get(j * half + freq), sn = a.rotary_sin.get(j * half + freq);
            expected = first ? x(d) * cs - x(partner) * sn : x(partner) * sn + x(d) * cs;
          }
          EXPECT_NEAR(a.k.get(at), expected, 1e-6) << "interleaved=" << interleaved << " b=" << b << " j=" << j << " d=" << d;
        }
        for (int64_t d = 0; d < c.head_dim_v; ++d) {
          const int64_t at = (b * c.cache_capacity + j) * c.head_dim_v + d;
          EXPECT_EQ(a.v.get(at), appended ? a.v_new.get((b * c.seqlen_new + t) * c.head_dim_v + d) : original_v.get(at));
        }
      }
    }
  }
}

// Without rotary, a KV-cache call is the forward over the cache with the new keys in place.
TEST(ReferenceKvCache, EqualsForwardOverTheFilledCache) {
  AttnConfig c;
  c.layout = Layout::kDenseCache;
  c.batch = 1;
  c.heads_q = 2;
  c.heads_kv = 1;
  c.head_dim_qk = c.head_dim_v = 4;
  c.seqlen_q = c.seqlen_new = 3;
  c.cache_capacity = 9;
  c.cache_seqlens = {4};
  c.causal = true;
  c.sinks = true;
  AttnCase a(c);
  const auto via_cache = reference::kvcache(problem_for(a.params(), true), Precision::kFloat64);
  AttnConfig d = small_config();
  d.batch = 1;
  d.heads_q = 2;
  d.heads_kv = 1;
  d.head_dim_qk = d.head_dim_v = 4;
  d.seqlen_q = 3;
  d.seqlen_k = 7;
  d.causal = true;
  d.sinks = true;
  AttnCase f(d);
  f.q = a.q;
  f.sinks = a.sinks;
  for (int64_t n = 0; n < f.k.numel(); ++n) f.k.set(n, a.k.get(n));  // the first 7 slots of the filled cache
  for (int64_t n = 0; n < f.v.numel(); ++n) f.v.set(n, a.v.get(n));
  const auto direct = reference::forward(problem_for(f.params(), false), Precision::kFloat64);
  EXPECT_EQ(via_cache.out, direct.out);
  EXPECT_EQ(via_cache.lse, direct.lse);
}

// ---- backward by finite differences -------------------------------------------------------------

// L = sum dout * out over the dense output, in float64.
double loss(const AttnCase& a, const core::Problem& p) {
  const auto r = reference::forward(p, Precision::kFloat64);
  const auto dout = a.dout.values();
  double sum = 0;
  for (size_t n = 0; n < r.out.size(); ++n) sum += dout[n] * r.out[n];
  return sum;
}

// Central difference of the loss in element n of an fp32 tensor; the step actually stored is used.
double numeric_gradient(AttnCase& a, HostTensor& t, int64_t n) {
  const double x = t.get(n);
  const double step = 1e-3 * std::max(1.0, std::fabs(x));
  t.set(n, x + step);
  const double up_x = t.get(n);
  const double up = loss(a, problem_for(a.params(), false));
  t.set(n, x - step);
  const double down_x = t.get(n);
  const double down = loss(a, problem_for(a.params(), false));
  t.set(n, x);
  return (up - down) / (up_x - down_x);
}

void expect_gradients_match(AttnConfig c) {
  AttnCase a(c);
  const core::BwdProblem bp = core::prepare_backward(a.bwd_params(), core::ValidateOptions{});
  const auto g = reference::backward(bp, Precision::kFloat64);
  Rng pick(c.seed + 100);
  const std::vector<std::pair<HostTensor*, const std::vector<double>*>> checks = {
      {&a.q, &g.dq}, {&a.k, &g.dk}, {&a.v, &g.dv}};
  for (const auto& [tensor, analytic] : checks) {
    ASSERT_EQ(static_cast<int64_t>(analytic->size()), tensor->numel());
    double scale = 1e-3;
    for (const double x : *analytic) scale = std::max(scale, std::fabs(x));
    for (int trial = 0; trial < 24; ++trial) {
      const int64_t n = pick.uniform_int(0, tensor->numel() - 1);
      EXPECT_NEAR((*analytic)[n], numeric_gradient(a, *tensor, n), 2e-5 * scale) << c.describe() << " element " << n;
    }
  }
  if (c.sinks) {
    ASSERT_EQ(static_cast<int64_t>(g.dsinks.size()), c.heads_q);
    for (int64_t h = 0; h < c.heads_q; ++h)
      EXPECT_NEAR(g.dsinks[h], numeric_gradient(a, a.sinks, h), 1e-6 + 2e-5 * std::fabs(g.dsinks[h])) << c.describe();
  }
}

TEST(ReferenceBackward, PlainBatched) { expect_gradients_match(small_config()); }

TEST(ReferenceBackward, CausalSoftcapAlibiSinksGqa) {
  AttnConfig c = small_config();
  c.causal = true;
  c.softcap = 2.0f;
  c.alibi = Alibi::kPerHead;
  c.sinks = true;
  c.q_stddev = 2.0;
  c.seed = 7;
  expect_gradients_match(c);
}

TEST(ReferenceBackward, WindowSqGreaterThanSkWithFullyMaskedRows) {
  AttnConfig c = small_config();
  c.seqlen_q = 7;
  c.seqlen_k = 4;
  c.window_left = 1;
  c.window_right = 0;
  c.sinks = true;
  c.alibi = Alibi::kPerBatch;
  c.seed = 11;
  expect_gradients_match(c);
}

TEST(ReferenceBackward, VarlenWithEmptySequences) {
  AttnConfig c = small_config(Layout::kVarlen);
  c.batch = 4;
  c.seqlens_q = {3, 0, 2, 4};
  c.seqlens_k = {5, 2, 0, 3};
  c.causal = true;
  c.softcap = 3.0f;
  c.sinks = true;
  c.seed = 13;
  expect_gradients_match(c);
}

}  // namespace
}  // namespace flashsdpa::test
