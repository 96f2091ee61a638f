// The forward on the CPU backend against the float64 reference over a randomized grid: dtypes,
// head dims (odd ones on purpose), GQA ratios, length relations, masks and score modifiers and
// their combinations, batched / varlen with empty sequences / paged layouts. The grid is sampled
// with a fixed seed; the main axes are covered (covering_pick: every listed value appears, axes
// independent of each other), the rest is random.
#include <gtest/gtest.h>

#include <tuple>

#include "test_util.h"

namespace flashsdpa::test {
namespace {

constexpr int kGridCases = 600;

// A length for one side of a sequence given the wanted relation to the other side.
std::pair<int64_t, int64_t> lengths(Rng& rng, int relation, int64_t budget) {
  const std::vector<int64_t> sizes = {1, 2, 7, 16, 33, 64, 97, 128, 130, 257, 513, 1025};
  int64_t a = rng.pick(sizes), b = rng.pick(sizes);
  while (a * b > budget) (a > b ? a : b) = std::max<int64_t>(1, (a > b ? a : b) / 2);
  if (relation == 1) {  // Sq == Sk
    while (a * a > budget) a = std::max<int64_t>(1, a / 2);
    return {a, a};
  }
  if (a == b) b = a + 1 + rng.uniform_int(0, 8);
  if (relation == 0) return {std::min(a, b), std::max(a, b)};  // Sq < Sk
  return {std::max(a, b), std::min(a, b)};                     // Sq > Sk
}

AttnConfig grid_config(int n) {
  Rng rng(0x5eed0000u + static_cast<uint64_t>(n));
  AttnConfig c;
  c.seed = 1000 + static_cast<uint64_t>(n);

  const std::vector<DType> dtypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};
  c.dtype = dtypes[covering_pick(1, n, dtypes.size())];

  const std::vector<int64_t> dims = {40, 59, 111, 128, 256, 64, 8, 1};
  c.head_dim_qk = dims[covering_pick(2, n, dims.size())];
  c.head_dim_v = rng.coin(0.3) ? rng.pick(std::vector<int64_t>{16, 40, 64, 96, 128, 200}) : c.head_dim_qk;

  pick_heads(c, rng, n, 6);

  // Keep the reference's work per case around a few million multiply-adds.
  const int64_t per_pair = c.heads_q * (c.head_dim_qk + c.head_dim_v);
  const int64_t budget = std::max<int64_t>(64, 30'000'000 / per_pair);

  const int layout_kind = static_cast<int>(covering_pick(4, n, 5));
  const int relation = static_cast<int>(covering_pick(5, n, 3));
  c.batch = rng.uniform_int(1, 3);
  if (layout_kind <= 1) {
    c.layout = Layout::kBatched;
    std::tie(c.seqlen_q, c.seqlen_k) = lengths(rng, relation, budget / c.batch);
    if (layout_kind == 1 && c.batch > 1) {  // seqused_k: fewer keys for some sequences
      for (int64_t b = 0; b < c.batch; ++b) c.seqused_k.push_back(rng.uniform_int(0, c.seqlen_k));
    }
  } else if (layout_kind == 2) {
    c.layout = Layout::kVarlen;
    c.batch = rng.uniform_int(2, 5);
    for (int64_t b = 0; b < c.batch; ++b) {
      auto [sq, sk] = lengths(rng, relation, budget / c.batch);
      if (rng.coin(0.2)) sq = 0;  // empty sequences, on either side
      if (rng.coin(0.2)) sk = 0;
      c.seqlens_q.push_back(sq);
      c.seqlens_k.push_back(sk);
    }
    if (rng.coin(0.3)) {  // seqused_k: sequences use a prefix of their packed keys
      for (const int64_t sk : c.seqlens_k) c.seqused_k.push_back(rng.uniform_int(0, sk));
    }
  } else {
    c.layout = Layout::kPaged;
    c.block_size = std::vector<int64_t>{1, 16, 256}[covering_pick(6, n, 3)];
    const bool varlen_q = layout_kind == 4;
    if (!varlen_q) c.seqlen_q = lengths(rng, relation, budget / c.batch).first;
    for (int64_t b = 0; b < c.batch; ++b) {
      auto [sq, sk] = lengths(rng, relation, budget / c.batch);
      if (varlen_q) c.seqlens_q.push_back(rng.coin(0.15) ? 0 : sq);
      c.seqlens_k.push_back(sk);
    }
  }

  // Masks and modifiers, alone and combined.
  const int mask_kind = static_cast<int>(covering_pick(7, n, 5));
  if (mask_kind == 1) c.causal = true;
  if (mask_kind == 2) {
    c.window_left = rng.uniform_int(0, 40);
    c.window_right = rng.uniform_int(0, 40);
  }
  if (mask_kind == 3) {
    c.window_left = rng.coin() ? -1 : rng.uniform_int(0, 20);
    c.window_right = rng.coin() ? -1 : rng.uniform_int(0, 20);
  }
  if (mask_kind == 4) {
    c.causal = true;
    c.window_left = rng.uniform_int(0, 30);
  }
  const int modifiers = static_cast<int>(covering_pick(8, n, 8));  // bit 0 softcap, bit 1 ALiBi, bit 2 sinks
  if (modifiers & 1) c.softcap = static_cast<float>(rng.pick(std::vector<double>{1.0, 5.0, 30.0}));
  if (modifiers & 2) c.alibi = rng.coin() ? Alibi::kPerHead : Alibi::kPerBatch;
  if (modifiers & 4) {
    c.sinks = true;
    c.sink_mean = rng.uniform(-2.0, 3.0);
  }
  if (rng.coin(0.2)) c.scale = static_cast<float>(rng.uniform(0.05, 0.5));
  c.with_lse = rng.coin(0.85);
  c.padded_strides = rng.coin(0.25);
  c.num_splits = static_cast<int>(rng.pick(std::vector<int64_t>{0, 0, 0, 1, 4}));
  return c;
}

class ForwardGrid : public ::testing::TestWithParam<int> {};

TEST_P(ForwardGrid, MatchesReference) {
  AttnCase c(grid_config(GetParam()));
  const int threads = 1 + GetParam() % 4;
  EXPECT_EQ(check_forward(c, cpu_context(threads)), "") << c.config.describe() << " threads=" << threads;
}

INSTANTIATE_TEST_SUITE_P(Sampled, ForwardGrid, ::testing::Range(0, kGridCases));

// ---- targeted cases the grid may only brush ----------------------------------------------------

TEST(Forward, LongSequence1025Causal) {
  AttnConfig c = shaped_config(DType::kFloat16, 64, 64, 2, 1, 1025, 1025);
  c.causal = true;
  AttnCase a(c);
  EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
}

TEST(Forward, DecodeSingleQueryLongCache) {
  AttnConfig c = shaped_config(DType::kBFloat16, 128, 128, 8, 1, 1, 1025);
  c.sinks = true;
  AttnCase a(c);
  EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
}

TEST(Forward, HeadDim512) {
  AttnConfig c = shaped_config(DType::kFloat32, 512, 512, 2, 2, 9, 13);
  AttnCase a(c);
  EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
}

TEST(Forward, HeadDimOneAndDqkDifferentFromDv) {
  for (auto [dqk, dv] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {1, 33}, {96, 7}, {192, 128}}) {
    AttnConfig c = shaped_config(DType::kFloat16, dqk, dv, 4, 2, 19, 23);
    AttnCase a(c);
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
  }
}

TEST(Forward, EveryModifierTogether) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    AttnConfig c = shaped_config(dtype, 59, 40, 8, 2, 37, 70);
    c.causal = true;
    c.window_left = 17;
    c.softcap = 20.0f;
    c.alibi = Alibi::kPerBatch;
    c.batch = 2;
    c.sinks = true;
    c.padded_strides = true;
    AttnCase a(c);
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
  }
}

TEST(Forward, VarlenAllEmptyButOne) {
  AttnConfig c = shaped_config(DType::kFloat32, 40, 40, 2, 1, 0, 0);
  c.layout = Layout::kVarlen;
  c.batch = 5;
  c.seqlens_q = {0, 0, 9, 0, 0};
  c.seqlens_k = {3, 0, 12, 0, 5};
  c.causal = true;
  AttnCase a(c);
  EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
}

TEST(Forward, PagedBlockSizes) {
  for (int64_t block_size : {1, 3, 16, 256}) {
    AttnConfig c = shaped_config(DType::kFloat16, 64, 64, 4, 2, 5, 0);
    c.layout = Layout::kPaged;
    c.batch = 3;
    c.block_size = block_size;
    c.seqlens_k = {1, 300, 47};
    c.causal = true;
    AttnCase a(c);
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
  }
}

TEST(Forward, ThreadCountsAgree) {
  AttnConfig c = shaped_config(DType::kBFloat16, 111, 111, 4, 2, 70, 90);
  c.batch = 2;
  c.causal = true;
  c.sinks = true;
  for (int threads : {1, 2, 3, 8}) {
    AttnCase a(c);
    EXPECT_EQ(check_forward(a, cpu_context(threads)), "") << c.describe() << " threads=" << threads;
  }
}

}  // namespace
}  // namespace flashsdpa::test
