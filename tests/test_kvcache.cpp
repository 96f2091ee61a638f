// attention_kvcache on the CPU backend against the reference: append of new tokens with rotary
// (interleaved and NeoX, partial rotary_dim) into dense caches (cache_batch_idx, cache_leftpad)
// and paged caches (block sizes 1, 16, 256), then attention. The caches must change in the
// appended slots only, and the bytes around them never.
#include <gtest/gtest.h>

#include "test_util.h"

namespace flashsdpa::test {
namespace {

constexpr int kGridCases = 300;

AttnConfig kvcache_config(int n) {
  Rng rng(0xcac4e000u + static_cast<uint64_t>(n));
  AttnConfig c;
  c.seed = 5000 + static_cast<uint64_t>(n);
  const std::vector<DType> dtypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};
  c.dtype = dtypes[covering_pick(1, n, dtypes.size())];
  const std::vector<int64_t> dims = {64, 128, 59, 40, 111, 256};
  c.head_dim_qk = dims[covering_pick(2, n, dims.size())];
  c.head_dim_v = rng.coin(0.25) ? rng.pick(std::vector<int64_t>{32, 64, 96}) : c.head_dim_qk;
  pick_heads(c, rng, n, 5);
  c.batch = rng.uniform_int(1, 3);

  const bool paged = covering_pick(4, n, 2) == 1;
  c.layout = paged ? Layout::kPagedCache : Layout::kDenseCache;
  if (paged) c.block_size = std::vector<int64_t>{1, 16, 256}[covering_pick(5, n, 3)];
  c.cache_capacity = rng.pick(std::vector<int64_t>{1, 8, 40, 97, 200, 300, 1025});
  c.seqlen_new = std::min<int64_t>(c.cache_capacity, rng.pick(std::vector<int64_t>{0, 1, 1, 3, 16}));
  c.seqlen_q = rng.coin(0.5) ? 1 : rng.uniform_int(1, 24);
  for (int64_t b = 0; b < c.batch; ++b) c.cache_seqlens.push_back(rng.uniform_int(0, c.cache_capacity - c.seqlen_new));

  const int rotary_kind = static_cast<int>(covering_pick(6, n, 3));  // none, interleaved, NeoX
  if (rotary_kind > 0 && c.seqlen_new > 0 && c.head_dim_qk >= 2) {
    c.rotary_interleaved = rotary_kind == 1;
    const int64_t full = c.head_dim_qk - c.head_dim_qk % 2;
    c.rotary_dim = rng.coin() ? full : std::max<int64_t>(2, (full / 2) - (full / 2) % 2);
  }
  if (!paged && rng.coin(0.4)) {
    c.cache_batch_idx = true;
    c.extra_cache_rows = rng.uniform_int(0, 2);
  }
  if (rng.coin(0.3)) {
    for (int64_t b = 0; b < c.batch; ++b) c.cache_leftpad.push_back(rng.uniform_int(0, c.cache_seqlens[b] + c.seqlen_new));
  }

  const int mask_kind = static_cast<int>(covering_pick(7, n, 4));
  if (mask_kind == 1) c.causal = true;
  if (mask_kind == 2) {
    c.window_left = rng.uniform_int(0, 50);
    c.window_right = rng.coin() ? 0 : rng.uniform_int(0, 5);
  }
  if (mask_kind == 3) {
    c.causal = true;
    c.window_left = rng.uniform_int(0, 50);
  }
  if (rng.coin(0.25)) c.softcap = 15.0f;
  if (rng.coin(0.25)) c.alibi = rng.coin() ? Alibi::kPerHead : Alibi::kPerBatch;
  if (rng.coin(0.3)) c.sinks = true;
  c.num_splits = static_cast<int>(rng.pick(std::vector<int64_t>{0, 0, 1, 3}));
  c.with_lse = rng.coin(0.8);
  c.padded_strides = rng.coin(0.2);
  return c;
}

class KvCacheGrid : public ::testing::TestWithParam<int> {};

TEST_P(KvCacheGrid, MatchesReference) {
  AttnCase c(kvcache_config(GetParam()));
  EXPECT_EQ(check_kvcache(c, cpu_context(2)), "") << c.config.describe();
}

INSTANTIATE_TEST_SUITE_P(Sampled, KvCacheGrid, ::testing::Range(0, kGridCases));

AttnConfig decode(Layout layout, DType dtype, int64_t block_size = 16) {
  AttnConfig c;
  c.layout = layout;
  c.dtype = dtype;
  c.batch = 3;
  c.heads_q = 8;
  c.heads_kv = 2;
  c.head_dim_qk = c.head_dim_v = 64;
  c.seqlen_q = 1;
  c.seqlen_new = 1;
  c.cache_capacity = 257;
  c.cache_seqlens = {0, 100, 256};
  c.block_size = block_size;
  c.causal = true;
  return c;
}

TEST(KvCache, RotaryInterleavedAndNeoxPartial) {
  for (bool interleaved : {true, false}) {
    for (int64_t rotary_dim : {64, 32, 2}) {
      AttnConfig c = decode(Layout::kDenseCache, DType::kFloat16);
      c.seqlen_q = c.seqlen_new = 4;
      c.cache_seqlens = {0, 100, 253};
      c.rotary_dim = rotary_dim;
      c.rotary_interleaved = interleaved;
      AttnCase a(c);
      EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
    }
  }
}

TEST(KvCache, NonCausalRotatesEveryQueryAtTheCacheLength) {
  AttnConfig c = decode(Layout::kPagedCache, DType::kFloat32);
  c.causal = false;
  c.seqlen_q = c.seqlen_new = 5;
  c.cache_seqlens = {3, 50, 200};
  c.rotary_dim = 64;
  c.rotary_interleaved = false;
  AttnCase a(c);
  EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
}

TEST(KvCache, CacheBatchIdxAndLeftpad) {
  AttnConfig c = decode(Layout::kDenseCache, DType::kBFloat16);
  c.cache_batch_idx = true;
  c.extra_cache_rows = 2;
  c.cache_leftpad = {0, 37, 257};  // the last sequence sees only padding: a fully masked row
  c.rotary_dim = 32;
  c.sinks = true;
  AttnCase a(c);
  EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
}

TEST(KvCache, PagedBlockSizes) {
  for (int64_t block_size : {1, 16, 256}) {
    AttnConfig c = decode(Layout::kPagedCache, DType::kFloat16, block_size);
    c.rotary_dim = 64;
    AttnCase a(c);
    EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
  }
}

TEST(KvCache, NoAppendAttendsTheCache) {
  for (Layout layout : {Layout::kDenseCache, Layout::kPagedCache}) {
    AttnConfig c = decode(layout, DType::kFloat32);
    c.seqlen_new = 0;
    c.cache_seqlens = {1, 0, 257};
    AttnCase a(c);
    EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
  }
}

TEST(KvCache, SplitCountsAgree) {
  for (int splits : {0, 1, 2, 7, 64}) {
    AttnConfig c = decode(Layout::kDenseCache, DType::kFloat32);
    c.num_splits = splits;
    c.sinks = true;
    c.softcap = 10.0f;
    AttnCase a(c);
    EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
  }
}

}  // namespace
}  // namespace flashsdpa::test
