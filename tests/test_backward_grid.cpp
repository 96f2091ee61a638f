// attention_backward on the CPU backend against the reference (SPEC §6 with factor 3): dq, dk, dv
// and dsinks over a randomized grid of dtypes, head dims, GQA ratios, masks and modifiers,
// batched and varlen; deterministic=true must give bit-identical gradients run to run and across
// thread counts.
#include <gtest/gtest.h>

#include <tuple>

#include "test_util.h"

namespace flashsdpa::test {
namespace {

constexpr int kGridCases = 240;

AttnConfig backward_config(int n) {
  Rng rng(0xbacc0000u + static_cast<uint64_t>(n));
  AttnConfig c;
  c.seed = 9000 + static_cast<uint64_t>(n);
  const std::vector<DType> dtypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};
  c.dtype = dtypes[covering_pick(1, n, dtypes.size())];
  const std::vector<int64_t> dims = {40, 59, 111, 128, 256, 64, 1};
  c.head_dim_qk = dims[covering_pick(2, n, dims.size())];
  c.head_dim_v = rng.coin(0.3) ? rng.pick(std::vector<int64_t>{8, 40, 64, 128}) : c.head_dim_qk;
  pick_heads(c, rng, n, 4);
  const int64_t per_pair = c.heads_q * (2 * c.head_dim_qk + 2 * c.head_dim_v);
  const int64_t budget = std::max<int64_t>(64, 16'000'000 / per_pair);
  pick_geometry_and_modifiers(c, rng, n, {1, 5, 17, 33, 64, 97, 130, 257}, budget);
  return c;
}

class BackwardGrid : public ::testing::TestWithParam<int> {};

TEST_P(BackwardGrid, MatchesReference) {
  const AttnConfig config = backward_config(GetParam());
  AttnCase c(config);
  const int threads = 1 + GetParam() % 3;
  EXPECT_EQ(check_backward(c, cpu_context(threads), GetParam() % 2 == 0), "") << config.describe() << " threads=" << threads;
}

INSTANTIATE_TEST_SUITE_P(Sampled, BackwardGrid, ::testing::Range(0, kGridCases));

AttnConfig training_shape(DType dtype) {
  AttnConfig c;
  c.dtype = dtype;
  c.batch = 2;
  c.heads_q = 4;
  c.heads_kv = 2;
  c.head_dim_qk = 64;
  c.head_dim_v = 64;
  c.seqlen_q = 130;
  c.seqlen_k = 130;
  c.causal = true;
  c.sinks = true;
  return c;
}

TEST(Backward, SinksGradient) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    AttnConfig c = training_shape(dtype);
    c.sink_mean = 1.5;  // sinks that take a real share of the mass
    c.window_left = 20;
    AttnCase a(c);
    EXPECT_EQ(check_backward(a, cpu_context(2)), "") << c.describe();
  }
}

TEST(Backward, ExtremeLogits) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    AttnConfig c = training_shape(dtype);
    c.seqlen_q = c.seqlen_k = 70;
    c.q_stddev = 1e4;  // |s| around 1e4: near one-hot rows
    AttnCase a(c);
    EXPECT_EQ(check_backward(a, cpu_context(2)), "") << c.describe();
    c.q_stddev = 30.0;  // |s| in the hundreds: peaked but not one-hot
    c.softcap = 0.0f;
    AttnCase b(c);
    EXPECT_EQ(check_backward(b, cpu_context(2)), "") << c.describe();
  }
}

TEST(Backward, VarlenWithSequsedK) {
  AttnConfig c = training_shape(DType::kFloat16);
  c.layout = Layout::kVarlen;
  c.batch = 3;
  c.seqlens_q = {20, 7, 0};
  c.seqlens_k = {30, 7, 9};
  c.seqused_k = {11, 0, 9};
  c.causal = false;
  c.window_left = 5;
  c.window_right = 3;
  AttnCase a(c);
  EXPECT_EQ(check_backward(a, cpu_context(2)), "") << c.describe();
}

TEST(Backward, FullyMaskedRows) {
  AttnConfig c = training_shape(DType::kFloat16);
  c.seqlen_q = 90;
  c.seqlen_k = 30;  // causal bottom-right: the first 60 rows see nothing
  AttnCase a(c);
  EXPECT_EQ(check_backward(a, cpu_context(2)), "") << c.describe();
}

// Bit-identical gradients with deterministic = true: two runs, and 1, 2, 3 threads.
TEST(Backward, DeterministicIsBitIdentical) {
  for (Layout layout : {Layout::kBatched, Layout::kVarlen}) {
    AttnConfig c = training_shape(DType::kBFloat16);
    c.heads_q = 8;
    c.heads_kv = 1;
    c.layout = layout;
    if (layout == Layout::kVarlen) {
      c.batch = 3;
      c.seqlens_q = {70, 0, 200};
      c.seqlens_k = {90, 5, 200};
    }
    std::vector<std::vector<uint8_t>> first;
    for (int threads : {2, 2, 1, 3}) {
      AttnCase a(c);
      ASSERT_EQ(check_backward(a, cpu_context(threads), /*deterministic=*/true), "") << c.describe();
      std::vector<std::vector<uint8_t>> bytes = {a.dq.guarded_bytes(), a.dk.guarded_bytes(), a.dv.guarded_bytes(),
                                                 a.dsinks.guarded_bytes()};
      if (first.empty()) first = bytes;
      else EXPECT_TRUE(bytes == first) << c.describe() << " threads=" << threads << " gave different bits";
    }
  }
}

}  // namespace
}  // namespace flashsdpa::test
