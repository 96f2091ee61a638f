// cuda-decode against the float64 reference (SPEC §6): attention_kvcache over dense and paged
// caches (append with interleaved / NeoX / partial rotary, cache_batch_idx, cache_leftpad, every
// mask and modifier, sinks, LSE, forced and heuristic split counts), paged == dense bit for bit,
// paged_kv_write (batched and varlen), forward over a paged cache with varlen q (continuous
// batching), and SPEC §5 safety: bad index tensors read and write nothing out of bounds when
// unchecked and raise in checked mode, with guard regions around every tensor.
// DecodeKvcacheFp32: the same KV-cache coverage for fp32 caches, on both tiers that serve them:
// cuda-decode's fp32 kernel (decoding steps; decode_fp32.cuh) and cuda-fp32 (the shared append
// kernel, then the exact fp32 forward with the queries rotated as they load; longer appends).
//
// The tier is driven below the selector (core::prepare_* then cuda::kvcache / decode_forward /
// paged_kv_write), so these tests do not depend on how the selector routes calls; the tier is
// cuda-decode for fp16/bf16 and the suite's parameter for fp32 (kvcache_tier; cuda-decode outside
// DecodeKvcacheFp32). Tests named Sanitize* are small and also run under compute-sanitizer
// (scripts/gpu-decode-check.sh).
//
// The attention tests (DecodeKvcache, DecodeSafety, DecodeForward) run once per kernel variant
// (cuda::decode_variant_name: the shipped kernel and those under measurement), named
// Decode/<Suite>.<Test>/<variant>.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/select.h"
#include "cuda/cuda_backend.h"
#include "cuda/decode_tier.h"
#include "gpu_test_util.h"

namespace flashsdpa::test {
namespace {

const std::vector<DType> kHalfTypes = {DType::kFloat16, DType::kBFloat16};
const std::vector<DType> kFp32 = {DType::kFloat32};
const std::vector<DType> kAllTypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};

// The tier that runs fp32 KV-cache calls in these tests (DecodeKvcacheFp32's parameter).
core::Tier g_fp32_tier = core::Tier::kCudaDecode;

// The tier that runs attention_kvcache for a dtype: cuda-decode, or g_fp32_tier for fp32.
core::Tier kvcache_tier(DType dtype) { return dtype == DType::kFloat32 ? g_fp32_tier : core::Tier::kCudaDecode; }

// Runs fp32 KV-cache calls on `tier` while in scope.
struct Fp32TierScope {
  explicit Fp32TierScope(core::Tier tier) { g_fp32_tier = tier; }
  ~Fp32TierScope() { g_fp32_tier = core::Tier::kCudaDecode; }
};

// Selects the kernel variant of the test's parameter through the tier's test hook.
class DecodeVariantTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    cuda::DecodeDebug debug;
    debug.variant = GetParam();
    cuda::decode_set_debug(debug);
  }
  void TearDown() override { cuda::decode_set_debug(cuda::DecodeDebug{}); }
};
class DecodeKvcache : public DecodeVariantTest {};
class DecodeSafety : public DecodeVariantTest {};
class DecodeForward : public DecodeVariantTest {};

std::string variant_name(const ::testing::TestParamInfo<int>& info) { return cuda::decode_variant_name(info.param); }

core::ValidateOptions device_options(bool checked) {
  core::ValidateOptions options;
  options.check_index_values = checked;
  options.fetch = [](const int32_t* src, int64_t count, int32_t* dst) {
    cuda::copy_index_to_host(src, count, dst, nullptr);
  };
  return options;
}

// Runs the KV-cache tier of c's dtype on device mirrors of c's tensors and copies everything back.
std::string run_kvcache_on_gpu(AttnCase& c, bool checked = false) {
  return run_on_gpu(c, [&](const AttnParams& params) {
    const core::Problem p = core::prepare_kvcache(params, device_options(checked));
    cuda::kvcache(p, kvcache_tier(p.dtype), nullptr);
  });
}

// The same through a caller's scratch allocator (ExecContext::scratch).
std::string run_kvcache_on_gpu_with(AttnCase& c, const ScratchAllocator& scratch) {
  return run_on_gpu(c, [&](const AttnParams& params) {
    core::Problem p = core::prepare_kvcache(params, device_options(false));
    p.scratch = scratch;
    cuda::kvcache(p, kvcache_tier(p.dtype), nullptr);
  });
}

// check_kvcache of test_util.h for the GPU: poisoned out/lse, caches equal to the reference's
// appended copies except for rotary rounding, out/lse under the SPEC rule, guards and inputs
// untouched. The reference validates nothing, so bad index tensors are compared against the
// clamped geometry of core/sequence.h.
std::string check_kvcache_gpu(AttnCase& c) {
  return check_kvcache_run(c, unchecked_host(), [&] { return run_kvcache_on_gpu(c); });
}

// Forward through cuda-decode (continuous batching: varlen q over a paged cache, or short q).
std::string check_forward_decode(AttnCase& c) {
  return check_forward_run(c, unchecked_host(), [&] {
    return run_on_gpu(c, [&](const AttnParams& params) {
      const core::Problem p = core::prepare_forward(params, device_options(false));
      std::string why;
      if (!cuda::decode_tier_supports(p, false, &why)) throw Error("not served: " + why);
      cuda::decode_forward(p, nullptr);
    });
  });
}

AttnConfig decode_config(Layout layout, DType dtype) {
  AttnConfig c;
  c.layout = layout;
  c.dtype = dtype;
  c.batch = 3;
  c.heads_q = 8;
  c.heads_kv = 2;
  c.head_dim_qk = c.head_dim_v = 128;
  c.seqlen_q = 1;
  c.cache_capacity = 1100;
  c.cache_seqlens = {700, 0, 1099};
  c.block_size = 16;
  return c;
}

void expect_kvcache_passes(AttnConfig c, const std::vector<Layout>& layouts = {Layout::kDenseCache, Layout::kPagedCache},
                           const std::vector<DType>& dtypes = kHalfTypes) {
  for (Layout layout : layouts) {
    for (DType dtype : dtypes) {
      c.layout = layout;
      c.dtype = dtype;
      AttnCase a(c);
      EXPECT_EQ(check_kvcache_gpu(a), "") << c.describe();
    }
  }
}

// ---- attention_kvcache --------------------------------------------------------------------------

TEST_P(DecodeKvcache, PlainDecodeWithEmptySequence) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  expect_kvcache_passes(decode_config(Layout::kDenseCache, DType::kBFloat16));
}

// The tensor copy engine serves the calls it is chosen for (cuda::kDecodeTma: every call it can
// serve; the shipped choice: dense K/V at head dim 128 and 256; kDecodeCopy: none), so the other
// tests of each variant cover the path they name. Expects a build with sm_90 code on an sm_90
// device (the GPU scripts build sm_90a).
TEST_P(DecodeKvcache, CopyEngineServesWhatItIsChosenFor) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  if (cuda::device_capability() < 90) GTEST_SKIP() << "the tensor copy engine needs sm_90";
  for (Layout layout : {Layout::kDenseCache, Layout::kPagedCache}) {
    cuda::DecodeDebug debug = cuda::decode_debug();
    debug.tma_calls = 0;
    cuda::decode_set_debug(debug);
    expect_kvcache_passes(decode_config(layout, DType::kBFloat16), {layout}, {DType::kBFloat16});
    const long long calls = cuda::decode_debug().tma_calls;
    const bool expected = GetParam() == cuda::kDecodeTma || (GetParam() != cuda::kDecodeCopy && layout == Layout::kDenseCache);
    EXPECT_EQ(calls > 0, expected) << "layout " << static_cast<int>(layout) << ": " << calls << " TMA launches";
  }
}

// Unsplit dense calls at head dims 128 and 256 over sequences shorter than a CTA's first chunks
// (empty, one key, a chunk and a key): warps with no chunk, boxes of the tensor copy engine that
// reach past the sequence's keys; an append and two speculative rows with sinks on top. Small
// enough for the sanitizer.
TEST_P(DecodeKvcache, SanitizeUnsplitShortSequences) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kBFloat16);
  c.batch = 6;
  c.cache_capacity = 400;
  c.cache_seqlens = {0, 1, 17, 127, 131, 396};
  c.num_splits = 1;
  for (int64_t head_dim : {128, 256}) {
    for (int64_t seqlen_q : {1, 2}) {
      c.head_dim_qk = c.head_dim_v = head_dim;
      c.seqlen_q = c.seqlen_new = seqlen_q;
      c.sinks = seqlen_q == 2;
      expect_kvcache_passes(c, {Layout::kDenseCache});
    }
  }
}

TEST_P(DecodeKvcache, AppendWithRotary) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 10;
  for (bool interleaved : {true, false}) {
    for (int64_t rotary_dim : {128, 64, 2}) {
      for (bool causal : {false, true}) {
        AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat16);
        c.seqlen_q = c.seqlen_new = 3;
        c.cache_seqlens = {700, 0, 1097};
        c.rotary_dim = rotary_dim;
        c.rotary_interleaved = interleaved;
        c.causal = causal;
        c.seed = seed++;
        expect_kvcache_passes(c);
      }
    }
  }
}

TEST_P(DecodeKvcache, SpeculativeRowsWithWindowAndWideGroups) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat16);
  c.heads_q = 16;  // group 8: 5 query rows x 8 heads = 40 packed rows, three query tiles
  c.seqlen_q = c.seqlen_new = 5;
  c.cache_seqlens = {300, 1, 1000};
  c.causal = true;
  c.window_left = 64;
  c.rotary_dim = 96;
  c.rotary_interleaved = false;
  expect_kvcache_passes(c);
  c.window_left = 3;
  c.window_right = 1;
  c.causal = false;
  c.seed = 2;
  expect_kvcache_passes(c);
}

TEST_P(DecodeKvcache, ModifiersSinksLeftpad) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kBFloat16);
  c.seqlen_q = c.seqlen_new = 2;
  c.cache_seqlens = {500, 17, 900};
  c.cache_leftpad = {100, 19, 0};  // sequence 1: every key is padding, so only the sink remains
  c.softcap = 15.0f;
  c.alibi = Alibi::kPerBatch;
  c.sinks = true;
  c.sink_mean = 2.0;
  for (int splits : {0, 1, 4}) {
    c.num_splits = splits;
    c.seed = 30 + splits;
    expect_kvcache_passes(c);
  }
  c.alibi = Alibi::kPerHead;
  c.causal = true;
  expect_kvcache_passes(c);
}

TEST_P(DecodeKvcache, CacheBatchIdx) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat16);
  c.cache_batch_idx = true;
  c.extra_cache_rows = 2;
  c.seqlen_new = 1;
  c.cache_seqlens = {5, 400, 1000};
  c.rotary_dim = 128;
  expect_kvcache_passes(c, {Layout::kDenseCache});
}

TEST_P(DecodeKvcache, HeadDims) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<int64_t, int64_t>> dims = {{64, 64}, {256, 256}, {59, 59}, {40, 40},
                                                         {111, 111}, {72, 40}, {128, 64}, {1, 3}};
  uint64_t seed = 50;
  for (const auto& [dqk, dv] : dims) {
    AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat16);
    c.head_dim_qk = dqk;
    c.head_dim_v = dv;
    c.seqlen_q = c.seqlen_new = 2;
    c.cache_seqlens = {300, 31, 600};
    c.cache_capacity = 700;
    if (dqk >= 2) c.rotary_dim = dqk - dqk % 2;
    c.seed = seed++;
    expect_kvcache_passes(c);
  }
}

// Without rotary the query is fetched as element pairs (one 4-byte load each when Dqk is even):
// dims past Dqk inside the head-dim bucket must read as zeros, an odd Dqk takes the general path.
TEST_P(DecodeKvcache, HeadDimsWithoutRotary) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<int64_t, int64_t>> dims = {{40, 40}, {72, 40}, {96, 128}, {200, 200}, {59, 59}};
  uint64_t seed = 70;
  for (const auto& [dqk, dv] : dims) {
    AttnConfig c = decode_config(Layout::kDenseCache, DType::kBFloat16);
    c.head_dim_qk = dqk;
    c.head_dim_v = dv;
    c.seqlen_new = 1;
    c.cache_seqlens = {300, 31, 600};
    c.cache_capacity = 700;
    c.seed = seed++;
    expect_kvcache_passes(c);  // dense and paged, fp16 and bf16
  }
}

TEST_P(DecodeKvcache, PagedBlockSizes) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (int64_t block_size : {1, 5, 16, 256}) {
    AttnConfig c = decode_config(Layout::kPagedCache, DType::kBFloat16);
    c.block_size = block_size;
    c.seqlen_q = c.seqlen_new = 2;
    c.cache_seqlens = {300, 0, 1000};
    c.rotary_dim = 128;
    c.causal = true;
    c.seed = 60 + block_size;
    expect_kvcache_passes(c, {Layout::kPagedCache});
  }
}

TEST_P(DecodeKvcache, PaddedStridesAndExtremeLogits) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat16);
  c.padded_strides = true;  // rows not 16-byte aligned: the element-load path
  c.seqlen_new = 1;
  expect_kvcache_passes(c);
  c.padded_strides = false;
  c.q_stddev = 300.0;  // |s| ~ 1e4
  c.seed = 3;
  expect_kvcache_passes(c);
}

TEST_P(DecodeKvcache, MultiQueryAndNoLse) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kPagedCache, DType::kFloat16);
  c.heads_q = 32;
  c.heads_kv = 1;  // group 32: two query tiles for one row
  c.with_lse = false;
  expect_kvcache_passes(c);
}

// One split and many must both pass the SPEC rule on the same inputs.
TEST_P(DecodeKvcache, SplitCountsAgree) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (int splits : {1, 2, 7, 64, 0}) {
    AttnConfig c = decode_config(Layout::kPagedCache, DType::kBFloat16);
    c.cache_capacity = 4000;
    c.cache_seqlens = {3999, 1, 2500};
    c.num_splits = splits;
    c.sinks = true;
    expect_kvcache_passes(c);
  }
}

// Split-KV partials from the caller's allocator (ExecContext::scratch): asked once per split
// call for the partials' bytes and released once; the result is the pool's bit for bit, over an
// arena poisoned with NaN (every partial read must have been written by this call). An allocator
// that returns nullptr leaves the call to the pool.
struct CountingArena {
  void* ptr = nullptr;
  size_t bytes = 0;
  int allocations = 0, releases = 0;
  size_t last_request = 0;
  bool refuse = false;
  ScratchAllocator allocator() {
    ScratchAllocator a;
    a.user = this;
    a.allocate = [](size_t bytes, void*, void* user) -> void* {
      auto* arena = static_cast<CountingArena*>(user);
      ++arena->allocations;
      arena->last_request = bytes;
      return arena->refuse || bytes > arena->bytes ? nullptr : arena->ptr;
    };
    a.release = [](void* ptr, void*, void* user) {
      auto* arena = static_cast<CountingArena*>(user);
      EXPECT_EQ(ptr, arena->ptr);
      ++arena->releases;
    };
    return a;
  }
};

TEST_P(DecodeKvcache, ScratchFromTheCallersAllocator) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  CountingArena arena;
  arena.bytes = size_t(16) << 20;
  ASSERT_EQ(cudaMalloc(&arena.ptr, arena.bytes), cudaSuccess);
  ASSERT_EQ(cudaMemset(arena.ptr, 0xff, arena.bytes), cudaSuccess);  // NaN in every float
  AttnConfig c = decode_config(Layout::kPagedCache, DType::kBFloat16);
  c.cache_capacity = 4000;
  c.cache_seqlens = {3999, 1, 2500};
  c.sinks = true;
  for (int splits : {1, 7, 0}) {
    for (bool refuse : {false, true}) {
      c.num_splits = splits;
      arena.refuse = refuse;
      arena.allocations = arena.releases = 0;
      AttnCase pooled(c), arena_case(c);
      ASSERT_EQ(check_kvcache_run(pooled, unchecked_host(), [&] { return run_kvcache_on_gpu(pooled); }), "");
      ASSERT_EQ(check_kvcache_run(arena_case, unchecked_host(),
                                  [&] { return run_kvcache_on_gpu_with(arena_case, arena.allocator()); }),
                "")
          << c.describe();
      const bool split = arena.allocations > 0;
      EXPECT_EQ(split, splits != 1) << "splits " << splits;
      if (split) EXPECT_GT(arena.last_request, 0u);
      EXPECT_EQ(arena.releases, refuse ? 0 : arena.allocations) << "splits " << splits;
      EXPECT_EQ(arena_case.out.guarded_bytes(), pooled.out.guarded_bytes()) << "splits " << splits;
      EXPECT_EQ(arena_case.lse.guarded_bytes(), pooled.lse.guarded_bytes()) << "splits " << splits;
    }
  }
  cudaFree(arena.ptr);
}

// One sampled KV-cache case after its seed, dtype and layout: cache geometry, appended tokens,
// rotary, cache_batch_idx, left padding, masks, modifiers, sinks, split count (drawn from
// num_splits) and LSE. Shared by the fp16/bf16 and fp32 sampled grids.
void draw_kvcache_case(AttnConfig& c, Rng& rng, const std::vector<int64_t>& num_splits) {
  c.block_size = rng.pick(std::vector<int64_t>{1, 3, 16, 64, 256});
  c.head_dim_qk = rng.pick(std::vector<int64_t>{64, 128, 256, 96, 40});
  c.head_dim_v = rng.coin(0.2) ? 64 : c.head_dim_qk;
  c.heads_kv = rng.uniform_int(1, 3);
  c.heads_q = c.heads_kv * rng.pick(std::vector<int64_t>{1, 2, 4, 8});
  c.batch = rng.uniform_int(1, 4);
  c.cache_capacity = rng.pick(std::vector<int64_t>{16, 97, 600, 2100});
  c.seqlen_new = std::min<int64_t>(c.cache_capacity, rng.pick(std::vector<int64_t>{0, 1, 1, 4}));
  c.seqlen_q = rng.coin(0.6) ? 1 : rng.uniform_int(1, 8);
  for (int64_t b = 0; b < c.batch; ++b) c.cache_seqlens.push_back(rng.uniform_int(0, c.cache_capacity - c.seqlen_new));
  if (c.seqlen_new > 0 && rng.coin(0.6)) {
    c.rotary_interleaved = rng.coin();
    c.rotary_dim = rng.coin() ? c.head_dim_qk : c.head_dim_qk / 2;
  }
  if (c.layout == Layout::kDenseCache && rng.coin(0.3)) {
    c.cache_batch_idx = true;
    c.extra_cache_rows = 1;
  }
  if (rng.coin(0.25))
    for (int64_t b = 0; b < c.batch; ++b) c.cache_leftpad.push_back(rng.uniform_int(0, c.cache_seqlens[b]));
  c.causal = rng.coin(0.5);
  if (rng.coin(0.25)) c.window_left = rng.uniform_int(0, 300);
  if (rng.coin(0.2)) c.softcap = 20.0f;
  if (rng.coin(0.2)) c.alibi = Alibi::kPerHead;
  c.sinks = rng.coin(0.3);
  c.num_splits = static_cast<int>(rng.pick(num_splits));
  c.with_lse = rng.coin(0.8);
}

// Random configurations over everything at once.
TEST_P(DecodeKvcache, SampledGrid) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (int n = 0; n < 48; ++n) {
    Rng rng(0xdec0de00u + n);
    AttnConfig c;
    c.seed = 9000 + n;
    c.dtype = kHalfTypes[n % 2];
    c.layout = (n / 2) % 2 ? Layout::kPagedCache : Layout::kDenseCache;
    draw_kvcache_case(c, rng, {0, 0, 1, 3, 16});
    AttnCase a(c);
    EXPECT_EQ(check_kvcache_gpu(a), "") << c.describe();
  }
}

// The same logical cache, dense and paged (block sizes 16 and 7), gives bit-identical results on
// every KV-cache path: chunks (cuda-decode, both kernels) and key tiles (cuda-fp32) are logical
// key ranges, so only the addressing differs.
TEST_P(DecodeKvcache, PagedEqualsDenseBitForBit) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<DType, core::Tier>> paths = {{DType::kBFloat16, core::Tier::kCudaDecode},
                                                           {DType::kFloat32, core::Tier::kCudaDecode},
                                                           {DType::kFloat32, core::Tier::kCudaFp32}};
  for (int64_t block_size : {16, 7}) {
    for (const auto& [dtype, tier] : paths) {
      const Fp32TierScope scope(tier);
      AttnConfig c = decode_config(Layout::kDenseCache, dtype);
      c.seqlen_q = c.seqlen_new = 2;
      c.cache_seqlens = {700, 3, 1090};
      c.rotary_dim = 128;
      c.causal = true;
      c.sinks = true;
      c.num_splits = 3;
      AttnCase dense(c);
      c.layout = Layout::kPagedCache;
      c.block_size = block_size;
      AttnCase paged(c);
      for (auto& [name, tensor] : paged.tensors()) {  // same inputs, byte for byte
        if (name == "k" || name == "v" || name == "block_table") continue;
        for (auto& [dense_name, dense_tensor] : dense.tensors())
          if (dense_name == name) tensor->guarded_bytes() = dense_tensor->guarded_bytes();
      }
      const std::vector<int32_t> table = paged.block_table.int_values();
      const int64_t max_blocks = paged.block_table.shape()[1];
      const int64_t row_elems = c.heads_kv * c.head_dim_qk;
      for (int64_t b = 0; b < c.batch; ++b) {
        for (int64_t j = 0; j < c.cache_seqlens[b]; ++j) {
          const int64_t block = table[b * max_blocks + j / block_size];
          for (int64_t e = 0; e < row_elems; ++e) {
            const int64_t dense_index = (b * c.cache_capacity + j) * row_elems + e;
            const int64_t paged_index = (block * block_size + j % block_size) * row_elems + e;
            paged.k.set(paged_index, dense.k.get(dense_index));
            paged.v.set(paged_index, dense.v.get(dense_index));
          }
        }
      }
      ASSERT_EQ(check_kvcache_gpu(dense), "") << c.describe();
      ASSERT_EQ(check_kvcache_gpu(paged), "") << c.describe();
      EXPECT_EQ(paged.out.guarded_bytes(), dense.out.guarded_bytes()) << c.describe() << ": out differs";
      EXPECT_EQ(paged.lse.guarded_bytes(), dense.lse.guarded_bytes()) << c.describe() << ": lse differs";
    }
  }
}

// Repeated calls give the same bits: every reduction has a fixed order, whichever CTA of a tile
// finishes first or last.
TEST_P(DecodeKvcache, RepeatsBitForBit) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kPagedCache, DType::kBFloat16);
  c.cache_capacity = 2000;
  c.cache_seqlens = {1990, 1, 1300};
  c.seqlen_q = c.seqlen_new = 5;  // group 4: two query tiles per (sequence, kv head)
  c.causal = true;
  c.sinks = true;
  for (int splits : {16, 0}) {
    c.num_splits = splits;
    std::vector<uint8_t> first_out, first_lse;
    for (int run = 0; run < 3; ++run) {
      AttnCase a(c);
      ASSERT_EQ(check_kvcache_gpu(a), "") << c.describe() << ", run " << run;
      if (run == 0) {
        first_out = a.out.guarded_bytes();
        first_lse = a.lse.guarded_bytes();
      } else {
        EXPECT_EQ(a.out.guarded_bytes(), first_out) << c.describe() << ": out differs in run " << run;
        EXPECT_EQ(a.lse.guarded_bytes(), first_lse) << c.describe() << ": lse differs in run " << run;
      }
    }
  }
}

// The benchmark's timelines come from instantiations of their own (kTrace, bf16): they compute the
// same bits as the untraced kernels, and write a record per attention CTA.
TEST_P(DecodeKvcache, TracedKernelsComputeTheSameBits) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const int capacity = 1024;
  unsigned long long* trace = nullptr;
  ASSERT_EQ(cudaMalloc(&trace, size_t(capacity) * cuda::kDecodeTraceWords * 8), cudaSuccess);
  for (Layout layout : {Layout::kDenseCache, Layout::kPagedCache}) {
    for (int splits : {1, 0}) {
      AttnConfig c = decode_config(layout, DType::kBFloat16);
      c.num_splits = splits;
      AttnCase plain(c), traced(c);
      ASSERT_EQ(check_kvcache_gpu(plain), "") << c.describe();
      ASSERT_EQ(cudaMemset(trace, 0, size_t(capacity) * cuda::kDecodeTraceWords * 8), cudaSuccess);
      const cuda::DecodeDebug saved = cuda::decode_debug();
      cuda::DecodeDebug debug = saved;
      debug.trace = trace;
      debug.trace_capacity = capacity;
      cuda::decode_set_debug(debug);
      const std::string failure = check_kvcache_gpu(traced);
      cuda::decode_set_debug(saved);
      ASSERT_EQ(failure, "") << c.describe() << ", traced";
      EXPECT_EQ(traced.out.guarded_bytes(), plain.out.guarded_bytes()) << c.describe() << ": out differs when traced";
      EXPECT_EQ(traced.lse.guarded_bytes(), plain.lse.guarded_bytes()) << c.describe() << ": lse differs when traced";
      std::vector<unsigned long long> record(cuda::kDecodeTraceWords);
      ASSERT_EQ(cudaMemcpy(record.data(), trace, record.size() * 8, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_GE(record[0], 1u) << c.describe() << ": no SM id in the first CTA's record";
      EXPECT_GE(record[4], record[1]) << c.describe() << ": the first CTA ends before it starts";
    }
  }
  cudaFree(trace);
}

// Sets every element of logical key j of sequence b (all kv heads) in K, V or both to NaN.
void poison_key(AttnCase& a, int64_t b, int64_t j, bool k, bool v) {
  const AttnConfig& c = a.config;
  const int64_t row_elems = c.heads_kv * c.head_dim_qk;
  int64_t row = b * c.cache_capacity + j;
  if (c.layout == Layout::kPagedCache) {
    const int64_t max_blocks = a.block_table.shape()[1];
    row = a.block_table.get_int(b * max_blocks + j / c.block_size) * c.block_size + j % c.block_size;
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t e = 0; e < row_elems; ++e) {
    if (k) a.k.set(row * row_elems + e, nan);
    if (v) a.v.set(row * row_elems + e, nan);
  }
}

// SPEC §2: NaN in an input reaches only the rows it touches. Five query rows with a window and
// causal masking over caches whose masked keys hold NaN in K, V or both: keys below every row's
// window, past the cache length, and keys that some rows of a 16-row tile see and others mask
// (a window's first key, a causal key near the end) — those share a chunk with allowed keys.
// Rows that see a NaN key must be NaN, every other row finite and within the SPEC rule.
TEST_P(DecodeKvcache, MaskedNaNKeysReachNoRow) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (Layout layout : {Layout::kDenseCache, Layout::kPagedCache}) {
    for (DType dtype : kAllTypes) {  // fp32: 8-row tiles, rows 0-1 / 2-3 / 4
      for (int which = 0; which < 3; ++which) {  // K, V, both
        for (int splits : {1, 4}) {
          AttnConfig c = decode_config(layout, dtype);
          c.seqlen_q = 5;  // group 4: rows 0-3 share the first tile, row 4 is the second
          c.cache_seqlens = {700, 40, 1099};
          c.causal = true;
          c.window_left = 50;
          c.num_splits = splits;
          c.seed = 400 + which;
          AttnCase a(c);
          const bool k = which != 1, v = which != 0;
          for (int64_t b = 0; b < c.batch; ++b) {
            const int64_t sk = c.cache_seqlens[b], first = sk - c.seqlen_q - c.window_left;  // row 0's first key
            for (int64_t j = std::max<int64_t>(first - 20, 0); j <= first; ++j) poison_key(a, b, j, k, v);
            if (sk >= 2) poison_key(a, b, sk - 2, k, v);  // seen by rows 3 and 4 only
            // Past the length: to the capacity when dense; paged, only in the sequence's own last
            // block (table entries past it name other sequences' blocks).
            const int64_t past_end = layout == Layout::kPagedCache ? (sk + c.block_size - 1) / c.block_size * c.block_size
                                                                   : c.cache_capacity;
            for (int64_t j = sk; j < past_end; ++j) poison_key(a, b, j, k, v);
          }
          const auto ref64 = reference::kvcache(core::prepare_kvcache(a.params(), unchecked_host()),
                                                reference::Precision::kFloat64);
          int64_t nan_rows = 0, finite_rows = 0;
          for (size_t n = 0; n < ref64.out.size(); n += c.head_dim_v) (std::isnan(ref64.out[n]) ? nan_rows : finite_rows)++;
          ASSERT_GT(nan_rows, 0) << c.describe() << ": no row sees a NaN key, the case tests nothing";
          ASSERT_GT(finite_rows, 0) << c.describe();
          EXPECT_EQ(check_kvcache_gpu(a), "") << c.describe() << " NaN in " << (which == 0 ? "K" : which == 1 ? "V" : "K and V");
        }
      }
    }
  }
}

// ---- SPEC §5 -------------------------------------------------------------------------------------

// Out-of-range block ids, cache lengths past the capacity or negative, and cache rows out of
// range: unchecked, they read and write nothing (guards hold, results follow the clamped
// geometry); checked, they raise before anything is written.
AttnCase bad_index_case(DType dtype, Layout layout, uint64_t seed) {
  AttnConfig c = decode_config(layout, dtype);
  c.cache_capacity = 200;
  c.batch = 4;
  c.cache_seqlens = {150, 199, 50, 10};
  c.seqlen_q = c.seqlen_new = 2;
  c.rotary_dim = 64;
  c.seed = seed;
  if (layout == Layout::kDenseCache) {
    c.cache_batch_idx = true;
    c.extra_cache_rows = 1;
  }
  AttnCase a(c);
  a.cache_seqlens.set_int(1, 199);  // 199 + 2 new tokens: overflows the capacity by one
  a.cache_seqlens.set_int(3, -7);
  if (layout == Layout::kPagedCache) {
    const int64_t num_blocks = a.k.shape()[0];
    a.block_table.set_int(0 * a.block_table.shape()[1] + 2, static_cast<int32_t>(num_blocks + 5));
    a.block_table.set_int(2 * a.block_table.shape()[1] + 3, -1);  // the block receiving the append
    a.block_table.set_int(2 * a.block_table.shape()[1] + 0, std::numeric_limits<int32_t>::min());
  } else {
    a.cache_batch_idx.set_int(2, 1000);
  }
  return a;
}

TEST_P(DecodeSafety, SanitizeBadIndicesReadAndWriteNothing) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (Layout layout : {Layout::kPagedCache, Layout::kDenseCache}) {
    AttnCase a = bad_index_case(DType::kFloat16, layout, 77);
    EXPECT_EQ(check_kvcache_gpu(a), "") << layout_name(layout);
  }
}

TEST_P(DecodeSafety, CheckedModeRaisesAndWritesNothing) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (Layout layout : {Layout::kPagedCache, Layout::kDenseCache}) {
    AttnCase a = bad_index_case(DType::kBFloat16, layout, 78);
    Snapshot before(a.tensors());
    const std::string failure = run_kvcache_on_gpu(a, /*checked=*/true);
    EXPECT_NE(failure.find("threw"), std::string::npos) << layout_name(layout) << ": " << failure;
    EXPECT_EQ(before.changed(), "") << layout_name(layout);
  }
  // A bad block id alone, and a cache overflow alone, each raise.
  for (int which = 0; which < 2; ++which) {
    AttnConfig c = decode_config(Layout::kPagedCache, DType::kFloat16);
    c.cache_capacity = 64;
    c.cache_seqlens = {10, 20, 30};
    c.seqlen_new = 1;
    AttnCase a(c);
    if (which == 0) a.block_table.set_int(0, 99999);
    else a.cache_seqlens.set_int(2, 64);
    Snapshot before(a.tensors());
    const std::string failure = run_kvcache_on_gpu(a, true);
    EXPECT_NE(failure.find(which == 0 ? "block_table" : "cache overflow"), std::string::npos) << failure;
    EXPECT_EQ(before.changed(), "");
  }
}

TEST_P(DecodeKvcache, SanitizeBasic) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kPagedCache, DType::kBFloat16);
  c.cache_capacity = 300;
  c.cache_seqlens = {100, 0, 290};
  c.seqlen_q = c.seqlen_new = 2;
  c.rotary_dim = 128;
  c.sinks = true;
  c.num_splits = 3;
  expect_kvcache_passes(c);
  c.head_dim_qk = c.head_dim_v = 59;
  c.rotary_dim = 58;
  expect_kvcache_passes(c, {Layout::kDenseCache});
}

// Many key splits over one long, one short and one middling sequence: splits with no keys next to
// full ones, and 40 partial rows per row in the combine. Small enough for the sanitizer.
TEST_P(DecodeKvcache, SanitizeManySplits) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kPagedCache, DType::kBFloat16);
  c.cache_capacity = 2100;
  c.cache_seqlens = {2000, 5, 1234};
  c.sinks = true;
  for (int splits : {8, 40}) {
    c.num_splits = splits;
    expect_kvcache_passes(c);
  }
}

// More CTAs than one wave at head dim 64, where each warp keeps one chunk fewer in flight
// (Args::short_queue): 130 sequences x 4 kv heads unsplit are 520 CTAs, above the 3 x 132 of an
// H100 or H200. Short, uneven lengths (some empty) keep the float64 reference cheap.
TEST_P(DecodeKvcache, SanitizeHeadDim64ManyWaves) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kPagedCache, DType::kBFloat16);
  c.batch = 130;
  c.heads_q = 16;
  c.heads_kv = 4;
  c.head_dim_qk = c.head_dim_v = 64;
  c.cache_capacity = 112;  // the longest: 100 cached + 2 appended
  c.cache_seqlens.clear();
  for (int64_t b = 0; b < c.batch; ++b) c.cache_seqlens.push_back((b * 37) % 101);
  c.num_splits = 1;
  for (int64_t seqlen_q : {1, 2}) {
    c.seqlen_q = c.seqlen_new = seqlen_q;
    expect_kvcache_passes(c);
  }
}

// ---- attention_kvcache on fp32 caches: cuda-decode's fp32 kernel and cuda-fp32 -------------------
//
// Each test runs on both tiers (the parameter). The append is cuda-decode's kernel on both; the
// attention is cuda-decode's fp32 kernel (splits honoured) or the exact fp32 forward (num_splits
// accepted and ignored). Every case runs dense and paged unless the feature is dense-only
// (cache_batch_idx).

class DecodeKvcacheFp32 : public ::testing::TestWithParam<core::Tier> {
 protected:
  void SetUp() override { g_fp32_tier = GetParam(); }
  void TearDown() override { g_fp32_tier = core::Tier::kCudaDecode; }
};
INSTANTIATE_TEST_SUITE_P(DecodeFp32, DecodeKvcacheFp32, ::testing::Values(core::Tier::kCudaDecode, core::Tier::kCudaFp32),
                         [](const ::testing::TestParamInfo<core::Tier>& info) {
                           return std::string(info.param == core::Tier::kCudaDecode ? "cuda_decode" : "cuda_fp32");
                         });

TEST_P(DecodeKvcacheFp32, PlainDecodeWithEmptySequence) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat32);
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
}

TEST_P(DecodeKvcacheFp32, AppendWithRotary) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 110;
  for (bool interleaved : {true, false}) {
    for (int64_t rotary_dim : {128, 64, 2}) {  // full, partial, one pair
      for (bool causal : {false, true}) {      // every query row at the cache length, or per row
        AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat32);
        c.seqlen_q = c.seqlen_new = 3;
        c.cache_seqlens = {700, 0, 1097};
        c.rotary_dim = rotary_dim;
        c.rotary_interleaved = interleaved;
        c.causal = causal;
        c.seed = seed++;
        expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
      }
    }
  }
}

// Query rows past one 128-row tile of the fp32 forward: the rotation of every tile's rows at
// their own positions, and appends of many tokens.
TEST_P(DecodeKvcacheFp32, LongAppendWithRotaryAcrossQueryTiles) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat32);
  c.batch = 2;
  c.seqlen_q = c.seqlen_new = 150;
  c.cache_capacity = 600;
  c.cache_seqlens = {300, 17};
  c.rotary_dim = 96;
  c.rotary_interleaved = false;
  c.causal = true;
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
}

TEST_P(DecodeKvcacheFp32, WindowsModifiersSinksLeftpad) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat32);
  c.seqlen_q = c.seqlen_new = 2;
  c.cache_seqlens = {500, 17, 900};
  c.cache_leftpad = {100, 19, 0};  // sequence 1: every key is padding, so only the sink remains
  c.softcap = 15.0f;
  c.alibi = Alibi::kPerBatch;
  c.sinks = true;
  c.sink_mean = 2.0;
  for (int splits : {0, 1, 4}) {  // ignored by cuda-fp32; the result must not depend on it
    c.num_splits = splits;
    c.seed = 130 + splits;
    expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
  }
  c.alibi = Alibi::kPerHead;
  c.causal = true;
  c.rotary_dim = 64;
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
  // A window with both edges and wide groups (GQA 8), rotary NeoX over part of the head.
  c = decode_config(Layout::kDenseCache, DType::kFloat32);
  c.heads_q = 16;
  c.seqlen_q = c.seqlen_new = 5;
  c.cache_seqlens = {300, 1, 1000};
  c.window_left = 3;
  c.window_right = 1;
  c.rotary_dim = 96;
  c.rotary_interleaved = false;
  c.seed = 140;
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
  c.window_right = -1;
  c.causal = true;
  c.window_left = 64;
  c.seed = 141;
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
}

// Head dim 256 on cuda-fp32 with left padding (the first live key inside a key tile) and rotary
// queries, dense and paged.
TEST_P(DecodeKvcacheFp32, HeadDim256LeftpadRotary) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat32);
  c.head_dim_qk = c.head_dim_v = 256;
  c.seqlen_q = c.seqlen_new = 3;
  c.cache_seqlens = {500, 17, 900};
  c.cache_leftpad = {100, 0, 70};
  c.rotary_dim = 256;
  c.causal = true;
  c.seed = 145;
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
}

TEST_P(DecodeKvcacheFp32, CacheBatchIdx) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat32);
  c.cache_batch_idx = true;
  c.extra_cache_rows = 2;
  c.seqlen_new = 1;
  c.cache_seqlens = {5, 400, 1000};
  c.rotary_dim = 128;
  expect_kvcache_passes(c, {Layout::kDenseCache}, kFp32);
}

TEST_P(DecodeKvcacheFp32, HeadDimsAndGroups) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<int64_t, int64_t>> dims = {{64, 64}, {256, 256}, {59, 59}, {40, 40},
                                                         {111, 111}, {72, 40}, {128, 64}, {1, 3}};
  uint64_t seed = 150;
  for (const auto& [dqk, dv] : dims) {
    AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat32);
    c.head_dim_qk = dqk;
    c.head_dim_v = dv;
    c.seqlen_q = c.seqlen_new = 2;
    c.cache_seqlens = {300, 31, 600};
    c.cache_capacity = 700;
    if (dqk >= 2) c.rotary_dim = dqk - dqk % 2;
    c.seed = seed++;
    expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
  }
  for (const auto& [hq, hkv] : std::vector<std::pair<int64_t, int64_t>>{{4, 4}, {32, 1}, {6, 3}}) {
    AttnConfig c = decode_config(Layout::kPagedCache, DType::kFloat32);
    c.heads_q = hq;
    c.heads_kv = hkv;
    c.seqlen_new = 1;
    c.rotary_dim = 32;
    c.with_lse = hq != 32;
    c.seed = seed++;
    expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
  }
}

TEST_P(DecodeKvcacheFp32, PagedBlockSizes) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (int64_t block_size : {1, 5, 16, 256}) {
    AttnConfig c = decode_config(Layout::kPagedCache, DType::kFloat32);
    c.block_size = block_size;
    c.seqlen_q = c.seqlen_new = 2;
    c.cache_seqlens = {300, 0, 1000};
    c.rotary_dim = 128;
    c.causal = true;
    c.seed = 160 + block_size;
    expect_kvcache_passes(c, {Layout::kPagedCache}, kFp32);
  }
}

TEST_P(DecodeKvcacheFp32, PaddedStridesAndExtremeLogits) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kDenseCache, DType::kFloat32);
  c.padded_strides = true;  // rows not 16-byte aligned: the element-load path
  c.seqlen_new = 1;
  c.rotary_dim = 64;
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
  c.padded_strides = false;
  c.rotary_dim = 0;
  c.q_stddev = 300.0;  // |s| ~ 1e4
  c.seed = 3;
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
}

// Keys no row attends are never read: NaN in K and V of the left padding (below cache_leftpad)
// and past each sequence's end leaves every row finite and within the SPEC rule.
TEST_P(DecodeKvcacheFp32, LeftpadAndPastTheEndAreNeverRead) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (Layout layout : {Layout::kDenseCache, Layout::kPagedCache}) {
    AttnConfig c = decode_config(layout, DType::kFloat32);
    c.seqlen_q = c.seqlen_new = 3;
    c.cache_seqlens = {700, 40, 1090};
    c.cache_leftpad = {70, 13, 1};  // not multiples of a key tile: tiles mix padding and keys
    c.causal = true;
    c.rotary_dim = 128;
    AttnCase a(c);
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t j = 0; j < c.cache_leftpad[b]; ++j) poison_key(a, b, j, true, true);
      const int64_t end = c.cache_seqlens[b] + c.seqlen_new;
      const int64_t past_end = layout == Layout::kPagedCache ? (end + c.block_size - 1) / c.block_size * c.block_size
                                                             : c.cache_capacity;
      for (int64_t j = end; j < past_end; ++j) poison_key(a, b, j, true, true);
    }
    EXPECT_EQ(check_kvcache_gpu(a), "") << c.describe();
  }
}

// Random configurations over everything at once.
TEST_P(DecodeKvcacheFp32, SampledGrid) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (int n = 0; n < 24; ++n) {
    Rng rng(0xf32c0de0u + n);
    AttnConfig c;
    c.seed = 19000 + n;
    c.dtype = DType::kFloat32;
    c.layout = n % 2 ? Layout::kPagedCache : Layout::kDenseCache;
    draw_kvcache_case(c, rng, {0, 1, 3});
    AttnCase a(c);
    EXPECT_EQ(check_kvcache_gpu(a), "") << c.describe();
  }
}

// Through the public API: the selector sends fp32 decoding steps (queries of up to
// kDecodeMaxQueryLen rows) to cuda-decode and longer fp32 appends to cuda-fp32 (fp16/bf16 stay on
// cuda-decode), and attention_kvcache then runs it.
TEST(DecodeFp32Routing, SelectorChoosesByQueryLength) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  struct Route {
    DType dtype;
    int64_t seqlen_q;
    const char* tier;
  };
  for (const Route& route : {Route{DType::kFloat32, 2, "cuda-decode"}, Route{DType::kFloat32, 20, "cuda-fp32"},
                             Route{DType::kFloat16, 2, "cuda-decode"}}) {
    AttnConfig c = decode_config(Layout::kPagedCache, route.dtype);
    c.seqlen_q = c.seqlen_new = route.seqlen_q;
    c.rotary_dim = 64;
    c.causal = true;
    c.num_splits = 2;
    AttnCase a(c);
    const std::string expected = route.tier;
    std::string reason;
    const std::string failure = check_kvcache_run(a, unchecked_host(), [&] {
      return run_on_gpu(a, [&](const AttnParams& params) {
        const Selection sel = explain(params, Op::kKvCache, cuda_context());
        reason = sel.reason;
        if (sel.tier != expected) throw Error("explain chose " + sel.tier + " (expected " + expected + "): " + sel.reason);
        attention_kvcache(params, cuda_context());
      });
    });
    EXPECT_EQ(failure, "") << c.describe();
    if (route.dtype == DType::kFloat32 && expected == "cuda-fp32") {
      EXPECT_NE(reason.find("KV-cache call exactly"), std::string::npos) << reason;
      EXPECT_NE(reason.find("appends 20 tokens"), std::string::npos) << reason;
      EXPECT_NE(reason.find("queries rotated"), std::string::npos) << reason;
      EXPECT_NE(reason.find("num_splits = 2 is ignored"), std::string::npos) << reason;
    } else if (route.dtype == DType::kFloat32) {
      EXPECT_NE(reason.find("exact fp32"), std::string::npos) << reason;
      EXPECT_NE(reason.find("query tile of 8 packed rows"), std::string::npos) << reason;
      EXPECT_NE(reason.find("appends 2 tokens"), std::string::npos) << reason;
      EXPECT_NE(reason.find("num_splits = 2"), std::string::npos) << reason;
    }
  }
}

TEST_P(DecodeKvcacheFp32, SanitizeBasic) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = decode_config(Layout::kPagedCache, DType::kFloat32);
  c.cache_capacity = 300;
  c.cache_seqlens = {100, 0, 290};
  c.seqlen_q = c.seqlen_new = 2;
  c.rotary_dim = 128;
  c.sinks = true;
  c.cache_leftpad = {3, 0, 20};
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
  c.head_dim_qk = c.head_dim_v = 59;
  c.rotary_dim = 58;
  c.rotary_interleaved = false;
  c.padded_strides = true;
  expect_kvcache_passes(c, {Layout::kDenseCache, Layout::kPagedCache}, kFp32);
}

TEST_P(DecodeKvcacheFp32, SanitizeBadIndicesReadAndWriteNothing) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (Layout layout : {Layout::kPagedCache, Layout::kDenseCache}) {
    AttnCase a = bad_index_case(DType::kFloat32, layout, 177);
    EXPECT_EQ(check_kvcache_gpu(a), "") << layout_name(layout);
  }
}

TEST_P(DecodeKvcacheFp32, CheckedModeRaisesAndWritesNothing) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (Layout layout : {Layout::kPagedCache, Layout::kDenseCache}) {
    AttnCase a = bad_index_case(DType::kFloat32, layout, 178);
    Snapshot before(a.tensors());
    const std::string failure = run_kvcache_on_gpu(a, /*checked=*/true);
    EXPECT_NE(failure.find("threw"), std::string::npos) << layout_name(layout) << ": " << failure;
    EXPECT_EQ(before.changed(), "") << layout_name(layout);
  }
}

TEST(DecodeFp32Routing, SupportsSaysWhy) {
  core::Problem p;
  p.dtype = DType::kFloat16;
  p.head_dim_qk = p.head_dim_v = 128;
  p.batch = 1;
  p.heads_q = 8;
  p.heads_kv = 2;
  p.group = 4;
  std::string why;
  EXPECT_FALSE(cuda::fp32_kvcache_supports(p, &why));
  EXPECT_NE(why.find("needs fp32"), std::string::npos) << why;
  p.dtype = DType::kFloat32;
  p.kv_layout = core::KvLayout::kDenseCache;
  p.seqlen_new = 3;
  p.rotary_dim = 64;
  p.rotary_interleaved = false;
  EXPECT_TRUE(cuda::fp32_kvcache_supports(p, &why)) << why;
  EXPECT_NE(why.find("NeoX"), std::string::npos) << why;
  EXPECT_TRUE(cuda::fp32_kvcache_supports(p, nullptr));
  EXPECT_FALSE(cuda::fp32_tier_supports(p, &why));  // the plain forward takes no append
  p.head_dim_qk = 300;
  EXPECT_FALSE(cuda::fp32_kvcache_supports(p, &why));
  EXPECT_NE(why.find("head dims"), std::string::npos) << why;
}

// ---- paged_kv_write -------------------------------------------------------------------------------

std::string check_kv_write_gpu(KvWriteCase& c) {
  HostTensor k_expected = c.k_cache, v_expected = c.v_cache;
  KvWriteParams expected_params = c.params();
  expected_params.k_cache = k_expected.ref();
  expected_params.v_cache = v_expected.ref();
  core::ValidateOptions host;
  host.check_index_values = false;
  reference::paged_kv_write(core::prepare_kv_write(expected_params, host));

  std::vector<std::pair<std::string, HostTensor*>> inputs;
  for (auto& named : c.tensors())
    if (named.first != "k_cache" && named.first != "v_cache") inputs.push_back(named);
  const Snapshot before(inputs);
  DeviceMirror dev(c.tensors());
  if (!dev.error().empty()) return dev.error();
  KvWriteParams params = c.params();
  params.k_cache = dev.ref(c.k_cache);
  params.v_cache = dev.ref(c.v_cache);
  params.k_new = dev.ref(c.k_new);
  params.v_new = dev.ref(c.v_new);
  params.block_table = dev.ref(c.block_table);
  params.cache_seqlens = dev.ref(c.cache_seqlens);
  params.cu_seqlens_new = dev.ref(c.cu_seqlens_new);
  std::string failure = run_and_catch([&] {
    cuda::paged_kv_write(core::prepare_kv_write(params, device_options(false)), nullptr);
  });
  if (failure.empty()) failure = cuda_failure(cudaDeviceSynchronize(), "kernel");
  if (failure.empty()) failure = dev.copy_back();
  if (!failure.empty()) return failure;
  if (c.k_cache.guarded_bytes() != k_expected.guarded_bytes()) return "k_cache differs from the expected copy";
  if (c.v_cache.guarded_bytes() != v_expected.guarded_bytes()) return "v_cache differs from the expected copy";
  return before.changed();
}

TEST(DecodeKvWrite, SanitizeBatchedAndVarlen) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 1;
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    for (int64_t block_size : {1, 5, 16}) {
      KvWriteConfig c;
      c.dtype = dtype;
      c.batch = 3;
      c.heads_kv = 2;
      c.head_dim_qk = 64;
      c.head_dim_v = 40;
      c.block_size = block_size;
      c.max_blocks_per_seq = 64 / block_size + 1;
      c.cache_seqlens = {0, 17, 40};
      c.seqlen_new = 3;
      c.seed = seed++;
      KvWriteCase batched(c);
      EXPECT_EQ(check_kv_write_gpu(batched), "") << c.describe();
      c.varlen = true;
      c.new_tokens = {5, 0, 2};
      KvWriteCase varlen(c);
      EXPECT_EQ(check_kv_write_gpu(varlen), "") << c.describe();
    }
  }
}

TEST(DecodeKvWrite, SanitizeBadIndicesWriteNothing) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  KvWriteConfig c;
  c.batch = 3;
  c.block_size = 4;
  c.max_blocks_per_seq = 3;
  c.cache_seqlens = {0, 10, 5};
  c.seqlen_new = 3;
  KvWriteCase a(c);
  a.block_table.set_int(0, -3);        // sequence 0's first block
  a.block_table.set_int(3 + 2, 1000);  // sequence 1's third block
  a.cache_seqlens.set_int(2, 11);      // sequence 2 runs past its 12 slots
  EXPECT_EQ(check_kv_write_gpu(a), "") << c.describe();
  c.varlen = true;
  c.new_tokens = {2, 3, 1};
  KvWriteCase v(c);
  v.cu_seqlens_new.set_int(2, 100);  // beyond the 6 rows of k_new
  v.cache_seqlens.set_int(0, -1);
  // The reference trusts cu_seqlens_new, so compare against a sane copy instead: rows the bad
  // offset hides must be skipped, and nothing may be read or written out of bounds.
  HostTensor k_before = v.k_cache, v_before = v.v_cache;
  DeviceMirror dev(v.tensors());
  ASSERT_EQ(dev.error(), "");
  KvWriteParams params = v.params();
  params.k_cache = dev.ref(v.k_cache);
  params.v_cache = dev.ref(v.v_cache);
  params.k_new = dev.ref(v.k_new);
  params.v_new = dev.ref(v.v_new);
  params.block_table = dev.ref(v.block_table);
  params.cache_seqlens = dev.ref(v.cache_seqlens);
  params.cu_seqlens_new = dev.ref(v.cu_seqlens_new);
  EXPECT_EQ(run_and_catch([&] { cuda::paged_kv_write(core::prepare_kv_write(params, device_options(false)), nullptr); }), "");
  ASSERT_EQ(cuda_failure(cudaDeviceSynchronize(), "kernel"), "");
  ASSERT_EQ(dev.copy_back(), "");
  EXPECT_EQ(v.k_cache.check_guards("k_cache"), "");
  EXPECT_EQ(v.v_cache.check_guards("v_cache"), "");
}

// ---- forward: continuous batching and short queries ----------------------------------------------

TEST_P(DecodeForward, VarlenQueriesOverPagedCache) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (int64_t block_size : {16, 256, 3}) {
    for (bool causal : {true, false}) {
      AttnConfig c;
      c.layout = Layout::kPaged;
      c.dtype = kAllTypes[seed % 3];
      c.batch = 5;
      c.heads_q = 8;
      c.heads_kv = 2;
      c.head_dim_qk = c.head_dim_v = 128;
      c.block_size = block_size;
      c.seqlens_q = {1, 37, 1, 0, 16};  // decode rows and prefill chunks in one call
      c.seqlens_k = {300, 500, 1, 40, 1025};
      c.causal = causal;
      c.sinks = seed % 3 == 0;
      c.seed = seed++;
      AttnCase a(c);
      EXPECT_EQ(check_forward_decode(a), "") << c.describe();
    }
  }
}

TEST_P(DecodeForward, ShortBatchedQueries) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (DType dtype : kAllTypes) {
    AttnConfig c;
    c.layout = Layout::kBatched;
    c.dtype = dtype;
    c.batch = 2;
    c.heads_q = 16;
    c.heads_kv = 4;
    c.head_dim_qk = c.head_dim_v = 64;
    c.seqlen_q = 4;
    c.seqlen_k = 1500;
    c.causal = true;
    c.softcap = 30.0f;
    AttnCase a(c);
    EXPECT_EQ(check_forward_decode(a), "") << c.describe();
  }
}

TEST(DecodeTier, SupportsSaysWhy) {
  core::Problem p;
  p.dtype = DType::kFloat32;
  p.head_dim_qk = p.head_dim_v = 300;
  std::string why;
  EXPECT_FALSE(cuda::decode_tier_supports(p, true, &why));
  EXPECT_NE(why.find("head dims must be in 1..256"), std::string::npos) << why;
  p.head_dim_qk = p.head_dim_v = 128;
  p.dtype = DType::kBFloat16;
  p.heads_q = 32;
  p.heads_kv = 8;
  p.group = 4;
  p.seqlen_q = 1;
  p.batch = 1;
  p.kv_layout = core::KvLayout::kPaged;
  EXPECT_TRUE(cuda::decode_tier_supports(p, true, &why)) << why;
  p.kv_layout = core::KvLayout::kBatched;
  p.seqlen_q = 1000;
  EXPECT_FALSE(cuda::decode_tier_supports(p, false, &why));
}

INSTANTIATE_TEST_SUITE_P(Decode, DecodeKvcache, ::testing::Range(0, cuda::kDecodeVariants), variant_name);
INSTANTIATE_TEST_SUITE_P(Decode, DecodeSafety, ::testing::Range(0, cuda::kDecodeVariants), variant_name);
INSTANTIATE_TEST_SUITE_P(Decode, DecodeForward, ::testing::Range(0, cuda::kDecodeVariants), variant_name);

}  // namespace
}  // namespace flashsdpa::test
