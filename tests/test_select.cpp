// The selector's host-side rules that need no GPU: FLASHSDPA_CUDA_FORWARD_TIER's list, read by
// core::forced_prefill_tier for the selector and the GPU tests alike.
#include <gtest/gtest.h>

#include <string>

#include "core/select.h"

namespace flashsdpa::core {
namespace {

TEST(ForcedPrefillTier, OneEntryPerDtypeFamily) {
  std::string unknown;
  EXPECT_EQ(forced_prefill_tier("cuda-mma-sm80", false, &unknown), Tier::kCudaMma);
  EXPECT_EQ(forced_prefill_tier("cuda-mma-sm80", true, &unknown), Tier::kNone);  // fp32 calls: not forced
  EXPECT_EQ(forced_prefill_tier("cuda-mma-sm80,cuda-fp32", true, &unknown), Tier::kCudaFp32);
  EXPECT_EQ(forced_prefill_tier("cuda-fp32,cuda-wgmma-sm90", false, &unknown), Tier::kCudaWgmma);
  EXPECT_EQ(forced_prefill_tier("cuda-3xtf32-sm90", true, &unknown), Tier::kCuda3xTf32);
  EXPECT_EQ(forced_prefill_tier("cuda-dmma-sm90", true, &unknown), Tier::kCudaDmma);
  EXPECT_EQ(forced_prefill_tier("cuda-dmma-sm90", false, &unknown), Tier::kNone);
  EXPECT_EQ(unknown, "");
}

TEST(ForcedPrefillTier, EmptyEntriesAreSkippedAndTheFirstMatchWins) {
  std::string unknown;
  EXPECT_EQ(forced_prefill_tier("", false, &unknown), Tier::kNone);
  EXPECT_EQ(forced_prefill_tier(",,cuda-fp32,", true, &unknown), Tier::kCudaFp32);
  EXPECT_EQ(forced_prefill_tier("cuda-fp32,cuda-3xtf32-sm90", true, &unknown), Tier::kCudaFp32);
  EXPECT_EQ(unknown, "");
}

TEST(ForcedPrefillTier, NamesThatAreNoPrefillTierAreReported) {
  std::string unknown;
  EXPECT_EQ(forced_prefill_tier("cuda-decode,cuda-fp32", true, &unknown), Tier::kCudaFp32);
  EXPECT_EQ(unknown, "cuda-decode");
  unknown.clear();
  EXPECT_EQ(forced_prefill_tier("cuda-mma-sm80,no-such-tier,other", false, &unknown), Tier::kCudaMma);
  EXPECT_EQ(unknown, "no-such-tier");
  EXPECT_EQ(forced_prefill_tier("CUDA-FP32", true, nullptr), Tier::kNone);  // names are exact
}

}  // namespace
}  // namespace flashsdpa::core
