// The CUDA forward tiers (cuda-mma-sm80 for fp16/bf16, cuda-fp32 for fp32) against the float64
// reference with SPEC §6's rule, over the same grid as the CPU backend: odd head dims, Dqk != Dv,
// GQA, varlen with empty sequences, paged KV with block sizes 1/16/256, every mask and modifier,
// fully masked rows, extreme logits, padded strides (the unaligned load path), poisoned outputs,
// guard regions, and index tensors full of out-of-range values.
//
// Tests named Sanitize* are small and are also run under compute-sanitizer (scripts/gpu-check.sh).
#include <gtest/gtest.h>

#if defined(FLASHSDPA_WITH_CUDA)

#include <limits>
#include <string>
#include <vector>

#include "cuda/block_order.h"
#include "cuda/key_split.h"
#include "gpu_test_util.h"

namespace flashsdpa::test {
namespace {

const std::vector<DType> kAllDtypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};

void expect_passes_as(AttnConfig config, DType dtype) {
  config.dtype = dtype;
  AttnCase c(config);
  EXPECT_EQ(check_forward_cuda(c, tier_for(c)), "") << config.describe();
}

void expect_passes(const AttnConfig& config) {
  for (DType dtype : kAllDtypes) expect_passes_as(config, dtype);
}

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

TEST(CudaForward, HeadDims) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<int64_t, int64_t>> dims = {{8, 8},   {40, 40},   {59, 59},   {64, 64},  {96, 96},
                                                         {111, 111}, {128, 128}, {192, 192}, {256, 256}, {72, 40},
                                                         {64, 128}, {128, 64},  {256, 100}, {1, 3}};
  uint64_t seed = 1;
  for (const auto& [dqk, dv] : dims) {
    for (bool causal : {false, true}) {
      AttnConfig c = batched(97, 130, 2, 1, dqk, dv);
      c.causal = causal;
      c.seed = seed++;
      expect_passes(c);
    }
  }
}

TEST(CudaForward, Lengths) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  const std::vector<std::pair<int64_t, int64_t>> lengths = {{1, 1}, {1, 300}, {300, 1}, {97, 97},
                                                            {257, 64}, {64, 257}, {1025, 300}, {300, 1025}};
  uint64_t seed = 100;
  for (const auto& [sq, sk] : lengths) {
    for (bool causal : {false, true}) {
      AttnConfig c = batched(sq, sk, 2, 2, 64, 64);
      c.batch = sq * sk > 100000 ? 1 : 2;
      c.causal = causal;
      c.seed = seed++;
      expect_passes(c);
    }
  }
}

TEST(CudaForward, LongSequenceHeadDim128) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (bool causal : {false, true}) {
    AttnConfig c = batched(600, 700, 2, 1, 128, 128);
    c.batch = 1;
    c.causal = causal;
    c.seed = 7 + causal;
    expect_passes(c);
  }
}

TEST(CudaForward, GroupedQueryAttention) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (const auto& [hq, hkv] : std::vector<std::pair<int64_t, int64_t>>{{4, 4}, {4, 2}, {8, 1}, {16, 2}}) {
    AttnConfig c = batched(70, 90, hq, hkv, 64, 64);
    c.causal = seed % 2 == 0;
    c.seed = seed++;
    expect_passes(c);
  }
}

TEST(CudaForward, WindowsAndModifiers) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 300;
  struct Mods {
    bool causal;
    int64_t wl, wr;
    float softcap;
    Alibi alibi;
    bool sinks;
  };
  const std::vector<Mods> mods = {
      {false, 16, 0, 0, Alibi::kNone, false},    {false, 5, 7, 0, Alibi::kNone, false},
      {false, -1, 3, 0, Alibi::kNone, false},    {false, 40, -1, 0, Alibi::kNone, false},
      {false, -1, -1, 5.0f, Alibi::kNone, false}, {true, -1, -1, 0, Alibi::kPerHead, false},
      {false, -1, -1, 0, Alibi::kPerBatch, false}, {false, -1, -1, 0, Alibi::kNone, true},
      {true, 128, -1, 0, Alibi::kNone, true},    {true, 8, -1, 30.0f, Alibi::kPerHead, true},
  };
  for (const Mods& m : mods) {
    for (int64_t d : {64, 128, 256}) {
      AttnConfig c = batched(150, 170, 4, 2, d, d);
      c.causal = m.causal;
      c.window_left = m.wl;
      c.window_right = m.wr;
      c.softcap = m.softcap;
      c.alibi = m.alibi;
      c.sinks = m.sinks;
      c.seed = seed++;
      expect_passes(c);
    }
  }
}

TEST(CudaForward, FullyMaskedRows) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  // Sq > Sk with causal (bottom-right aligned): the first Sq - Sk rows see no key.
  for (bool sinks : {false, true}) {
    AttnConfig c = batched(200, 50, 2, 1, 64, 64);
    c.causal = true;
    c.sinks = sinks;
    c.seed = 400 + sinks;
    expect_passes(c);
  }
  // A window that no row's keys fall into for a band of rows.
  AttnConfig c = batched(100, 100, 2, 2, 128, 128);
  c.window_left = 0;
  c.window_right = -1;
  c.seqused_k = {30, 0};
  c.seed = 402;
  expect_passes(c);
}

TEST(CudaForward, ExtremeLogits) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (int64_t d : {64, 128}) {
    for (bool causal : {false, true}) {
      AttnConfig c = batched(90, 110, 2, 1, d, d);
      c.q_stddev = 1000.0;  // |s| ~ 1e4
      c.causal = causal;
      c.sinks = causal;
      c.seed = seed++;
      expect_passes(c);
    }
  }
}

TEST(CudaForward, SequsedK) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = batched(64, 300, 2, 1, 64, 64);
  c.batch = 3;
  c.seqused_k = {300, 0, 77};
  c.causal = true;
  c.seed = 600;
  expect_passes(c);
}

TEST(CudaForward, VarlenWithEmptySequences) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 700;
  for (bool causal : {false, true}) {
    for (int64_t d : {64, 59, 128}) {
      AttnConfig c;
      c.layout = Layout::kVarlen;
      c.batch = 5;
      c.heads_q = 4;
      c.heads_kv = 2;
      c.head_dim_qk = c.head_dim_v = d;
      c.seqlens_q = {0, 5, 130, 1, 70};
      c.seqlens_k = {3, 0, 200, 64, 70};
      c.causal = causal;
      c.seed = seed++;
      expect_passes(c);
    }
  }
}

TEST(CudaForward, PagedBlockSizes) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 800;
  for (int64_t block_size : {1, 16, 256}) {
    for (bool varlen_q : {false, true}) {
      AttnConfig c;
      c.layout = Layout::kPaged;
      c.batch = 3;
      c.heads_q = 4;
      c.heads_kv = 1;
      c.head_dim_qk = c.head_dim_v = 128;
      c.block_size = block_size;
      c.seqlens_k = {100, 1, 300};
      if (varlen_q) c.seqlens_q = {20, 1, 0};
      else c.seqlen_q = 17;
      c.causal = varlen_q;
      c.sinks = !varlen_q;
      c.seed = seed++;
      expect_passes(c);
    }
  }
}

TEST(CudaForward, PaddedStrides) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 900;
  for (int64_t d : {64, 128, 40}) {
    AttnConfig c = batched(80, 95, 4, 2, d, d);
    c.padded_strides = true;
    c.causal = d != 128;
    c.seed = seed++;
    expect_passes(c);
  }
  AttnConfig c;
  c.layout = Layout::kVarlen;
  c.batch = 2;
  c.heads_q = 2;
  c.heads_kv = 1;
  c.head_dim_qk = 111;
  c.head_dim_v = 111;
  c.seqlens_q = {33, 0};
  c.seqlens_k = {50, 9};
  c.padded_strides = true;
  c.seed = seed++;
  expect_passes(c);
}

TEST(CudaForward, NoLse) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = batched(65, 65, 2, 2, 64, 64);
  c.with_lse = false;
  c.seed = 1000;
  expect_passes(c);
}

// ---- safety with bad index tensors (SPEC §5): small, also run under compute-sanitizer ----------

TEST(CudaForward, SanitizeBasic) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (int64_t d : {64, 128, 256, 59}) {
    AttnConfig c = batched(70, 90, 4, 2, d, d);
    c.causal = true;
    c.sinks = true;
    c.softcap = 20.0f;
    c.seed = 1100 + static_cast<uint64_t>(d);
    expect_passes(c);
  }
}

// cuda-fp32's key-split launch (key_split.h): pieces of one key tile each, and runs of several
// tiles that cut items anywhere; partials, counters and the merge under memcheck and racecheck.
TEST(CudaForward, SanitizeFp32KeySplit) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig c = batched(100, 300, 4, 2, 256, 256);
  c.sinks = true;
  c.seed = 1150;
  expect_passes_as(c, DType::kFloat32);
  c = batched(130, 1000, 8, 2, 256, 256);
  c.seed = 1151;
  expect_passes_as(c, DType::kFloat32);
}

TEST(CudaForward, SanitizeBlockTableOutOfRange) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (DType dtype : kAllDtypes) {
    AttnConfig config;
    config.dtype = dtype;
    config.layout = Layout::kPaged;
    config.batch = 2;
    config.heads_q = 2;
    config.heads_kv = 1;
    config.head_dim_qk = config.head_dim_v = 64;
    config.block_size = 16;
    config.seqlens_k = {100, 40};
    config.seqlen_q = 9;
    config.seed = 1200;
    AttnCase c(config);
    // Every entry out of range, both ways: no key reads anything, every row sees no key.
    const std::vector<int32_t> bad = {std::numeric_limits<int32_t>::max(), -1, 1 << 30, std::numeric_limits<int32_t>::min()};
    for (int64_t n = 0; n < c.block_table.numel(); ++n) c.block_table.set_int(n, bad[static_cast<size_t>(n) % bad.size()]);
    EXPECT_EQ(check_forward_cuda(c, tier_for(c)), "") << config.describe();
    for (double x : c.out.values()) ASSERT_EQ(x, 0.0) << config.describe();
  }
}

// The prefill tiers' rare path for a key tile that the mask cuts and whose V holds an Inf or NaN
// (zeroed in shared memory, added back to the allowed rows after the key loop from global
// memory, through the block table when paged) under memcheck and racecheck; the values' exact
// confinement is CudaForward.NonFiniteKeysAndValuesStayInTheirRows.
TEST(CudaForward, SanitizeNonFiniteValues) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 1250;
  for (bool paged : {false, true}) {
    for (int64_t d : {64, 59, 256}) {
      for (DType dtype : kAllDtypes) {
        AttnConfig config = batched(70, 90, 4, 2, d, d);  // bottom-right causal: row i sees keys <= i + 20
        if (paged) {  // sequence 0: 100 keys, row i sees keys <= i + 60
          config.layout = Layout::kPaged;
          config.heads_q = 2;
          config.heads_kv = 1;
          config.block_size = 16;
          config.seqlens_k = {100, 40};
          config.seqlen_q = 40;
        }
        config.dtype = dtype;
        config.causal = true;
        config.seed = seed++;
        AttnCase c(config);
        // Keys seen by the later rows of the first query tile and masked for the earlier ones.
        const int64_t key = paged ? 80 : 60;
        for (int64_t h = 0; h < config.heads_kv; ++h)
          for (int n = 0; n < 2; ++n)
            for (int64_t e = 0; e < d; ++e) {
              const int64_t j = key + n;
              const int64_t row = paged ? c.block_table.get_int(j / config.block_size) * config.block_size +
                                              j % config.block_size  // sequence 0
                                        : j;                       // sequence 0 of the batch
              c.v.set((row * config.heads_kv + h) * d + e,
                      n == 0 ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity());
            }
        EXPECT_EQ(check_forward_cuda(c, tier_for(c)), "") << config.describe();
      }
    }
  }
}

TEST(CudaForward, SanitizeCuSeqlensOutOfRange) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (DType dtype : kAllDtypes) {
    AttnConfig config;
    config.dtype = dtype;
    config.layout = Layout::kVarlen;
    config.batch = 3;
    config.heads_q = 2;
    config.heads_kv = 2;
    config.head_dim_qk = config.head_dim_v = 64;
    config.seqlens_q = {10, 20, 30};
    config.seqlens_k = {15, 25, 35};
    config.seed = 1300;
    AttnCase c(config);
    // Decreasing, negative and past-the-end boundaries: sequences clamp to [0, total).
    const std::vector<int32_t> cu_q = {0, 45, -7, 1 << 30};
    const std::vector<int32_t> cu_k = {0, 1 << 29, 12, -3};
    for (int64_t n = 0; n < 4; ++n) {
      c.cu_seqlens_q.set_int(n, cu_q[static_cast<size_t>(n)]);
      c.cu_seqlens_k.set_int(n, cu_k[static_cast<size_t>(n)]);
    }
    // Rows no sequence covers are not written: compare only what the clamped geometry defines by
    // pre-filling out with zeros on both sides (the check poisons out, so count NaNs instead).
    DeviceMirror dev(c.tensors());
    ASSERT_EQ(dev.error(), "");
    const AttnParams params = device_params(c, dev);
    EXPECT_EQ(run_and_catch([&] { attention_forward(params, cuda_context()); }), "");
    EXPECT_EQ(cuda_failure(cudaDeviceSynchronize(), "kernel"), "");
    ASSERT_EQ(dev.copy_back(), "");
    EXPECT_EQ(check_all_guards(c), "") << config.describe();
  }
}

TEST(CudaForward, SanitizeSequsedKOutOfRange) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  AttnConfig config = batched(40, 50, 2, 1, 128, 128);
  config.batch = 3;
  config.seqused_k = {50, 10, 20};
  config.seed = 1400;
  for (DType dtype : kAllDtypes) {
    config.dtype = dtype;
    AttnCase c(config);
    const std::vector<int32_t> bad = {1 << 30, -100, 49};
    for (int64_t n = 0; n < 3; ++n) c.seqused_k.set_int(n, bad[static_cast<size_t>(n)]);
    EXPECT_EQ(check_forward_cuda(c, tier_for(c)), "") << config.describe();
  }
}

TEST(CudaForward, ExplainNamesTheTier) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (DType dtype : kAllDtypes) {
    AttnConfig config = batched(16, 16, 2, 1, 300, 300);  // over the GPU's 256
    config.dtype = dtype;
    AttnCase c(config);
    DeviceMirror dev(c.tensors());
    ASSERT_EQ(dev.error(), "");
    const Selection sel = explain(device_params(c, dev), Op::kForward, cuda_context());
    EXPECT_FALSE(sel.supported) << sel.tier << ": " << sel.reason;
    EXPECT_NE(sel.reason.find("1..256"), std::string::npos) << sel.reason;
  }
}

// ---- cuda-mma-sm80: causal diagonals, longest-first block order -------------------------------

// Diagonal offsets (Sq != Sk) and sequence ends put a warp's last allowed key at every position
// around the middle of a 64-key tile (31, 32 and 33 keys live), and windows with both edges.
TEST(CudaForward, CausalDiagonalOffsets) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 1500;
  const std::vector<std::pair<int64_t, int64_t>> lengths = {{128, 128}, {160, 192}, {200, 231}, {200, 232},
                                                            {200, 233}, {97, 32}, {300, 287}, {64, 95}};
  for (int64_t d : {64, 128, 256}) {
    for (const auto& [sq, sk] : lengths) {
      AttnConfig c = batched(sq, sk, 2, 1, d, d);
      c.batch = 1;
      c.causal = true;
      c.seed = seed++;
      expect_passes(c);
    }
    AttnConfig c = batched(190, 190, 2, 2, d, d);
    c.window_left = 40;
    c.window_right = 33;
    c.seed = seed++;
    expect_passes(c);
  }
}

// Causal queries longer than hd 64's short-sequence shape takes (4k rows), and a long hd 128
// one: the 128-row shapes on the causal diagonal, in longest-first order.
TEST(CudaForward, CausalLongQueries) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  for (const auto& [d, s] : std::vector<std::pair<int64_t, int64_t>>{{64, 4160}, {128, 2110}}) {
    AttnConfig c = batched(s, s, 2, 1, d, d);
    c.batch = 1;
    c.causal = true;
    c.seed = 1600 + static_cast<uint64_t>(d);
    expect_passes(c);
  }
}

// The longest-first order the kernel uses (block_order.h) hands out every (tile, head, sequence)
// exactly once, groups consecutive pairs, and within a group runs tiles from the last down.
TEST(CudaForward, LongestFirstOrderIsAPermutation) {
  for (uint32_t tiles : {1u, 3u, 8u}) {
    for (uint32_t heads : {1u, 2u, 5u}) {
      for (uint32_t batch : {1u, 3u, 4u}) {
        const uint32_t pairs = heads * batch;
        for (uint32_t groups = 1; groups <= pairs; ++groups) {
          std::vector<int> seen(tiles * pairs, 0);
          int64_t last_pair = -1;
          for (uint32_t n = 0; n < tiles * pairs; ++n) {
            const cuda::BlockWork w = cuda::longest_first_work(n, tiles, heads, batch, groups);
            ASSERT_TRUE(w.tile >= 0 && w.tile < int64_t(tiles) && w.head >= 0 && w.head < int64_t(heads) &&
                        w.batch >= 0 && w.batch < int64_t(batch));
            const int64_t pair = w.batch * int64_t(heads) + w.head;
            ++seen[static_cast<size_t>(pair) * tiles + static_cast<size_t>(w.tile)];
            // Pairs start in increasing order: a new pair appears only past all earlier ones.
            if (pair > last_pair) {
              EXPECT_EQ(w.tile, int64_t(tiles) - 1) << "a pair starts with its longest tile";
              last_pair = pair;
            }
          }
          for (int count : seen) ASSERT_EQ(count, 1) << tiles << " tiles, " << pairs << " pairs, " << groups << " groups";
        }
      }
    }
  }
}

// The fp32 tier's persistent schedule (key_split.h): the blocks' pieces (whole items dealt
// round-robin, then each block's run) together cover every (item, key tile) once; an item's
// pieces lie in consecutive runs, in key order, and the slots the merge reads for them
// (split_piece_slot) are the ones the pieces wrote, each slot written once.
TEST(CudaForward, KeySplitScheduleCoversEveryTileOnce) {
  for (uint32_t items : {1u, 2u, 7u, 30u, 68u, 300u}) {
    for (uint32_t tiles : {1u, 2u, 3u, 16u, 37u}) {
      for (uint32_t blocks : {1u, 2u, 5u, 33u, 132u}) {
        for (uint32_t whole : {0u, items / 3, items - 1, items}) {
          const uint64_t split_tiles = uint64_t(items - whole) * tiles;
          if (split_tiles > 0 && split_tiles < blocks) continue;  // choose_key_split never runs an empty block
          const cuda::KeySplitSchedule s{blocks, whole, items, tiles};
          std::vector<int> covered(size_t(items) * tiles, 0), slot_writes(2 * size_t(blocks), 0);
          std::vector<std::vector<std::pair<uint32_t, uint32_t>>> item_pieces(items);  // (run, slot)
          for (uint32_t r = 0; r < blocks; ++r) {
            if (split_tiles > 0) ASSERT_LT(cuda::split_run_begin(s, r), cuda::split_run_begin(s, r + 1)) << "run " << r << " is empty";
            cuda::BlockPieces cursor = cuda::first_block_piece(s, r);
            cuda::KeySplitPiece piece;
            uint32_t whole_seen = 0;
            while (cuda::next_block_piece(s, r, cursor, piece)) {
              ASSERT_LT(piece.item, items);
              ASSERT_LT(piece.tile_begin, piece.tile_end);
              ASSERT_LE(piece.tile_end, tiles);
              for (uint32_t t = piece.tile_begin; t < piece.tile_end; ++t) ++covered[size_t(piece.item) * tiles + t];
              if (piece.item < whole) {  // the block's whole items first, blocks apart
                ASSERT_TRUE(piece.whole);
                EXPECT_EQ(piece.item, r + whole_seen * blocks);
                ++whole_seen;
                continue;
              }
              EXPECT_EQ(piece.whole, piece.pieces == 1);
              if (!piece.whole) {
                ASSERT_LT(piece.slot, 2 * blocks);
                ++slot_writes[piece.slot];
                item_pieces[piece.item].push_back({r, piece.slot});
                EXPECT_EQ(piece.first + item_pieces[piece.item].size() - 1, r) << "pieces in consecutive runs";
                EXPECT_EQ(piece.first, item_pieces[piece.item][0].first);
              }
            }
          }
          for (int count : covered) ASSERT_EQ(count, 1) << items << " items x " << tiles << " tiles, " << whole << " whole, " << blocks << " blocks";
          for (int writes : slot_writes) ASSERT_LE(writes, 1);
          for (uint32_t item = 0; item < items; ++item) {
            const auto& pieces = item_pieces[item];
            if (pieces.empty()) continue;
            const uint64_t item_begin = uint64_t(item - whole) * tiles;
            const cuda::KeySplitPiece first =
                cuda::split_piece(s, pieces[0].first, std::max(item_begin, cuda::split_run_begin(s, pieces[0].first)));
            ASSERT_EQ(first.pieces, pieces.size());
            for (uint32_t k = 0; k < pieces.size(); ++k)
              EXPECT_EQ(cuda::split_piece_slot(s, first.first + k, item_begin), pieces[k].second);
          }
        }
      }
    }
  }
  // Whole items only where the plain grid fills its waves or items have one tile; otherwise the
  // last two waves' items split (all of them below two waves); never more runs than tiles; off
  // where positions could overflow.
  const cuda::KeySplitSchedule grid = cuda::choose_key_split(2048, 16, 132, 0.99);
  EXPECT_EQ(grid.blocks, 132u);
  EXPECT_EQ(grid.whole_items, 14u * 132u);
  EXPECT_EQ(cuda::choose_key_split(200, 16, 132, 0.99).whole_items, 0u);
  const cuda::KeySplitSchedule full = cuda::choose_key_split(2 * 132, 16, 132, 0.99);
  EXPECT_EQ(full.blocks, 132u);
  EXPECT_EQ(full.whole_items, 264u);
  EXPECT_EQ(cuda::choose_key_split(2048, 1, 132, 0.99).whole_items, 2048u);
  EXPECT_EQ(cuda::choose_key_split(3, 2, 132, 0.99).blocks, 6u);
  const cuda::KeySplitSchedule small = cuda::choose_key_split(3, 2, 132, 0.0);
  EXPECT_EQ(small.blocks, 3u);
  EXPECT_EQ(small.whole_items, 3u);
  EXPECT_EQ(cuda::choose_key_split(int64_t(1) << 31, 16, 132, 0.99).blocks, 0u);
}

// The exact fp32 tier's tile shapes (forward_fp32.cu): several query blocks and key tiles with a
// partial last tile at every padded head dim, Dqk != Dv, the element-wise load path (padded
// strides), and extreme logits at head dim 256 (ExtremeLogits covers 64 and 128).
TEST(CudaForward, Fp32TileShapes) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  struct Shape {
    int64_t dqk, dv;
    bool padded_strides;
    double q_stddev;
  };
  const std::vector<Shape> shapes = {{40, 40, false, 1.0},   {64, 64, false, 1.0},  {64, 64, true, 1.0},
                                     {128, 96, false, 1.0},  {100, 100, true, 1.0}, {200, 256, false, 1.0},
                                     {256, 256, false, 1.0}, {256, 256, false, 1000.0}};
  uint64_t seed = 1500;
  for (const Shape& shape : shapes) {
    for (bool causal : {false, true}) {
      AttnConfig config = batched(300, 333, 2, 1, shape.dqk, shape.dv);
      config.padded_strides = shape.padded_strides;
      config.q_stddev = shape.q_stddev;
      config.causal = causal;
      config.sinks = causal;
      config.seed = seed++;
      expect_passes_as(config, DType::kFloat32);
    }
  }
}

// Head dim 256 in fp32 (cuda-fp32's 64-row tile, or its 32-key fallback where a block has less than
// 210 KB): every K/V source, including the unaligned copies' general path, and key ranges that
// start or end inside a key tile (causal diagonals, window edges, varlen lengths around 64 and 128).
TEST(CudaForward, Fp32HeadDim256Sources) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  auto run = [](const AttnConfig& config) { expect_passes_as(config, DType::kFloat32); };
  uint64_t seed = 1600;
  for (int64_t block_size : {1, 16, 256}) {  // paged, query rows varlen
    AttnConfig c;
    c.layout = Layout::kPaged;
    c.batch = 3;
    c.heads_q = 2;
    c.heads_kv = 1;
    c.head_dim_qk = c.head_dim_v = 256;
    c.block_size = block_size;
    c.seqlens_k = {200, 1, 300};
    c.seqlens_q = {70, 1, 0};
    c.causal = block_size != 256;
    c.sinks = true;
    c.seed = seed++;
    run(c);
  }
  {  // varlen with empty sequences and lengths on both sides of 64 and 128
    AttnConfig c;
    c.layout = Layout::kVarlen;
    c.batch = 5;
    c.heads_q = 2;
    c.heads_kv = 2;
    c.head_dim_qk = 256;
    c.head_dim_v = 200;
    c.seqlens_q = {65, 0, 130, 64, 1};
    c.seqlens_k = {0, 64, 129, 63, 257};
    c.causal = true;
    c.seed = seed++;
    run(c);
  }
  for (const auto& [wl, wr] : std::vector<std::pair<int64_t, int64_t>>{{100, 0}, {5, 70}, {200, -1}, {-1, 40}}) {
    AttnConfig c = batched(600, 610, 2, 1, 256, 256);
    c.batch = 1;
    c.window_left = wl;
    c.window_right = wr;
    c.softcap = wl == 5 ? 10.0f : 0.0f;
    c.alibi = wl == 200 ? Alibi::kPerHead : Alibi::kNone;
    c.seed = seed++;
    run(c);
  }
  for (bool causal : {false, true}) {  // unaligned rows: the copies' general path
    AttnConfig c = batched(200, 190, 2, 1, 256, 256);
    c.padded_strides = true;
    c.causal = causal;
    c.seed = seed++;
    run(c);
  }
}

// Head dim 256 fp32 calls on the persistent launch (key_split.h; batched calls without a window):
// one item in one piece per key tile, items cut at irregular points, logits that put each piece's
// max far apart, sinks, softcap with ALiBi, Dqk != Dv, unaligned rows; blocks that take several
// whole items, then a run.
// FLASHSDPA_FP32_KEY_SPLIT=0 / 1 runs the same calls plain / always split (scripts/gpu-check.sh
// runs them as selected and plain; =1 is run by hand).
TEST(CudaForward, Fp32KeySplitPieces) {
  FLASHSDPA_SKIP_WITHOUT_GPU();
  uint64_t seed = 1700;
  auto run = [&](AttnConfig c) {
    c.seed = seed++;
    expect_passes_as(c, DType::kFloat32);
  };
  {  // one item, 38 key tiles, the last partial
    AttnConfig c = batched(64, 64 * 37 + 5, 1, 1, 256, 256);
    c.batch = 1;
    c.sinks = true;
    run(c);
    c.q_stddev = 1000.0;  // |s| ~ 1e4: every piece's max differs by thousands
    run(c);
  }
  run(batched(128, 1000, 8, 2, 256, 256));  // 32 items x 16 tiles: runs of ~4 tiles cut items anywhere
  {  // 200 items x 3 tiles on a device of ~100-200 blocks: runs of 1-2 items, whole items among pieces
    AttnConfig c = batched(64 * 20, 130, 10, 5, 256, 256);
    c.batch = 1;
    c.sinks = true;
    run(c);
  }
  {  // 33 query tiles x 8 heads: two whole waves of 132 SMs (whole items only, two per block)
    AttnConfig c = batched(64 * 33, 100, 8, 2, 256, 256);
    c.batch = 1;
    run(c);
  }
  {  // 101 query tiles (the last of 17 rows) x 4 heads: two whole items per block, then ~3-tile runs
    AttnConfig c = batched(64 * 100 + 17, 130, 4, 1, 256, 256);
    c.batch = 1;
    c.sinks = true;
    run(c);
  }
  {
    AttnConfig c = batched(100, 300, 4, 2, 256, 200);
    c.batch = 3;
    c.softcap = 20.0f;
    c.alibi = Alibi::kPerHead;
    run(c);
  }
  {
    AttnConfig c = batched(70, 333, 2, 1, 200, 256);
    c.padded_strides = true;
    c.q_stddev = 30.0;
    run(c);
  }
}

}  // namespace
}  // namespace flashsdpa::test

#else  // built without the CUDA backend

TEST(CudaForward, NotBuilt) { GTEST_SKIP() << "flashsdpa was built without the CUDA backend"; }

#endif
