// Shapes aimed at the tile structure of the fp16/bf16 prefill tiers, cuda-wgmma-sm90 (128-row
// blocks of two 64-row warpgroups, 128-key tiles at head dim 128, 64-key tiles at 64 and 256) and
// cuda-mma-sm80 (64- and 32-key tiles): lengths one either side of the tile edges, causal with Sq != Sk, varlen with
// empty sequences, NaN keys that only some rows may see, extreme logits at every head dim, and
// the selector's choice between the two tiers (FLASHSDPA_CUDA_FORWARD_TIER included).
//
// The suite is CudaForward, so scripts/gpu-check.sh runs these in both of its tier passes.
#include <gtest/gtest.h>

#if defined(FLASHSDPA_WITH_CUDA)

#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace flashsdpa::test {
namespace {

void expect_passes_half(AttnConfig config) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    config.dtype = dtype;
    AttnCase c(config);
    EXPECT_EQ(check_forward_cuda(c, tier_for(c)), "") << config.describe();
  }
}

AttnConfig batched_case(int64_t sq, int64_t sk, int64_t d, uint64_t seed) {
  AttnConfig c;
  c.layout = Layout::kBatched;
  c.batch = 1;
  c.seqlen_q = sq;
  c.seqlen_k = sk;
  c.heads_q = 2;
  c.heads_kv = 1;
  c.head_dim_qk = c.head_dim_v = d;
  c.seed = seed;
  return c;
}

TEST(CudaForward, TileEdgeLengths) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 2000;
  for (int64_t d : {64, 128, 256}) {
    for (int64_t s : {63, 65, 127, 129, 255, 257}) {
      for (bool causal : {false, true}) {
        AttnConfig c = batched_case(s, s + (causal ? 0 : 64), d, seed++);
        c.causal = causal;
        expect_passes_half(c);
      }
    }
  }
}

TEST(CudaForward, CausalUnequalLengths) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 2100;
  const std::vector<std::pair<int64_t, int64_t>> lengths = {{100, 300}, {300, 100}, {129, 700}, {200, 129}};
  for (const auto& [sq, sk] : lengths) {
    for (int64_t d : {64, 128, 256}) {
      AttnConfig c = batched_case(sq, sk, d, seed++);
      c.causal = true;
      if (d == 128) c.window_left = 150;  // a window whose left edge cuts through tiles as well
      expect_passes_half(c);
    }
  }
}

TEST(CudaForward, VarlenAcrossTileEdges) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 2200;
  for (int64_t d : {128, 256, 72}) {
    for (bool causal : {false, true}) {
      AttnConfig c;
      c.layout = Layout::kVarlen;
      c.batch = 6;
      c.heads_q = 4;
      c.heads_kv = 2;
      c.head_dim_qk = c.head_dim_v = d;
      c.seqlens_q = {0, 129, 1, 256, 0, 64};
      c.seqlens_k = {5, 300, 0, 256, 64, 0};
      c.causal = causal;
      c.sinks = causal;
      c.seed = seed++;
      expect_passes_half(c);
    }
  }
}

// A NaN key is seen only by the rows whose mask allows it: with causal masking, key j of a
// 300-key sequence reaches rows >= j only. Rows of the same tiles that must not see it stay finite
// (the reference's NaN pattern is matched exactly).
TEST(CudaForward, NanKeyStaysInItsRows) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 2300;
  for (int64_t d : {64, 128, 256}) {
    AttnConfig config = batched_case(300, 300, d, seed++);
    config.causal = true;
    for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
      config.dtype = dtype;
      AttnCase c(config);
      const int64_t key = 200;  // inside a tile that rows 128..199 compute with this key masked
      for (int64_t e = 0; e < d; ++e) c.k.set(key * d + e, std::numeric_limits<double>::quiet_NaN());
      EXPECT_EQ(check_forward_cuda(c, tier_for(c)), "") << config.describe();
      int64_t nan_rows = 0;
      for (int64_t n = 0; n < c.out.numel(); n += d) nan_rows += std::isnan(c.out.get(n)) ? 1 : 0;
      EXPECT_EQ(nan_rows, 2 * (300 - key)) << config.describe();  // 2 heads x rows 200..299
    }
  }
}

TEST(CudaForward, ExtremeLogitsEveryHeadDim) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 2400;
  for (int64_t d : {64, 128, 256}) {
    for (bool causal : {false, true}) {
      AttnConfig c = batched_case(200, 260, d, seed++);
      c.q_stddev = 1000.0;
      c.causal = causal;
      c.softcap = causal ? 0.0f : 50.0f;
      expect_passes_half(c);
    }
  }
}

// Restores FLASHSDPA_CUDA_FORWARD_TIER as it was when the test began.
class ForcedTier {
 public:
  ForcedTier() {
    const char* v = std::getenv(kName);
    had_ = v != nullptr;
    if (had_) old_ = v;
  }
  ~ForcedTier() {
    if (had_) setenv(kName, old_.c_str(), 1);
    else unsetenv(kName);
  }
  void set(const char* tier) {
    if (tier == nullptr) unsetenv(kName);
    else setenv(kName, tier, 1);
  }

 private:
  static constexpr const char* kName = "FLASHSDPA_CUDA_FORWARD_TIER";
  bool had_ = false;
  std::string old_;
};

Selection explain_on_gpu(AttnCase& c) {
  DeviceMirror dev(c.tensors());
  EXPECT_EQ(dev.error(), "");
  return explain(device_params(c, dev), Op::kForward, cuda_context());
}

TEST(CudaForward, HopperSelection) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  if (cuda::device_capability() != 90) GTEST_SKIP() << "cuda-wgmma-sm90 is chosen on compute capability 9.0 only";
  ForcedTier env;
  AttnConfig config = batched_case(300, 300, 128, 2500);
  config.dtype = DType::kBFloat16;
  AttnCase dense(config);
  config.padded_strides = true;
  AttnCase padded(config);
  AttnConfig paged_config;
  paged_config.dtype = DType::kBFloat16;
  paged_config.layout = Layout::kPaged;
  paged_config.batch = 2;
  paged_config.heads_q = 2;
  paged_config.heads_kv = 1;
  paged_config.head_dim_qk = paged_config.head_dim_v = 128;
  paged_config.seqlens_k = {100, 300};
  paged_config.seqlen_q = 40;
  AttnCase paged(paged_config);

  env.set(nullptr);
  Selection sel = explain_on_gpu(dense);
  EXPECT_EQ(sel.tier, "cuda-wgmma-sm90") << sel.reason;
  sel = explain_on_gpu(padded);
  EXPECT_EQ(sel.tier, "cuda-mma-sm80") << sel.reason;
  EXPECT_NE(sel.reason.find("16-byte aligned"), std::string::npos) << sel.reason;
  sel = explain_on_gpu(paged);
  EXPECT_EQ(sel.tier, "cuda-mma-sm80") << sel.reason;
  EXPECT_NE(sel.reason.find("paged"), std::string::npos) << sel.reason;

  env.set("cuda-mma-sm80");
  sel = explain_on_gpu(dense);
  EXPECT_EQ(sel.tier, "cuda-mma-sm80") << sel.reason;
  EXPECT_NE(sel.reason.find("FLASHSDPA_CUDA_FORWARD_TIER"), std::string::npos) << sel.reason;

  env.set("cuda-wgmma-sm90");
  sel = explain_on_gpu(paged);
  EXPECT_FALSE(sel.supported) << sel.tier << ": " << sel.reason;
  EXPECT_NE(sel.reason.find("paged"), std::string::npos) << sel.reason;

  env.set("no-such-tier");
  sel = explain_on_gpu(dense);
  EXPECT_FALSE(sel.supported) << sel.tier << ": " << sel.reason;
}

}  // namespace
}  // namespace flashsdpa::test

#endif
