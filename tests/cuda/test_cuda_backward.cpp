// The CUDA backward (tier cuda-bwd) against the float64 reference with SPEC §6's rule (factor 3),
// mirroring tests/test_backward_grid.cpp at GPU-test sizes: every dtype, odd head dims and
// Dqk != Dv, GQA ratios 1, 2, 8 and Hq, Sq <, =, > Sk, causal and windows, softcap, ALiBi, sinks
// (and their gradient), varlen with empty sequences and seqused_k, fully masked rows, extreme
// logits, padded strides, poisoned gradients, guard regions, and bit-identical reruns. The
// forward that provides out and lse runs on the GPU too, as in training.
//
// Tests named Sanitize* are small and are also run under compute-sanitizer (scripts/gpu-check.sh).
#include <gtest/gtest.h>

#if defined(FLASHSDPA_WITH_CUDA)

#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"

namespace flashsdpa::test {
namespace {

const std::vector<DType> kAllDtypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};

AttnConfig batched(int64_t sq, int64_t sk, int64_t hq, int64_t hkv, int64_t dqk, int64_t dv) {
  AttnConfig c;
  c.layout = Layout::kBatched;
  c.batch = 2;
  c.seqlen_q = sq;
  c.seqlen_k = sk;
  c.heads_q = hq;
  c.heads_kv = hkv;
  c.head_dim_qk = dqk;
  c.head_dim_v = dv;
  return c;
}

void expect_passes(AttnConfig config) {
  for (DType dtype : kAllDtypes) {
    config.dtype = dtype;
    AttnCase c(config);
    EXPECT_EQ(check_backward_cuda(c), "") << config.describe();
  }
}

// ---- a sampled grid, as tests/test_backward_grid.cpp, at sizes a GPU test run affords --------------

constexpr int kGridCases = 72;

AttnConfig grid_config(int n) {
  Rng rng(0xcbac0000u + static_cast<uint64_t>(n));
  AttnConfig c;
  c.seed = 19000 + static_cast<uint64_t>(n);
  c.dtype = kAllDtypes[covering_pick(1, n, kAllDtypes.size())];
  const std::vector<int64_t> dims = {40, 59, 111, 128, 256, 64, 1};
  c.head_dim_qk = dims[covering_pick(2, n, dims.size())];
  c.head_dim_v = rng.coin(0.3) ? rng.pick(std::vector<int64_t>{8, 40, 64, 128}) : c.head_dim_qk;
  pick_heads(c, rng, n, 4);
  pick_geometry_and_modifiers(c, rng, n, {1, 5, 17, 33, 64, 97, 130}, std::numeric_limits<int64_t>::max());
  return c;
}

class CudaBackwardGrid : public ::testing::TestWithParam<int> {};

TEST_P(CudaBackwardGrid, MatchesReference) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const AttnConfig config = grid_config(GetParam());
  AttnCase c(config);
  EXPECT_EQ(check_backward_cuda(c, GetParam() % 2 == 0), "") << config.describe();
}

INSTANTIATE_TEST_SUITE_P(CudaBackward, CudaBackwardGrid, ::testing::Range(0, kGridCases));

// ---- named coverage ------------------------------------------------------------------------------

TEST(CudaBackward, HeadDims) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<int64_t, int64_t>> dims = {{1, 3},     {8, 8},     {40, 40},  {59, 59},   {64, 64},
                                                         {111, 111}, {128, 128}, {256, 256}, {72, 40}, {256, 100}};
  uint64_t seed = 1;
  for (const auto& [dqk, dv] : dims) {
    for (bool causal : {false, true}) {
      AttnConfig c = batched(37, 45, 2, 1, dqk, dv);
      c.causal = causal;
      c.seed = seed++;
      expect_passes(c);
    }
  }
}

TEST(CudaBackward, GqaRatios) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (const auto& [hq, hkv] : std::vector<std::pair<int64_t, int64_t>>{{2, 2}, {4, 2}, {8, 1}, {5, 1}}) {
    AttnConfig c = batched(33, 40, hq, hkv, 64, 64);
    c.seed = 100 + static_cast<uint64_t>(hq);
    expect_passes(c);
  }
}

TEST(CudaBackward, QueryAndKeyLengthsAndMasks) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (const auto& [sq, sk] : std::vector<std::pair<int64_t, int64_t>>{{17, 50}, {33, 33}, {50, 17}, {1, 40}, {40, 1}}) {
    for (int mask = 0; mask < 4; ++mask) {
      AttnConfig c = batched(sq, sk, 2, 1, 64, 64);
      c.causal = mask == 1 || mask == 3;
      if (mask == 2) {
        c.window_left = 7;
        c.window_right = 3;
      }
      if (mask == 3) c.window_left = 5;
      c.seed = seed++;
      expect_passes(c);
    }
  }
}

TEST(CudaBackward, SoftcapAlibiSinks) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 300;
  for (int modifiers = 1; modifiers < 8; ++modifiers) {
    AttnConfig c = batched(40, 47, 4, 2, 64, 40);
    c.causal = modifiers % 2 == 0;
    if (modifiers & 1) c.softcap = 10.0f;
    if (modifiers & 2) c.alibi = modifiers & 1 ? Alibi::kPerBatch : Alibi::kPerHead;
    if (modifiers & 4) {
      c.sinks = true;
      c.sink_mean = 1.0;
    }
    c.seed = seed++;
    expect_passes(c);
  }
}

AttnConfig training_shape(DType dtype) {
  AttnConfig c = batched(130, 130, 4, 2, 64, 64);
  c.dtype = dtype;
  c.causal = true;
  c.sinks = true;
  return c;
}

TEST(CudaBackward, SinksGradient) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (DType dtype : kAllDtypes) {
    AttnConfig c = training_shape(dtype);
    c.sink_mean = 1.5;  // sinks that take a real share of the mass
    c.window_left = 20;
    AttnCase a(c);
    EXPECT_EQ(check_backward_cuda(a), "") << c.describe();
  }
}

TEST(CudaBackward, ExtremeLogits) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (DType dtype : kAllDtypes) {
    AttnConfig c = training_shape(dtype);
    c.seqlen_q = c.seqlen_k = 70;
    c.q_stddev = 1e4;  // |s| around 1e4: near one-hot rows, softmax recomputed from the backward's scores
    AttnCase a(c);
    EXPECT_EQ(check_backward_cuda(a), "") << c.describe();
    c.q_stddev = 30.0;  // |s| in the hundreds: peaked but not one-hot
    AttnCase b(c);
    EXPECT_EQ(check_backward_cuda(b), "") << c.describe();
  }
}

TEST(CudaBackward, VarlenWithEmptySequencesAndSequsedK) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (DType dtype : kAllDtypes) {
    AttnConfig c = training_shape(dtype);
    c.layout = Layout::kVarlen;
    c.batch = 4;
    c.seqlens_q = {20, 7, 0, 33};
    c.seqlens_k = {30, 7, 9, 0};
    c.seqused_k = {11, 0, 9, 0};
    c.causal = false;
    c.window_left = 5;
    c.window_right = 3;
    AttnCase a(c);
    EXPECT_EQ(check_backward_cuda(a), "") << c.describe();
  }
}

TEST(CudaBackward, FullyMaskedRows) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (bool sinks : {false, true}) {
    AttnConfig c = training_shape(DType::kFloat16);
    c.seqlen_q = 90;
    c.seqlen_k = 30;  // causal bottom-right: the first 60 rows see nothing
    c.sinks = sinks;
    expect_passes(c);
  }
}

// deterministic = true: bit-identical gradients over reruns (every run is deterministic).
TEST(CudaBackward, DeterministicIsBitIdentical) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
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
    for (int run = 0; run < 3; ++run) {
      AttnCase a(c);
      ASSERT_EQ(check_backward_cuda(a, /*deterministic=*/true), "") << c.describe();
      std::vector<std::vector<uint8_t>> bytes = {a.dq.guarded_bytes(), a.dk.guarded_bytes(), a.dv.guarded_bytes(),
                                                 a.dsinks.guarded_bytes()};
      if (first.empty()) first = bytes;
      else EXPECT_TRUE(bytes == first) << c.describe() << " run " << run << " gave different bits";
    }
  }
}

// What explain says for a backward on CUDA tensors.
TEST(CudaBackward, ExplainNamesTheTier) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnCase c(training_shape(DType::kFloat16));
  DeviceMirror dev(c.tensors());
  ASSERT_EQ(dev.error(), "");
  const Selection sel = explain(device_params(c, dev), Op::kBackward, cuda_context());
  EXPECT_TRUE(sel.supported) << sel.reason;
  EXPECT_EQ(sel.tier, "cuda-bwd") << sel.reason;
  EXPECT_NE(sel.reason.find("deterministic"), std::string::npos) << sel.reason;
}

// ---- small cases for compute-sanitizer --------------------------------------------------------------

TEST(CudaBackward, SanitizeBasic) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (DType dtype : kAllDtypes) {
    AttnConfig c = batched(21, 19, 4, 2, 59, 40);
    c.dtype = dtype;
    c.causal = true;
    c.sinks = true;
    c.softcap = 10.0f;
    c.alibi = Alibi::kPerHead;
    c.padded_strides = true;
    c.seed = seed++;
    AttnCase a(c);
    EXPECT_EQ(check_backward_cuda(a), "") << c.describe();

    AttnConfig v = training_shape(dtype);
    v.layout = Layout::kVarlen;
    v.batch = 3;
    v.seqlens_q = {9, 0, 17};
    v.seqlens_k = {13, 4, 0};
    v.seed = seed++;
    AttnCase b(v);
    EXPECT_EQ(check_backward_cuda(b), "") << v.describe();
  }
}

// Decreasing, negative and past-the-end cu_seqlens: sequences clamp to [0, total), and nothing is
// read or written outside the tensors (guards intact; compute-sanitizer's memcheck watches the rest).
TEST(CudaBackward, SanitizeCuSeqlensOutOfRange) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (DType dtype : kAllDtypes) {
    AttnConfig config;
    config.dtype = dtype;
    config.layout = Layout::kVarlen;
    config.batch = 3;
    config.heads_q = 2;
    config.heads_kv = 1;
    config.head_dim_qk = config.head_dim_v = 64;
    config.seqlens_q = {10, 20, 30};
    config.seqlens_k = {15, 25, 35};
    config.sinks = true;
    config.seed = 1300;
    AttnCase c(config);
    const std::vector<int32_t> cu_q = {0, 45, -7, 1 << 30};
    const std::vector<int32_t> cu_k = {0, 1 << 29, 12, -3};
    for (int64_t n = 0; n < 4; ++n) {
      c.cu_seqlens_q.set_int(n, cu_q[static_cast<size_t>(n)]);
      c.cu_seqlens_k.set_int(n, cu_k[static_cast<size_t>(n)]);
    }
    DeviceMirror dev(c.tensors());
    ASSERT_EQ(dev.error(), "");
    const AttnBwdParams params = device_bwd_params(c, dev);
    EXPECT_EQ(run_and_catch([&] { attention_forward(params.fwd, cuda_context()); }), "");
    EXPECT_EQ(run_and_catch([&] { attention_backward(params, cuda_context()); }), "");
    EXPECT_EQ(cuda_failure(cudaDeviceSynchronize(), "kernel"), "");
    ASSERT_EQ(dev.copy_back(), "");
    EXPECT_EQ(check_all_guards(c), "") << config.describe();
  }
}

// A refused call writes nothing: head dims past 256 are refused before any launch.
TEST(CudaBackward, SanitizeRefusalWritesNothing) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = batched(9, 9, 2, 1, 64, 300);
  c.dtype = DType::kBFloat16;
  AttnCase a(c);
  for (HostTensor* g : {&a.dq, &a.dk, &a.dv}) g->poison();
  DeviceMirror dev(a.tensors());
  ASSERT_EQ(dev.error(), "");
  const AttnBwdParams params = device_bwd_params(a, dev);
  const Selection sel = explain(params.fwd, Op::kBackward, cuda_context());
  EXPECT_FALSE(sel.supported);
  EXPECT_NE(sel.reason.find("1..256"), std::string::npos) << sel.reason;
  const std::vector<uint8_t> dq_before = a.dq.guarded_bytes();
  EXPECT_NE(run_and_catch([&] { attention_backward(params, cuda_context()); }), "");
  EXPECT_EQ(cuda_failure(cudaDeviceSynchronize(), "kernel"), "");
  ASSERT_EQ(dev.copy_back(), "");
  EXPECT_TRUE(a.dq.guarded_bytes() == dq_before);
}

}  // namespace
}  // namespace flashsdpa::test

#endif  // FLASHSDPA_WITH_CUDA
