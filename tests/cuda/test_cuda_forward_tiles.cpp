// Shapes aimed at the tile structure of the fp16/bf16 prefill tiers, cuda-wgmma-sm90 (128-row
// blocks of two 64-row warpgroups, 128-key tiles at head dim 128, 64-key tiles at 64 and 256) and
// cuda-mma-sm80 (64- and 32-key tiles): lengths one either side of the tile edges, causal with Sq != Sk, varlen with
// empty sequences, NaN/Inf keys and values that only some rows may see, extreme logits at every head dim, and
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

// cuda-3xtf32-sm90's tiles (32-key tiles at head dim 128, 64-key at 64; 128-row blocks): lengths
// one either side of the edges, causal and windows with Sq != Sk, GQA, every modifier, and head
// dims padded inside a tile (Dqk != Dv included). cuda-fp32 runs the same cases in the forced pass.
TEST(CudaForward, Fp32TensorCoreTileEdges) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 2700;
  const std::vector<std::pair<int64_t, int64_t>> dims = {{128, 128}, {64, 64}, {96, 128}, {128, 36}, {8, 8}};
  for (const auto& [dqk, dv] : dims) {
    for (int64_t s : {31, 33, 63, 65, 129, 257}) {
      for (int variant = 0; variant < 3; ++variant) {
        AttnConfig c = batched_case(s, s + 37 * variant, dqk, seed++);
        c.head_dim_v = dv;
        c.dtype = DType::kFloat32;
        c.heads_q = variant == 2 ? 4 : 2;
        c.causal = variant == 1;
        if (variant == 2) {  // window, softcap, ALiBi, sinks, GQA 4/1
          c.window_left = 40;
          c.window_right = 7;
          c.softcap = 30.0f;
          c.alibi = Alibi::kPerHead;
          c.sinks = true;
        }
        AttnCase attn(c);
        EXPECT_EQ(check_forward_cuda(attn, tier_for(attn)), "") << c.describe();
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

// A non-finite key or value is seen only by the rows whose mask allows it (SPEC §2). Keys j, j + 1,
// j + 2 get +Inf, NaN and -Inf in K, in V, or in both, where a computed tile holds rows that
// allow them and rows that mask them: the causal diagonal, both edges of a window, and causal
// with Sq != Sk (bottom-right aligned). Out and lse are compared with the reference including its
// exact NaN/Inf pattern (with V alone, the first row past a right edge sees only +Inf and the
// last row before a left edge only -Inf: out is exactly +-Inf there), and the masking rows named
// below are checked to be finite.
// Before the prefill tiers checked boundary V tiles, a masked key's probability 0 met its
// non-finite value in the tile-wide product (0 x NaN, 0 x Inf = NaN), so those rows came out NaN
// and both checks failed for V; K was already confined (masked scores are selected to -inf).
// Every prefill tier: fp16/bf16 on cuda-wgmma-sm90 (or cuda-mma-sm80 when forced, and for the
// head dim 67, whose rows are not 16-byte aligned), fp32 on cuda-fp32.
TEST(CudaForward, NonFiniteKeysAndValuesStayInTheirRows) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  struct Geometry {
    const char* name;
    int64_t sq, sk, window_left, window_right;
    bool causal;
    int64_t key;                       // keys key .. key + 2 get +Inf, NaN, -Inf
    std::vector<int64_t> masking_rows;  // rows that share a computed tile with the keys and mask all three
    std::vector<std::pair<int64_t, double>> inf_rows;  // with V alone: rows whose out is this infinity
  };
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<Geometry> geometries = {
      {"causal diagonal", 300, 300, -1, -1, true, 200, {199, 128}, {{200, inf}}},
      // rows i see keys [i - 50, i + 20]: right edge at rows 129 | 130, left edge at rows 202 | 203
      {"window edges", 300, 300, 50, 20, false, 150, {129, 203}, {{130, inf}, {202, -inf}}},
      {"causal Sq != Sk", 100, 300, -1, -1, true, 250, {49}, {{50, inf}}},  // row i sees keys <= i + 200
  };
  enum class Where { kKey, kValue, kBoth };
  const double values[3] = {inf, std::numeric_limits<double>::quiet_NaN(), -inf};
  uint64_t seed = 2300;
  for (const Geometry& geo : geometries) {
    for (int64_t d : {64, 128, 256, 67}) {
      for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
        for (Where where : {Where::kKey, Where::kValue, Where::kBoth}) {
          AttnConfig config = batched_case(geo.sq, geo.sk, d, seed++);
          config.dtype = dtype;
          config.causal = geo.causal;
          config.window_left = geo.window_left;
          config.window_right = geo.window_right;
          AttnCase c(config);
          for (int n = 0; n < 3; ++n) {
            const int64_t key = geo.key + n;  // batch 1, one kv head: key row `key` starts at key * d
            for (int64_t e = 0; e < d; ++e) {
              if (where != Where::kValue) c.k.set(key * d + e, values[n]);
              if (where != Where::kKey) c.v.set(key * d + e, values[n]);
            }
          }
          const std::string what = config.describe() + " (" + geo.name + ", non-finite " +
                                   (where == Where::kKey ? "K" : where == Where::kValue ? "V" : "K and V") + ")";
          EXPECT_EQ(check_forward_cuda(c, tier_for(c)), "") << what;
          for (int64_t row : geo.masking_rows)
            for (int64_t h = 0; h < config.heads_q; ++h)
              for (int64_t e = 0; e < d; ++e)
                ASSERT_TRUE(std::isfinite(c.out.get((row * config.heads_q + h) * d + e)))
                    << what << ": row " << row << " head " << h << " column " << e;
          if (where == Where::kValue) {
            for (const auto& [row, value] : geo.inf_rows)
              for (int64_t h = 0; h < config.heads_q; ++h)
                for (int64_t e = 0; e < d; ++e)
                  ASSERT_EQ(c.out.get((row * config.heads_q + h) * d + e), value)
                      << what << ": row " << row << " head " << h << " column " << e;
          }
        }
      }
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

// fp32 on Hopper: cuda-3xtf32-sm90 for aligned linear layouts up to head dim 128, cuda-dmma-sm90
// above, cuda-fp32 for the rest (paged K/V, unaligned rows) and when forced; a forced fp16/bf16
// tier leaves fp32 calls alone.
TEST(CudaForward, HopperSelectionFp32) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  if (cuda::device_capability() != 90) GTEST_SKIP() << "cuda-3xtf32-sm90 is chosen on compute capability 9.0 only";
  ForcedTier env;
  AttnConfig config = batched_case(300, 300, 128, 2600);
  config.dtype = DType::kFloat32;
  AttnCase dense(config);
  config.head_dim_qk = config.head_dim_v = 256;
  AttnCase wide(config);
  config.head_dim_qk = config.head_dim_v = 128;
  config.padded_strides = true;
  AttnCase padded(config);
  AttnConfig paged_config;
  paged_config.dtype = DType::kFloat32;
  paged_config.layout = Layout::kPaged;
  paged_config.batch = 2;
  paged_config.heads_q = 2;
  paged_config.heads_kv = 1;
  paged_config.head_dim_qk = paged_config.head_dim_v = 64;
  paged_config.seqlens_k = {100, 300};
  paged_config.seqlen_q = 40;
  AttnCase paged(paged_config);

  env.set(nullptr);
  Selection sel = explain_on_gpu(dense);
  EXPECT_EQ(sel.tier, "cuda-3xtf32-sm90") << sel.reason;
  sel = explain_on_gpu(wide);
  EXPECT_EQ(sel.tier, "cuda-dmma-sm90") << sel.reason;
  EXPECT_NE(sel.reason.find("cuda-3xtf32-sm90 cannot serve this call"), std::string::npos) << sel.reason;
  for (AttnCase* c : {&padded, &paged}) {
    sel = explain_on_gpu(*c);
    EXPECT_EQ(sel.tier, "cuda-fp32") << sel.reason;
    EXPECT_NE(sel.reason.find("cuda-3xtf32-sm90 cannot serve this call"), std::string::npos) << sel.reason;
    EXPECT_NE(sel.reason.find("cuda-dmma-sm90 cannot serve this call"), std::string::npos) << sel.reason;
  }

  {  // a forward that feeds a backward asks for exact products
    DeviceMirror dev(dense.tensors());
    AttnParams params = device_params(dense, dev);
    params.exact_fp32 = true;
    sel = explain(params, Op::kForward, cuda_context());
    EXPECT_EQ(sel.tier, "cuda-fp32") << sel.reason;
    EXPECT_NE(sel.reason.find("exact_fp32"), std::string::npos) << sel.reason;
  }

  env.set("cuda-mma-sm80");
  sel = explain_on_gpu(dense);
  EXPECT_EQ(sel.tier, "cuda-3xtf32-sm90") << sel.reason;

  env.set("cuda-mma-sm80,cuda-fp32");
  sel = explain_on_gpu(dense);
  EXPECT_EQ(sel.tier, "cuda-fp32") << sel.reason;
  EXPECT_NE(sel.reason.find("FLASHSDPA_CUDA_FORWARD_TIER"), std::string::npos) << sel.reason;

  env.set("cuda-3xtf32-sm90");
  sel = explain_on_gpu(paged);
  EXPECT_FALSE(sel.supported) << sel.tier << ": " << sel.reason;
  EXPECT_NE(sel.reason.find("paged"), std::string::npos) << sel.reason;

  env.set("cuda-dmma-sm90");
  sel = explain_on_gpu(dense);  // head dim 128: the 256-wide tile only
  EXPECT_FALSE(sel.supported) << sel.tier << ": " << sel.reason;
  EXPECT_NE(sel.reason.find("up to 128"), std::string::npos) << sel.reason;
  sel = explain_on_gpu(wide);
  EXPECT_EQ(sel.tier, "cuda-dmma-sm90") << sel.reason;
}

}  // namespace
}  // namespace flashsdpa::test

#endif
