// The edges of SPEC §2 and §5 on the CPU backend: fully masked rows (out 0, lse -inf, or the sink
// with sinks), logits near +-1e4, NaN confined to the rows it touches, every output element
// written, and nothing written outside the outputs.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"

namespace flashsdpa::test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

AttnConfig small(DType dtype) {
  AttnConfig c;
  c.dtype = dtype;
  c.batch = 2;
  c.heads_q = 4;
  c.heads_kv = 2;
  c.head_dim_qk = 40;
  c.head_dim_v = 24;
  c.seqlen_q = 33;
  c.seqlen_k = 47;
  return c;
}

const std::vector<DType> kDtypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};

// ---- fully masked rows --------------------------------------------------------------------------

// Rows whose window holds no key: out exactly 0, lse exactly -inf (or the sink).
void expect_masked_rows(AttnConfig c, const std::vector<int64_t>& masked_rows) {
  AttnCase a(c);
  ASSERT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
  for (int64_t b = 0; b < c.batch; ++b)
    for (const int64_t i : masked_rows)
      for (int64_t h = 0; h < c.heads_q; ++h) {
        const double expected_lse = c.sinks ? a.sinks.get(h) : -kInf;
        EXPECT_EQ(a.lse.get((b * c.heads_q + h) * c.seqlen_q + i), static_cast<double>(static_cast<float>(expected_lse)))
            << c.describe() << " row " << i << " head " << h;
        for (int64_t d = 0; d < c.head_dim_v; ++d)
          EXPECT_EQ(a.out.get(((b * c.seqlen_q + i) * c.heads_q + h) * c.head_dim_v + d), 0.0) << c.describe();
      }
}

TEST(FullyMasked, CausalWithMoreQueriesThanKeys) {
  for (DType dtype : kDtypes) {
    AttnConfig c = small(dtype);
    c.seqlen_q = 40;
    c.seqlen_k = 10;
    c.causal = true;
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < 30; ++i) rows.push_back(i);
    expect_masked_rows(c, rows);
    c.sinks = true;
    expect_masked_rows(c, rows);
  }
}

TEST(FullyMasked, WindowOutsideTheKeys) {
  AttnConfig c = small(DType::kFloat32);
  c.seqlen_q = 20;
  c.seqlen_k = 5;
  c.window_left = 2;
  c.window_right = 0;  // row i sees keys [i - 17, i - 15]: rows 0..14 see nothing
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < 15; ++i) rows.push_back(i);
  expect_masked_rows(c, rows);
}

TEST(FullyMasked, ZeroKeys) {
  for (bool sinks : {false, true}) {
    AttnConfig c = small(DType::kFloat16);
    c.layout = Layout::kBatched;
    c.seqused_k = {0, 0};
    c.sinks = sinks;
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < c.seqlen_q; ++i) rows.push_back(i);
    expect_masked_rows(c, rows);
  }
}

TEST(FullyMasked, VarlenSequenceWithoutKeys) {
  AttnConfig c = small(DType::kBFloat16);
  c.layout = Layout::kVarlen;
  c.batch = 3;
  c.seqlens_q = {4, 6, 3};
  c.seqlens_k = {5, 0, 2};
  c.sinks = true;
  c.alibi = Alibi::kPerHead;
  AttnCase a(c);
  EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
}

// Empty tensors may come without storage (a framework's empty tensor can have a null pointer).
TEST(FullyMasked, EmptyVarlenBatchWithNullPointers) {
  AttnConfig c = small(DType::kFloat16);
  c.layout = Layout::kVarlen;
  c.batch = 2;
  c.seqlens_q = {0, 0};
  c.seqlens_k = {0, 0};
  AttnCase a(c);
  AttnParams params = a.params();
  for (TensorRef* t : {&params.q, &params.k, &params.v, &params.out, &params.lse}) t->data = nullptr;
  EXPECT_EQ(run_and_catch([&] { attention_forward(params, cpu_context(2)); }), "");
}

// ---- extreme logits -----------------------------------------------------------------------------

TEST(ExtremeLogits, ScoresNearPlusMinus1e4) {
  for (DType dtype : kDtypes) {
    AttnConfig c = small(dtype);
    c.q_stddev = 1e4;  // scale * <q, k> ~ N(0, 1e8): |s| around 1e4
    AttnCase a(c);
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
    EXPECT_EQ(a.out.count_nan(), 0);
  }
}

// Every score near -1e4: softmax is shift invariant, so a kernel that assumes scores near 0
// (a fixed offset, a finite initial max) shows up here.
TEST(ExtremeLogits, AllScoresNearMinus1e4) {
  for (DType dtype : kDtypes) {
    for (bool causal : {false, true}) {
      AttnConfig c = small(dtype);
      c.causal = causal;
      c.scale = 1.0f;
      AttnCase a(c);
      Rng rng(3);
      const double magnitude = std::sqrt(1e4 / c.head_dim_qk);
      for (int64_t n = 0; n < a.q.numel(); ++n) a.q.set(n, magnitude);
      for (int64_t n = 0; n < a.k.numel(); ++n) a.k.set(n, -magnitude + rng.normal(0.0, 0.02));
      EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
    }
  }
}

TEST(ExtremeLogits, LargeSinksAndSoftcap) {
  for (DType dtype : kDtypes) {
    AttnConfig c = small(dtype);
    c.sinks = true;
    c.sink_mean = 1e4;  // the sink takes all the mass: out ~ 0, lse ~ sink
    AttnCase a(c);
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
    c.sink_mean = -1e4;
    c.softcap = 50.0f;
    c.q_stddev = 1e3;
    AttnCase b(c);
    EXPECT_EQ(check_forward(b, cpu_context(2)), "") << c.describe();
  }
}

// ---- NaN confinement ----------------------------------------------------------------------------

// Counts output rows (b, i, h) holding a NaN.
int64_t nan_rows(const AttnCase& a) {
  const AttnConfig& c = a.config;
  int64_t rows = 0;
  for (int64_t r = 0; r < a.out.numel() / c.head_dim_v; ++r) {
    bool has_nan = false;
    for (int64_t d = 0; d < c.head_dim_v; ++d) has_nan |= std::isnan(a.out.get(r * c.head_dim_v + d));
    rows += has_nan ? 1 : 0;
  }
  return rows;
}

TEST(NanConfinement, NanQueryTouchesOnlyItsRow) {
  for (DType dtype : kDtypes) {
    AttnConfig c = small(dtype);
    c.causal = true;
    AttnCase a(c);
    const int64_t b = 1, i = 20, h = 3;
    a.q.set(((b * c.seqlen_q + i) * c.heads_q + h) * c.head_dim_qk + 7, std::nan(""));
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
    EXPECT_EQ(nan_rows(a), 1) << c.describe();
  }
}

// A NaN key reaches the rows that see it (its kv head's query heads, inside the mask) only. Keys
// that the mask hides, even inside the same tile, must not leak.
TEST(NanConfinement, NanKeyTouchesOnlyRowsThatSeeIt) {
  for (DType dtype : kDtypes) {
    AttnConfig c = small(dtype);
    c.seqlen_q = c.seqlen_k = 64;
    c.causal = true;
    c.window_left = 8;
    AttnCase a(c);
    const int64_t b = 0, j = 30, hk = 1;
    a.k.set(((b * c.seqlen_k + j) * c.heads_kv + hk) * c.head_dim_qk + 3, std::nan(""));
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
    // rows 30..38 see key 30, on the 2 query heads of kv head 1
    EXPECT_EQ(nan_rows(a), 9 * 2) << c.describe();
  }
}

TEST(NanConfinement, NanValueInMaskedKeyDoesNotLeak) {
  for (DType dtype : kDtypes) {
    AttnConfig c = small(dtype);
    c.seqlen_q = c.seqlen_k = 64;
    c.causal = true;
    AttnCase a(c);
    a.v.set(((0 * c.seqlen_k + 63) * c.heads_kv + 0) * c.head_dim_v + 0, std::nan(""));  // only row 63 sees key 63
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
    EXPECT_EQ(nan_rows(a), 2) << c.describe();  // row 63 of the 2 query heads of kv head 0
  }
}

TEST(NanConfinement, PagedBlockWithNanOutsideTheSequence) {
  AttnConfig c = small(DType::kFloat16);
  c.layout = Layout::kPaged;
  c.block_size = 16;
  c.seqlens_k = {20, 9};
  c.seqlen_q = 4;
  AttnCase a(c);
  // Slots past each sequence's length inside its last block: never attended.
  const auto table = a.block_table.int_values();
  const int64_t max_blocks = a.block_table.shape()[1];
  for (int64_t b = 0; b < c.batch; ++b) {
    const int64_t last_block = table[b * max_blocks + (c.seqlens_k[b] - 1) / c.block_size];
    const int64_t first_unused = c.seqlens_k[b] % c.block_size;
    if (first_unused == 0) continue;
    for (int64_t slot = first_unused; slot < c.block_size; ++slot) {
      const int64_t row = last_block * c.block_size + slot;
      for (int64_t n = 0; n < c.heads_kv * c.head_dim_qk; ++n) a.k.set(row * c.heads_kv * c.head_dim_qk + n, std::nan(""));
      for (int64_t n = 0; n < c.heads_kv * c.head_dim_v; ++n) a.v.set(row * c.heads_kv * c.head_dim_v + n, std::nan(""));
    }
  }
  EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
  EXPECT_EQ(a.out.count_nan(), 0);
}

// ---- writes: every element, nothing else --------------------------------------------------------

TEST(Writes, PoisonedOutputsFullyWrittenWithPaddedStrides) {
  for (Layout layout : {Layout::kBatched, Layout::kVarlen, Layout::kPaged}) {
    AttnConfig c = small(DType::kBFloat16);
    c.layout = layout;
    c.padded_strides = true;
    if (layout != Layout::kBatched) {
      c.batch = 3;
      c.seqlens_k = {17, 1, 64};
      if (layout == Layout::kVarlen) c.seqlens_q = {5, 0, 64};
    }
    AttnCase a(c);
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();  // poisons, then finds no NaN left
    EXPECT_EQ(a.out.count_nan(), 0);
    EXPECT_EQ(a.lse.count_nan(), 0);
  }
}

TEST(Writes, KvCacheGuardsUntouched) {
  AttnConfig c;
  c.layout = Layout::kDenseCache;
  c.dtype = DType::kFloat16;
  c.batch = 2;
  c.heads_q = 4;
  c.heads_kv = 2;
  c.head_dim_qk = c.head_dim_v = 40;
  c.seqlen_q = c.seqlen_new = 3;
  c.cache_capacity = 32;
  c.cache_seqlens = {29, 0};  // fills the first cache row to its last slot
  c.rotary_dim = 40;
  c.padded_strides = true;
  c.causal = true;
  AttnCase a(c);
  EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
}

}  // namespace
}  // namespace flashsdpa::test
