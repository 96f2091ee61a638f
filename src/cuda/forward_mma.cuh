// The tensor-core forward (tier kCudaMma): FlashAttention-2 on mma.sync m16n8k16, fp16/bf16 in,
// fp32 accumulation, for sm_80 and newer.
//
// One thread block owns kBlockM query rows of one (sequence, query head); each warp owns
// kWarpRows = 16 * kMTiles consecutive rows of them. Key/value tiles of kBlockN rows stream
// through a kStages-deep ring of shared-memory buffers filled by cp.async, so the copy of tile
// t + kStages - 1 overlaps the math of tile t. Per key tile each warp computes
//     S = Q K^T                        (ldmatrix K, mma)
//     mask + score modifiers           (boundary tiles only; interior tiles skip it)
//     online softmax in the log2 domain (the scale is folded into one FFMA before exp2)
//     O += P V                         (P re-used from the S registers, ldmatrix.trans V)
// and finally O / Z is staged through shared memory for 16-byte coalesced stores.
//
// Every layout (batched, varlen, paged, dense cache) goes through core::key_offset() (resolved once
// per block for the layouts that are linear in the key index), every mask
// through core::Mask, every modifier through core::ScoreMod: one definition for all backends.
// Shared memory rows are XOR-swizzled in 16-byte chunks (chunk ^ (row & 7)) so that the eight row
// addresses of one ldmatrix phase, and the cp.async writes, hit eight different bank groups.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/mask.h"
#include "core/problem.h"
#include "core/sequence.h"
#include "cuda/block_order.h"
#include "cuda/device_utils.cuh"
#include "cuda/launch.h"

namespace flashsdpa::cuda {

// Tile shape of the tensor-core forward for one padded head dim (both Dqk and Dv are padded to
// kHeadDim; see launch_mma_forward for the built sizes and why).
template <int kHeadDim_, int kWarps_, int kMTiles_, int kBlockN_, int kStages_, bool kQInRegisters_,
          int kMinBlocksPerSm_>
struct MmaTile {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kMTiles = kMTiles_;  // m16 row tiles per warp
  static constexpr int kWarpRows = 16 * kMTiles;
  static constexpr int kBlockM = kWarpRows * kWarps;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr bool kQInRegisters = kQInRegisters_;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;

  static constexpr int kChunks = kHeadDim / 8;     // 16-byte chunks per row
  static constexpr int kDimSteps = kHeadDim / 16;  // k16 steps over the head dim
  static constexpr int kKeyTiles = kBlockN / 8;    // n8 score tiles per m16 tile
  static constexpr int kKeySteps = kBlockN / 16;   // k16 steps of P V
  static constexpr int kOutTiles = kHeadDim / 8;   // n8 output tiles

  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kQBytes = kBlockM * kRowBytes;
  static constexpr int kKvTileBytes = kBlockN * kRowBytes;
  static constexpr int kStageBytes = 2 * kKvTileBytes;  // K then V
  static constexpr int kFlagsOffset = kQBytes + kStages * kStageBytes;
  static constexpr int kSmemBytes = kFlagsOffset + kStages * kBlockN;  // + paged key-valid flags

  static_assert(kHeadDim % 64 == 0, "the XOR swizzle needs at least 8 chunks per row");
  static_assert(kBlockN % 16 == 0, "key tiles are whole k16 steps");
  static_assert(kStages >= 2, "the ring needs a buffer being filled and one being read");
};

namespace mma_detail {

// Byte offset of (row, 16-byte chunk) in a swizzled tile.
template <class Tile>
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
  return static_cast<uint32_t>(row * Tile::kRowBytes + ((chunk ^ (row & 7)) << 4));
}

// Shared-memory addresses of ldmatrix.x4 fragments. Every fragment row a lane addresses is its
// lane row plus a multiple of 8, so the swizzle term (row & 7) is fixed per lane, and the chunk a
// lane reads is an even compile-time chunk plus a fixed low bit. Both fold into one per-lane XOR
// value resolved once per thread: an address is then base + compile-time row offset +
// ((even_chunk ^ x) << 4), two instructions instead of recomputing rows and swizzles each time.
struct LaneFragment {
  uint32_t row_bytes;  // the lane's row within a 16-row fragment, in bytes
  uint32_t x;          // (chunk low bit) ^ (row & 7)

  // A operands (Q) and transposed B operands (V): matrices ordered (rows 0-7, chunk 0),
  // (rows 8-15, chunk 0), (rows 0-7, chunk 1), (rows 8-15, chunk 1).
  template <class Tile>
  __device__ __forceinline__ static LaneFragment rows_first() {
    const int lane = threadIdx.x & 31, quad = lane >> 3;
    return {static_cast<uint32_t>(((lane & 7) + ((quad & 1) << 3)) * Tile::kRowBytes),
            static_cast<uint32_t>((quad >> 1) ^ (lane & 7))};
  }
  // B operands (K): (rows 0-7, chunk 0), (rows 0-7, chunk 1), (rows 8-15, chunk 0), (rows 8-15, chunk 1).
  template <class Tile>
  __device__ __forceinline__ static LaneFragment chunks_first() {
    const int lane = threadIdx.x & 31, quad = lane >> 3;
    return {static_cast<uint32_t>(((lane & 7) + ((quad >> 1) << 3)) * Tile::kRowBytes),
            static_cast<uint32_t>((quad & 1) ^ (lane & 7))};
  }
  // Address of the fragment at tile row `row16` (a multiple of 16) and even chunk `chunk`.
  template <class Tile>
  __device__ __forceinline__ uint32_t at(uint32_t tile, int row16, int chunk) const {
    return tile + row16 * Tile::kRowBytes + row_bytes + ((static_cast<uint32_t>(chunk) ^ x) << 4);
  }
};

// Per-block view of the problem: which sequence, head and rows this block computes.
struct BlockView {
  core::SeqView seq;
  core::Mask mask;
  int64_t b = 0, h = 0, kv_head = 0;
  int64_t row0 = 0, row_end = 0;  // query rows [row0, row_end) of the sequence
  // Batched, varlen and dense-cache K/V are linear in the key index: key j of this (sequence,
  // kv head) sits at k_key0 + j * k.row_stride. Resolved once here instead of per loaded row.
  bool linear_kv = false;
  int64_t k_key0 = 0, v_key0 = 0;
};

// Copies rows of one operand into a swizzled tile: `row_base(r)` gives the element offset of tile
// row r (-1 = no row: zero-filled, nothing read). `dim` valid columns, the rest zero-filled.
template <class Tile, class RowBase>
__device__ __forceinline__ void load_tile(unsigned char* tile, const uint16_t* base, int rows, int dim,
                                          bool vector_io, RowBase row_base) {
  for (int c = threadIdx.x; c < rows * Tile::kChunks; c += Tile::kThreads) {
    const int row = c / Tile::kChunks, chunk = c % Tile::kChunks;
    const int64_t offset = row_base(row);
    const int col = chunk * 8;
    const uint32_t dst = smem_address(tile + swizzled<Tile>(row, chunk));
    if (vector_io) {
      const bool live = offset >= 0 && col < dim;
      cp_async_16(dst, live ? base + offset + col : base, live ? 16 : 0);
    } else {
      // Unaligned rows (odd head dims, odd strides): element loads, same zero fill.
      uint16_t v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = (offset >= 0 && col + e < dim) ? base[offset + col + e] : uint16_t(0);
      uint4 packed;
      packed.x = v[0] | (uint32_t(v[1]) << 16);
      packed.y = v[2] | (uint32_t(v[3]) << 16);
      packed.z = v[4] | (uint32_t(v[5]) << 16);
      packed.w = v[6] | (uint32_t(v[7]) << 16);
      *reinterpret_cast<uint4*>(tile + swizzled<Tile>(row, chunk)) = packed;
    }
  }
}

// The fast copy of K/V rows that are linear in the key index, with 16-byte aligned rows. This
// thread always moves chunk `chunk` of rows row0 + k * kRowStep of every tile, so its shared-memory
// offsets are compile-time per k, and its global addresses are one running pointer per operand that
// steps by a fixed byte count per row and per tile: two integer adds per 16-byte copy. Rows are
// checked against the sequence's end only in the last, partial tile.
template <class Tile>
struct LinearKv {
  static constexpr int kRowStep = Tile::kThreads / Tile::kChunks;
  static constexpr int kRowsPerThread = Tile::kBlockN / kRowStep;
  static_assert(Tile::kThreads % Tile::kChunks == 0 && Tile::kBlockN % kRowStep == 0, "whole rows per pass");

  const unsigned char* k;  // this thread's chunk of its first row in the next tile to load
  const unsigned char* v;
  bool k_live, v_live;     // the chunk holds real columns (head dims padded up to kHeadDim read none)

  __device__ __forceinline__ void init(const core::Problem& p, const BlockView& blk, int64_t first_key) {
    const int row0 = threadIdx.x / Tile::kChunks, chunk = threadIdx.x % Tile::kChunks;
    k = reinterpret_cast<const unsigned char*>(static_cast<const uint16_t*>(p.k.ptr) + blk.k_key0 +
                                               (first_key + row0) * p.k.row_stride + chunk * 8);
    v = reinterpret_cast<const unsigned char*>(static_cast<const uint16_t*>(p.v.ptr) + blk.v_key0 +
                                               (first_key + row0) * p.v.row_stride + chunk * 8);
    k_live = chunk * 8 < p.head_dim_qk;
    v_live = chunk * 8 < p.head_dim_v;
  }

  // Copies one operand's tile; `rows_left` keys remain in the sequence from the tile's first key.
  template <bool kFull>
  __device__ __forceinline__ static void copy(unsigned char* tile, const unsigned char* src, const void* base,
                                              int64_t row_stride, bool col_live, int rows_left) {
    const int row0 = threadIdx.x / Tile::kChunks, chunk = threadIdx.x % Tile::kChunks;
    const uint32_t tile_address = smem_address(tile);
    const int64_t step = row_stride * (2 * kRowStep);
    // With kRowStep a multiple of 8, (row0 + r * kRowStep) & 7 == row0 & 7: one swizzle per thread
    // and compile-time offsets; otherwise each row is swizzled on its own.
    auto dst = [&](int r) -> uint32_t {
      if constexpr (kRowStep % 8 == 0) return tile_address + swizzled<Tile>(row0, chunk) + r * kRowStep * Tile::kRowBytes;
      return tile_address + swizzled<Tile>(row0 + r * kRowStep, chunk);
    };
    if (kFull && col_live) {
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) cp_async_16(dst(r), src + r * step, 16);
      return;
    }
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) {
      const bool live = col_live && row0 + r * kRowStep < rows_left;
      cp_async_16(dst(r), live ? src + r * step : base, live ? 16 : 0);
    }
  }

  // Copies the next K and V tiles and moves on to the one after.
  __device__ __forceinline__ void copy_next(unsigned char* stage, const core::Problem& p, bool full, int rows_left) {
    if (full) {
      copy<true>(stage, k, p.k.ptr, p.k.row_stride, k_live, rows_left);
      copy<true>(stage + Tile::kKvTileBytes, v, p.v.ptr, p.v.row_stride, v_live, rows_left);
    } else {
      copy<false>(stage, k, p.k.ptr, p.k.row_stride, k_live, rows_left);
      copy<false>(stage + Tile::kKvTileBytes, v, p.v.ptr, p.v.row_stride, v_live, rows_left);
    }
    k += p.k.row_stride * (2 * Tile::kBlockN);
    v += p.v.row_stride * (2 * Tile::kBlockN);
  }
};

template <class Tile>
__device__ __forceinline__ void load_q_tile(unsigned char* smem_q, const MmaArgs& args, const BlockView& blk) {
  const core::Problem& p = args.p;
  load_tile<Tile>(smem_q, static_cast<const uint16_t*>(p.q.ptr), Tile::kBlockM, static_cast<int>(p.head_dim_qk),
                  args.vector_io, [&](int r) -> int64_t {
                    const int64_t i = blk.row0 + r;
                    return i < blk.row_end ? core::q_offset(p, blk.seq, blk.b, i, blk.h) : -1;
                  });
}

// Element offset of key j's row of K or V (kv = p.k or p.v, key0 = blk.k_key0 or blk.v_key0), or
// -1 when the key reads nothing: past the sequence's end, or a paged block_table entry out of range.
__device__ __forceinline__ int64_t kv_row_offset(const core::Problem& p, const BlockView& blk, const core::Operand& kv,
                                                 int64_t key0, int64_t j) {
  if (j >= blk.seq.k_end) return -1;
  if (blk.linear_kv) return key0 + j * kv.row_stride;
  const int64_t offset = core::key_offset(p, blk.seq, kv, blk.b, j);
  return offset < 0 ? -1 : offset + blk.kv_head * kv.head_stride;
}

// Loads keys [n0, n0 + kBlockN) of K and V. Keys past the sequence's end, and paged keys whose
// block_table entry is out of range, read nothing and are flagged invalid for the mask. Linear,
// aligned layouts take LinearKv's running pointers (`lin`, advanced one tile per call).
template <class Tile>
__device__ __forceinline__ void load_kv_tile(unsigned char* stage, unsigned char* key_valid, const MmaArgs& args,
                                             const BlockView& blk, LinearKv<Tile>& lin, int64_t n0) {
  const core::Problem& p = args.p;
  if (blk.linear_kv && args.vector_io) {
    const int64_t left = blk.seq.k_end - n0;
    lin.copy_next(stage, p, left >= Tile::kBlockN, static_cast<int>(core::clamp_i64(left, 0, Tile::kBlockN)));
    return;
  }
  auto key_row = [&](const core::Operand& kv, int64_t key0, int r) { return kv_row_offset(p, blk, kv, key0, n0 + r); };
  load_tile<Tile>(stage, static_cast<const uint16_t*>(p.k.ptr), Tile::kBlockN, static_cast<int>(p.head_dim_qk),
                  args.vector_io, [&](int r) { return key_row(p.k, blk.k_key0, r); });
  load_tile<Tile>(stage + Tile::kKvTileBytes, static_cast<const uint16_t*>(p.v.ptr), Tile::kBlockN,
                  static_cast<int>(p.head_dim_v), args.vector_io, [&](int r) { return key_row(p.v, blk.v_key0, r); });
  if (!blk.linear_kv) {
    for (int r = threadIdx.x; r < Tile::kBlockN; r += Tile::kThreads) key_valid[r] = key_row(p.k, 0, r) >= 0;
  }
}

// A fragments of Q for one m16 tile and one k16 step, from the swizzled Q tile.
template <class Tile>
__device__ __forceinline__ void load_q_fragment(uint32_t (&a)[4], uint32_t smem_q, const LaneFragment& lanes,
                                                int row0, int step) {
  ldmatrix_x4(a, lanes.at<Tile>(smem_q, row0, step * 2));
}

// Q fragments of one warp: held in registers for the whole key loop when kQInRegisters (small
// head dims), otherwise re-read from shared memory at every k16 step.
template <class Tile, bool kInRegisters = Tile::kQInRegisters>
struct QFragments;

template <class Tile>
struct QFragments<Tile, true> {
  uint32_t a[Tile::kMTiles][Tile::kDimSteps][4];
  __device__ __forceinline__ void init(const unsigned char* smem_q, int warp_row0) {
    const LaneFragment lanes = LaneFragment::rows_first<Tile>();
#pragma unroll
    for (int mt = 0; mt < Tile::kMTiles; ++mt)
#pragma unroll
      for (int s = 0; s < Tile::kDimSteps; ++s)
        load_q_fragment<Tile>(a[mt][s], smem_address(smem_q), lanes, warp_row0 + mt * 16, s);
  }
  __device__ __forceinline__ void get(uint32_t (&out)[4], int mt, int step) const {
#pragma unroll
    for (int e = 0; e < 4; ++e) out[e] = a[mt][step][e];
  }
};

template <class Tile>
struct QFragments<Tile, false> {
  uint32_t warp_q;  // shared address of the warp's first Q row
  LaneFragment lanes;
  __device__ __forceinline__ void init(const unsigned char* q, int row0) {
    warp_q = smem_address(q) + row0 * Tile::kRowBytes;
    lanes = LaneFragment::rows_first<Tile>();
  }
  __device__ __forceinline__ void get(uint32_t (&out)[4], int mt, int step) const {
    load_q_fragment<Tile>(out, warp_q, lanes, mt * 16, step);
  }
};

// S = Q K^T for the warp's rows against one key tile. All kDimSteps steps run: columns past the
// real head dim are zero in both Q and K (the loads zero-fill them), so they add nothing, and a
// loop with a compile-time trip count keeps branches out of the mma stream.
template <class Tile, class E>
__device__ __forceinline__ void compute_scores(float (&s)[Tile::kMTiles][Tile::kKeyTiles][4],
                                               const QFragments<Tile>& q, const unsigned char* smem_k) {
  const LaneFragment lanes = LaneFragment::chunks_first<Tile>();
  const uint32_t tile_k = smem_address(smem_k);
#pragma unroll
  for (int mt = 0; mt < Tile::kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < Tile::kKeyTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
#pragma unroll
  for (int step = 0; step < Tile::kDimSteps; ++step) {
    uint32_t a[Tile::kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < Tile::kMTiles; ++mt) q.get(a[mt], mt, step);
#pragma unroll
    for (int np = 0; np < Tile::kKeyTiles / 2; ++np) {
      // matrices: (keys 0-7, k 0-7), (keys 0-7, k 8-15), (keys 8-15, k 0-7), (keys 8-15, k 8-15)
      uint32_t b[4];
      ldmatrix_x4(b, lanes.at<Tile>(tile_k, np * 16, step * 2));
#pragma unroll
      for (int mt = 0; mt < Tile::kMTiles; ++mt) {
        mma_16816<E>(s[mt][2 * np], a[mt], b[0], b[1]);
        mma_16816<E>(s[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// Boundary tiles: scores of disallowed (row, key) pairs, and of keys that read nothing, become
// -inf. Each row's allowed keys [row_begin, row_end) (core::Mask) are turned into tile-local
// bounds once per row, so each score costs two integer compares. With softcap/ALiBi every score
// goes through core::ScoreMod in natural units first; its ALiBi distance |i + diag - j| is taken
// relative to the tile's first key to stay in small numbers. kExactModifiers (fp32 inputs) takes
// the modifiers in double: tanhf is not correctly rounded (and an approximation under fast math),
// and its error times softcap would exceed fp32 rounding of the score (SPEC §6).
template <class Tile, bool kExactModifiers = false>
__device__ __forceinline__ void mask_and_modify(float (&s)[Tile::kMTiles][Tile::kKeyTiles][4], const MmaArgs& args,
                                                const BlockView& blk, int64_t warp_row0, int64_t n0,
                                                bool needs_mask, const unsigned char* key_valid) {
  const core::Problem& p = args.p;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const bool paged = p.kv_layout == core::KvLayout::kPaged;
  core::ScoreMod mod;
  if (args.has_score_mod) {
    mod.softcap = p.softcap;
    mod.has_alibi = p.alibi_slopes != nullptr;
    if (mod.has_alibi) mod.alibi_slope = p.alibi_slopes[blk.b * p.alibi_batch_stride + blk.h];
  }
#pragma unroll
  for (int mt = 0; mt < Tile::kMTiles; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t i = warp_row0 + mt * 16 + g + 8 * half;
      int lo = 0, hi = Tile::kBlockN;
      if (needs_mask) {
        lo = static_cast<int>(core::clamp_i64(blk.mask.row_begin(i) - n0, 0, Tile::kBlockN));
        hi = static_cast<int>(core::clamp_i64(blk.mask.row_end(i) - n0, 0, Tile::kBlockN));
      }
      const int64_t distance0 = i + blk.mask.diag - n0;  // ALiBi: i + diag - j = distance0 - jj
#pragma unroll
      for (int nt = 0; nt < Tile::kKeyTiles; ++nt)
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          const int jj = nt * 8 + 2 * t + (e & 1);
          float x = s[mt][nt][e];
          if (args.has_score_mod) {
            if constexpr (kExactModifiers) {
              x = static_cast<float>(mod.apply(static_cast<double>(x) * p.scale, distance0, jj, 0));
            } else {
              x = mod.apply(x * p.scale, distance0, jj, 0);
            }
          }
          if (jj < lo || jj >= hi || (paged && !key_valid[jj])) x = -INFINITY;
          s[mt][nt][e] = x;
        }
    }
}

// The online softmax's state before the first key tile: O = 0, running max -inf, running sum 0.
template <class Tile>
__device__ __forceinline__ void start_rows(float (&o)[Tile::kMTiles][Tile::kOutTiles][4],
                                           float (&row_max)[Tile::kMTiles][2], float (&row_sum)[Tile::kMTiles][2]) {
#pragma unroll
  for (int mt = 0; mt < Tile::kMTiles; ++mt) {
#pragma unroll
    for (int dt = 0; dt < Tile::kOutTiles; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][dt][e] = 0.0f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }
}

// Online softmax of one key tile, in place: scores -> probabilities, running max/sum updated and
// the output accumulator rescaled. Scores are in units where score * unit = log2-domain logit.
template <class Tile>
__device__ __forceinline__ void softmax_step(float (&s)[Tile::kMTiles][Tile::kKeyTiles][4],
                                             float (&o)[Tile::kMTiles][Tile::kOutTiles][4],
                                             float (&row_max)[Tile::kMTiles][2], float (&row_sum)[Tile::kMTiles][2],
                                             float unit) {
  float row_factor[Tile::kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < Tile::kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < Tile::kKeyTiles; ++nt) tile_max = fmaxf(tile_max, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
      tile_max = quad_max(tile_max);
      const float new_max = fmaxf(row_max[mt][r], tile_max * unit);
      // A row that has seen no allowed key keeps max = -inf; its factor is 0 and the accumulator
      // is 0 anyway. Subtracting 0 then keeps exp2(-inf - 0) = 0 and never forms -inf - -inf.
      const float factor = row_max[mt][r] == -INFINITY ? 0.0f : fast_exp2(row_max[mt][r] - new_max);
      const float shift = new_max == -INFINITY ? 0.0f : new_max;
      row_max[mt][r] = new_max;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < Tile::kKeyTiles; ++nt)
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          const float prob = fast_exp2(fmaf(s[mt][nt][e], unit, -shift));
          s[mt][nt][e] = prob;
          sum += prob;
        }
      row_sum[mt][r] = row_sum[mt][r] * factor + sum;  // per-thread partial; reduced over the quad at the end
      row_factor[mt][r] = factor;
    }
  // Past the first tiles a row's max rarely moves: skip the rescale of O (kOutTiles * 4 FMULs per
  // row) whenever no row of the warp needs it.
  bool rescale = false;
#pragma unroll
  for (int mt = 0; mt < Tile::kMTiles; ++mt) rescale |= row_factor[mt][0] != 1.0f || row_factor[mt][1] != 1.0f;
  if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
    for (int mt = 0; mt < Tile::kMTiles; ++mt)
#pragma unroll
      for (int dt = 0; dt < Tile::kOutTiles; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mt][dt][e] *= row_factor[mt][e >> 1];
  }
}

// O += P V. P's accumulator layout is the A-fragment layout of the next mma, so it never leaves
// registers; V comes from shared memory through ldmatrix.trans. Output columns past the real
// head dim come from zero-filled V columns and are never stored.
template <class Tile, class E>
__device__ __forceinline__ void accumulate_pv(float (&o)[Tile::kMTiles][Tile::kOutTiles][4],
                                              const float (&s)[Tile::kMTiles][Tile::kKeyTiles][4],
                                              const unsigned char* smem_v) {
  const LaneFragment lanes = LaneFragment::rows_first<Tile>();
  const uint32_t tile_v = smem_address(smem_v);
#pragma unroll
  for (int step = 0; step < Tile::kKeySteps; ++step) {
    uint32_t a[Tile::kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < Tile::kMTiles; ++mt) {
      a[mt][0] = E::pack(s[mt][2 * step][0], s[mt][2 * step][1]);
      a[mt][1] = E::pack(s[mt][2 * step][2], s[mt][2 * step][3]);
      a[mt][2] = E::pack(s[mt][2 * step + 1][0], s[mt][2 * step + 1][1]);
      a[mt][3] = E::pack(s[mt][2 * step + 1][2], s[mt][2 * step + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < Tile::kOutTiles / 2; ++dp) {
      // matrices: (keys 0-7, d 0-7), (keys 8-15, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 8-15)
      uint32_t b[4];
      ldmatrix_x4_trans(b, lanes.at<Tile>(tile_v, step * 16, dp * 2));
#pragma unroll
      for (int mt = 0; mt < Tile::kMTiles; ++mt) {
        mma_16816<E>(o[mt][2 * dp], a[mt], b[0], b[1]);
        mma_16816<E>(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// The correction of boundary tiles whose value tile held an Inf or NaN (device_utils.cuh says
// why). Their products saw those elements as zeros; here, after the key loop, each one is added
// to the rows whose mask allows its key. A non-finite term is sticky under the positive factors
// of the online softmax and the final 1 / Z, so adding it at the end gives what adding p x v at
// its tile gives, and needs no probability: p x v has the class of v when p > 0, and p is 0 or
// NaN for an allowed key only when its score is -inf or NaN, that is when its K row (or the
// query row, which makes the whole row NaN anyway) holds an Inf or NaN; then the term is NaN,
// as 0 x Inf and 0 x NaN are in the reference. Rare, and after the loop, where the score
// registers are free: values come straight from global memory. Keys are those of the block's
// boundary tiles (tile indices outside [full_begin, full_end) of num_tiles from first_key), which
// hold every tile that was zeroed; a term added twice changes nothing (Inf + Inf, NaN + NaN).
// Warp-uniform, no barrier.
template <class Tile, class E>
__device__ __forceinline__ void add_nonfinite_values(float (&o)[Tile::kMTiles][Tile::kOutTiles][4],
                                                     const core::Problem& p, const BlockView& blk,
                                                     int64_t warp_row0, int64_t first_key, int num_tiles,
                                                     int full_begin, int full_end, int col0 = 0) {
  static_assert(2 * Tile::kOutTiles <= 64, "one bit per column of the lane in a 64-bit mask");
  using Bits = typename E::Bits;
  constexpr Bits kExponent = E::kElementExponent;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const Bits* k = static_cast<const Bits*>(p.k.ptr);
  const Bits* v = static_cast<const Bits*>(p.v.ptr);
  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);
  auto row_nonfinite = [&](const Bits* row, int dim) {
    bool found = false;
#pragma unroll 1
    for (int c = lane; c < dim; c += 32) found |= (row[c] & kExponent) == kExponent;
    return __any_sync(0xffffffffu, found);
  };
#pragma unroll 1
  for (int kt = 0; kt < num_tiles; ++kt) {
    if (kt == full_begin && full_end > full_begin) kt = full_end;  // interior tiles: nothing was zeroed
    if (kt >= num_tiles) break;
#pragma unroll 1
    for (int key = 0; key < Tile::kBlockN; ++key) {
      const int64_t j = first_key + int64_t(kt) * Tile::kBlockN + key;
      const int64_t v_row = kv_row_offset(p, blk, p.v, blk.v_key0, j);
      if (v_row < 0 || !row_nonfinite(v + v_row, dv)) continue;
      const int64_t k_row = kv_row_offset(p, blk, p.k, blk.k_key0, j);
      const float nan = __int_as_float(0x7fffffff);
      const float score_term = k_row >= 0 && row_nonfinite(k + k_row, dqk) ? nan : 1.0f;
      // Bit 2 dt + e: this lane's column dt * 8 + 2t + e is Inf or NaN. Found in a runtime loop
      // and applied under that bit, so that no value is loaded ahead and kept in a register.
      uint64_t bad = 0;
#pragma unroll 1
      for (int dt = 0; dt < Tile::kOutTiles; ++dt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = col0 + dt * 8 + 2 * t + e;
          if (col < dv && !isfinite(E::to_float(v[v_row + col]))) bad |= uint64_t(1) << (2 * dt + e);
        }
      if (bad == 0) continue;
#pragma unroll
      for (int mt = 0; mt < Tile::kMTiles; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if (!blk.mask.allowed(warp_row0 + mt * 16 + g + 8 * r, j)) continue;
#pragma unroll
          for (int dt = 0; dt < Tile::kOutTiles; ++dt)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              if ((bad >> (2 * dt + e)) & 1u)  // score_term: p x v is NaN when p is 0 or NaN
                o[mt][dt][2 * r + e] += score_term * E::to_float(v[v_row + col0 + dt * 8 + 2 * t + e]);
        }
    }
  }
}

// Sinks, normalisation and LSE of the warp's rows: O becomes the output, in registers.
template <class Tile>
__device__ __forceinline__ void normalize_rows(float (&o)[Tile::kMTiles][Tile::kOutTiles][4],
                                               float (&row_max)[Tile::kMTiles][2], float (&row_sum)[Tile::kMTiles][2],
                                               const MmaArgs& args, const BlockView& blk, int64_t warp_row0) {
  const core::Problem& p = args.p;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < Tile::kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float m = row_max[mt][r];
      float sum = quad_sum(row_sum[mt][r]);
      if (p.sinks != nullptr) {
        // The sink is a logit with no value row: it joins the normaliser only (core::SoftmaxRow).
        const float sink = p.sinks[blk.h] * kLog2e;
        const float new_max = fmaxf(m, sink);
        const float factor = m == -INFINITY ? 0.0f : fast_exp2(m - new_max);
        sum = sum * factor + fast_exp2(sink - new_max);
        m = new_max;
#pragma unroll
        for (int dt = 0; dt < Tile::kOutTiles; ++dt) {
          o[mt][dt][2 * r] *= factor;
          o[mt][dt][2 * r + 1] *= factor;
        }
      }
      // sum is NaN when a NaN score reached this row: keep it visible (core::SoftmaxRow).
      const float inv = sum > 0.0f ? 1.0f / sum : (sum == 0.0f ? 0.0f : sum);
#pragma unroll
      for (int dt = 0; dt < Tile::kOutTiles; ++dt) {
        o[mt][dt][2 * r] *= inv;
        o[mt][dt][2 * r + 1] *= inv;
      }
      const int64_t i = warp_row0 + mt * 16 + g + 8 * r;
      if (p.lse != nullptr && t == 0 && i < blk.row_end) {
        p.lse[core::lse_offset(p, blk.seq, blk.b, i, blk.h)] =
            sum > 0.0f ? m * kLn2 + logf(sum) : (sum == 0.0f ? -INFINITY : sum);
      }
    }
}

// Sinks, normalisation, LSE, then the warp's rows of O through shared memory to global memory.
template <class Tile, class E>
__device__ __forceinline__ void finish_and_store(float (&o)[Tile::kMTiles][Tile::kOutTiles][4],
                                                 float (&row_max)[Tile::kMTiles][2], float (&row_sum)[Tile::kMTiles][2],
                                                 const MmaArgs& args, const BlockView& blk, int64_t warp_row0,
                                                 unsigned char* staging) {
  normalize_rows<Tile>(o, row_max, row_sum, args, blk, warp_row0);
  const core::Problem& p = args.p;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;

  // Stage the warp's rows (the warp's own rows of the Q tile, which nothing else reads now).
#pragma unroll
  for (int mt = 0; mt < Tile::kMTiles; ++mt)
#pragma unroll
    for (int dt = 0; dt < Tile::kOutTiles; ++dt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = mt * 16 + g + 8 * r;
        *reinterpret_cast<uint32_t*>(staging + swizzled<Tile>(row, dt) + 4 * t) =
            E::pack(o[mt][dt][2 * r], o[mt][dt][2 * r + 1]);
      }
  __syncwarp();

  const int dv = static_cast<int>(p.head_dim_v);
  uint16_t* out = static_cast<uint16_t*>(const_cast<void*>(p.out.ptr));
  for (int c = lane; c < Tile::kWarpRows * Tile::kChunks; c += 32) {
    const int row = c / Tile::kChunks, chunk = c % Tile::kChunks;
    const int64_t i = warp_row0 + row;
    const int col = chunk * 8;
    if (i >= blk.row_end || col >= dv) continue;
    const uint4 v = *reinterpret_cast<const uint4*>(staging + swizzled<Tile>(row, chunk));
    uint16_t* dst = out + core::out_offset(p, blk.seq, blk.b, i, blk.h) + col;
    if (args.vector_io) {
      *reinterpret_cast<uint4*>(dst) = v;
    } else {
      const uint16_t e[8] = {uint16_t(v.x), uint16_t(v.x >> 16), uint16_t(v.y), uint16_t(v.y >> 16),
                             uint16_t(v.z), uint16_t(v.z >> 16), uint16_t(v.w), uint16_t(v.w >> 16)};
      for (int k = 0; k < 8 && col + k < dv; ++k) dst[k] = e[k];
    }
  }
}

// The fp32 tiers' rows (cuda-3xtf32-sm90, cuda-dmma-sm90), normalised, straight to global memory:
// 8-byte stores of the two columns a lane holds per n8 tile, the warp's columns from col0 (rows
// are 16-byte aligned and Dv a multiple of 4).
template <class Tile>
__device__ __forceinline__ void store_fp32_rows(const float (&o)[Tile::kOutTiles][4], const core::Problem& p,
                                                const BlockView& blk, int64_t warp_row0, int col0 = 0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float* out = static_cast<float*>(const_cast<void*>(p.out.ptr));
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = warp_row0 + g + 8 * r;
    if (i >= blk.row_end) continue;
    float* row = out + core::out_offset(p, blk.seq, blk.b, i, blk.h);
#pragma unroll
    for (int dt = 0; dt < Tile::kOutTiles; ++dt) {
      const int col = col0 + dt * 8 + 2 * t;
      if (col < p.head_dim_v) *reinterpret_cast<float2*>(row + col) = make_float2(o[dt][2 * r], o[dt][2 * r + 1]);
    }
  }
}

// The (query tile, head, sequence) this block computes: the grid's natural order, or longest
// first in L2-sized groups when args.order_groups > 0 (block_order.h).
__device__ __forceinline__ BlockWork block_work(const MmaArgs& args) { return this_block_work(args.order_groups); }

// Resolves this block's sequence, head, query rows, mask and K/V bases (linear layouts) once.
// False when the block's query tile lies past its sequence's end (nothing to compute).
// kLinearKvOnly: the caller's tier never sees paged K/V, so the layout test compiles away.
template <bool kLinearKvOnly = false>
__device__ __forceinline__ bool open_block(const MmaArgs& args, int64_t block_m, BlockView* blk) {
  const core::Problem& p = args.p;
  const BlockWork work = block_work(args);
  blk->b = work.batch;
  blk->h = work.head;
  blk->kv_head = blk->h / p.group;
  blk->seq = core::sequence(p, blk->b);
  blk->row0 = work.tile * block_m;
  if (blk->row0 >= blk->seq.sq) return false;
  blk->row_end = core::min_i64(blk->row0 + block_m, blk->seq.sq);
  blk->mask = core::sequence_mask(p, blk->seq);
  blk->linear_kv = kLinearKvOnly || p.kv_layout != core::KvLayout::kPaged;
  if (blk->linear_kv) {
    blk->k_key0 = core::key_offset(p, blk->seq, p.k, blk->b, 0) + blk->kv_head * p.k.head_stride;
    blk->v_key0 = core::key_offset(p, blk->seq, p.v, blk->b, 0) + blk->kv_head * p.v.head_stride;
  }
  return true;
}

// The key tiles of a block: whole tiles outside the mask's [tile_begin, tile_end) are never
// loaded; num_tiles tiles of kBlockN keys from first_key are. [full_begin, full_end) are the
// tiles every row of the block sees whole (none for paged K/V, whose keys may read nothing); the
// others are its boundary tiles, whose V tiles are checked for Inf/NaN (device_utils.cuh).
struct KeyTiles {
  int64_t first_key = 0;
  int num_tiles = 0;
  int full_begin = 0, full_end = 0;
  __device__ __forceinline__ bool boundary(int kt) const { return kt < full_begin || kt >= full_end; }
};

template <int kBlockN>
__device__ __forceinline__ KeyTiles key_tiles(const core::Problem& p, const BlockView& blk) {
  KeyTiles tiles;
  const int64_t key_begin = blk.mask.tile_begin(blk.row0, blk.row_end);
  const int64_t key_end = blk.mask.tile_end(blk.row0, blk.row_end);
  tiles.first_key = key_begin / kBlockN * kBlockN;
  tiles.num_tiles = key_end > key_begin ? static_cast<int>((key_end - tiles.first_key + kBlockN - 1) / kBlockN) : 0;
  const int64_t full_lo = blk.mask.row_begin(blk.row_end - 1), full_hi = blk.mask.row_end(blk.row0);
  if (full_hi > full_lo && p.kv_layout != core::KvLayout::kPaged) {
    const int64_t span = int64_t(tiles.num_tiles) * kBlockN;
    tiles.full_begin = static_cast<int>((core::clamp_i64(full_lo - tiles.first_key, 0, span) + kBlockN - 1) / kBlockN);
    tiles.full_end = static_cast<int>(core::clamp_i64(full_hi - tiles.first_key, 0, span) / kBlockN);
  }
  return tiles;
}

// The correction after the key loop when a cut tile's products skipped an Inf or NaN of V
// (add_nonfinite_values). The block's view and key tiles are resolved again from the arguments,
// so that the key loop keeps nothing alive for this path but one flag. Warp w holds rows
// w * kWarpRows.. and output columns 0..; a tile whose warps split rows and columns otherwise
// (cuda-dmma-sm90) names the warp's row strip and first column.
template <class Tile, class E, bool kLinearKvOnly>
__device__ __forceinline__ void add_skipped_values(float (&o)[Tile::kMTiles][Tile::kOutTiles][4], const MmaArgs& args,
                                                   int row_strip = -1, int col0 = 0) {
  BlockView blk;
  open_block<kLinearKvOnly>(args, Tile::kBlockM, &blk);
  const KeyTiles tiles = key_tiles<Tile::kBlockN>(args.p, blk);
  const int strip = row_strip >= 0 ? row_strip : static_cast<int>(threadIdx.x >> 5);
  add_nonfinite_values<Tile, E>(o, args.p, blk, blk.row0 + strip * Tile::kWarpRows, tiles.first_key,
                                tiles.num_tiles, tiles.full_begin, tiles.full_end, col0);
}

}  // namespace mma_detail

template <class Tile, class E>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocksPerSm) mma_forward_kernel(const MmaArgs args) {
  using namespace mma_detail;
  extern __shared__ __align__(128) unsigned char smem[];
  const core::Problem& p = args.p;

  BlockView blk;
  if (!open_block(args, Tile::kBlockM, &blk)) return;

  const KeyTiles tiles = key_tiles<Tile::kBlockN>(p, blk);
  const int64_t first_key = tiles.first_key;
  const int num_tiles = tiles.num_tiles;

  unsigned char* smem_q = smem;
  unsigned char* smem_kv = smem + Tile::kQBytes;
  unsigned char* key_valid = smem + Tile::kFlagsOffset;

  // Prologue: Q, then the first kStages - 1 key tiles, one commit group each.
  LinearKv<Tile> lin;
  if (blk.linear_kv && args.vector_io) lin.init(p, blk, first_key);
  load_q_tile<Tile>(smem_q, args, blk);
  cp_async_commit();
#pragma unroll
  for (int st = 0; st < Tile::kStages - 1; ++st) {
    if (st < num_tiles)
      load_kv_tile<Tile>(smem_kv + st * Tile::kStageBytes, key_valid + st * Tile::kBlockN, args, blk, lin,
                         first_key + int64_t(st) * Tile::kBlockN);
    cp_async_commit();
  }

  // The warp's key tiles, as tile indices: it computes tiles [kt_begin, kt_end) (its rows see no
  // key outside: causal diagonal, windows), and of those, [kt_full_begin, kt_full_end) need no
  // mask at all. Resolved once here so that the loop compares small integers only.
  const int warp = threadIdx.x >> 5;
  const int64_t warp_row0 = blk.row0 + warp * Tile::kWarpRows;
  const bool warp_active = warp_row0 < blk.row_end;
  int kt_begin = 0, kt_end = 0, kt_full_begin = 0, kt_full_end = 0;
  if (warp_active) {
    const int64_t warp_row_last = core::min_i64(warp_row0 + Tile::kWarpRows, blk.row_end) - 1;
    const int64_t span = int64_t(num_tiles) * Tile::kBlockN;
    auto local = [&](int64_t key) { return core::clamp_i64(key - first_key, 0, span); };
    kt_begin = static_cast<int>(local(blk.mask.row_begin(warp_row0)) / Tile::kBlockN);
    kt_end = static_cast<int>((local(blk.mask.row_end(warp_row_last)) + Tile::kBlockN - 1) / Tile::kBlockN);
    // A tile is unmasked when all its keys lie in every row's range: the last row's begin and the
    // first row's end bound the intersection (core::Mask::tile_unmasked).
    const int64_t full_lo = blk.mask.row_begin(warp_row_last), full_hi = blk.mask.row_end(warp_row0);
    if (full_hi > full_lo) {
      kt_full_begin = static_cast<int>((local(full_lo) + Tile::kBlockN - 1) / Tile::kBlockN);
      kt_full_end = static_cast<int>(local(full_hi) / Tile::kBlockN);
    }
  }

  cp_async_wait<Tile::kStages - 1>();  // the Q group
  __syncthreads();
  QFragments<Tile> q;
  q.init(smem_q, warp * Tile::kWarpRows);

  float o[Tile::kMTiles][Tile::kOutTiles][4];
  float row_max[Tile::kMTiles][2], row_sum[Tile::kMTiles][2];
  start_rows<Tile>(o, row_max, row_sum);

  const float unit = args.has_score_mod ? kLog2e : args.score_scale_log2;
  bool values_zeroed = false;  // some boundary tile's products skipped an Inf or NaN of V

  for (int kt = 0; kt < num_tiles; ++kt) {
    // A tile that the mask cuts for some of the warp's rows (paged K/V also masks keys that read
    // nothing, in every tile).
    const bool computed = kt >= kt_begin && kt < kt_end;
    const bool mask_boundary = kt < kt_full_begin || kt >= kt_full_end;
    cp_async_wait<Tile::kStages - 2>();  // tile kt has landed (this thread's copies) ...
    // ... everyone's; and tile kt - 1's buffer is free again. The barrier also tells every warp
    // whether some warp computes tile kt as a mask boundary tile.
    const bool boundary_tile = __syncthreads_or(computed && mask_boundary) != 0;
    const int next = kt + Tile::kStages - 1;
    if (next < num_tiles)
      load_kv_tile<Tile>(smem_kv + (next % Tile::kStages) * Tile::kStageBytes,
                         key_valid + (next % Tile::kStages) * Tile::kBlockN, args, blk, lin,
                         first_key + int64_t(next) * Tile::kBlockN);
    cp_async_commit();

    unsigned char* stage = smem_kv + (kt % Tile::kStages) * Tile::kStageBytes;
    // Only there can a value meet probability 0 in a row that masks its key (device_utils.cuh).
    // Rare path: the block zeroes the tile's Inf/NaN values before any warp's P V, and
    // add_skipped_values adds them back after the loop to the rows that allow their key.
    if (boundary_tile &&
        block_tile_has_nonfinite<E::kExponentBits, Tile::kThreads>(stage + Tile::kKvTileBytes, Tile::kKvTileBytes)) {
      block_zero_nonfinite<E::kExponentBits, Tile::kThreads>(stage + Tile::kKvTileBytes, Tile::kKvTileBytes);
      __syncthreads();
      values_zeroed = true;
    }
    if (!computed) continue;

    float s[Tile::kMTiles][Tile::kKeyTiles][4];
    compute_scores<Tile, E>(s, q, stage);
    const bool needs_mask = mask_boundary || p.kv_layout == core::KvLayout::kPaged;
    if (needs_mask || args.has_score_mod)
      mask_and_modify<Tile>(s, args, blk, warp_row0, first_key + int64_t(kt) * Tile::kBlockN, needs_mask,
                            key_valid + (kt % Tile::kStages) * Tile::kBlockN);
    softmax_step<Tile>(s, o, row_max, row_sum, unit);
    accumulate_pv<Tile, E>(o, s, stage + Tile::kKvTileBytes);
  }
  cp_async_wait<0>();

  if (warp_active) {
    if (values_zeroed) add_skipped_values<Tile, E, false>(o, args);
    __syncwarp();
    finish_and_store<Tile, E>(o, row_max, row_sum, args, blk, warp_row0, smem_q + warp * Tile::kWarpRows * Tile::kRowBytes);
  }
}

// The grid of a tensor-core forward, (query tiles of block_m rows, query heads, sequences), and
// the block order it can use: longest_first_work counts blocks in 32 bits, so beyond that the
// natural order. False when there is nothing to launch.
inline bool tensor_core_grid(int64_t block_m, dim3* grid, MmaArgs* args) {
  const core::Problem& p = args->p;
  int64_t rows = p.seqlen_q;
  if (p.q_layout == core::QLayout::kVarlen && rows <= 0) rows = p.total_q;
  const int64_t tiles = (rows + block_m - 1) / block_m;
  if (tiles == 0 || p.batch == 0 || p.heads_q == 0) return false;
  *grid = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(p.heads_q), static_cast<unsigned>(p.batch));
  if (!fits_block_order(tiles, p.heads_q, p.batch)) args->order_groups = 0;
  return true;
}

// Launches a tensor-core forward kernel (mma_forward_kernel or wgmma_forward_kernel) of one tile
// shape over the grid of tensor_core_grid().
// One instantiation per kernel, so the shared-memory limit is raised once for each.
template <class Tile, void (*kernel)(MmaArgs)>
void launch_tensor_core_kernel(const char* name, const MmaArgs& args, cudaStream_t stream) {
  static const cudaError_t configured =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  require_shared_memory(configured, Tile::kSmemBytes, name);
  dim3 grid;
  MmaArgs launch_args = args;
  if (!tensor_core_grid(Tile::kBlockM, &grid, &launch_args)) return;
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(launch_args);
  check_cuda(cudaGetLastError(), name);
}

// Launches the kernel for one tile shape and element type (E = Half or BFloat16).
template <class Tile, class E>
void launch_mma_tile(const MmaArgs& args, cudaStream_t stream) {
  launch_tensor_core_kernel<Tile, mma_forward_kernel<Tile, E>>("mma_forward_kernel", args, stream);
}

}  // namespace flashsdpa::cuda
