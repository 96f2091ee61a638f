// The Hopper fp32 forward (tier kCuda3xTf32, "cuda-3xtf32-sm90"): fp32 in, fp32 out, both GEMMs
// on wgmma.mma_async (sm_90a only) with every fp32 product taken as three TF32 products.
//
// 3xTF32. An fp32 x is split into two TF32 numbers, big = x rounded to TF32 (10 explicit mantissa
// bits) and small = x - big rounded to TF32 (|small| <= 2^-11 |x|). Then
//     x y ~= small(x) big(y) + big(x) small(y) + big(x) big(y)
// leaves out small x small (~2^-22 relative) and the rounding of small (~2^-22): each product
// carries about 21 bits, and the sums accumulate in fp32 on the tensor cores. The result passes
// SPEC §6's fp32 rule (the reference computed in fp32), which plain TF32 (~2^-11) does not; the
// tests check it on every case of the fp32 grid, extreme logits included. torch's efficient
// backend computes its fp32 attention the same way (CUTLASS's OpMultiplyAddFastF32).
//
// One thread block owns kBlockM = 128 query rows of one (sequence, query head): two warpgroups of
// 64 rows. Shared memory holds every operand as its two TF32 planes, in the 128-byte swizzle
// layout the wgmma descriptors read: Q (both planes, for the whole key loop), K(t) and V(t)
// (single buffers), and a raw fp32 staging buffer each for K and V that cp.async fills one tile
// ahead. Per key tile, as in the fp16/bf16 wgmma tier, a warpgroup runs
//     issue S(t) = Q K(t)^T                    (3 x kDimSteps SS wgmmas, both K-major)
//     issue T = P(t-1) V(t-1)                  (3 x kKeySteps RS wgmmas, P's planes in registers)
//     wait for S(t); mask + score modifiers; online softmax -> P(t), split into its two planes
//     wait for T; O = (O + T) x the rescale to the new row maxima
// then the whole block refills the planes: K(t+1) from its staging buffer, V(t) transposed (TF32
// wgmma reads only K-major B operands, so V is stored keys-contiguous), and starts the copies of
// K(t+2) and V(t+1). K runs one tile ahead of V, as there.
//
// P's accumulator layout gives a thread keys 2t and 2t + 1 of each 8-key group, where the TF32 A
// fragment wants k positions t and t + 4: V's rows are stored in that order instead (key 2i of a
// group at position i, key 2i + 1 at position 4 + i), so P never moves between lanes.
//
// Masks, modifiers, the sequence geometry, the softmax and its edge cases, sinks and LSE are the
// other tensor-core tiers' (forward_mma.cuh, forward_wgmma.cuh, core/mask.h), reused as they are:
// the wgmma accumulator of a warp is the mma.sync m16n8 layout whatever the operand type. Linear
// K/V layouts (batched, varlen, dense cache) with 16-byte aligned rows, head dims up to 128; the
// rest stays on cuda-fp32 (tiers.cpp says why).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/mask.h"
#include "core/problem.h"
#include "core/sequence.h"
#include "cuda/device_utils.cuh"
#include "cuda/forward_mma.cuh"
#include "cuda/forward_wgmma.cuh"
#include "cuda/launch.h"
#include "cuda/wgmma_ops.cuh"

namespace flashsdpa::cuda {

// Tile shape of the 3xTF32 forward for one padded head dim.
template <int kHeadDim_, int kBlockN_, int kScoreChains_>
struct Tf32x3Tile : TwoWarpgroupBlock {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kMinBlocksPerSm = 1;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kKeyTiles = kBlockN / 8;   // n8 tiles of S
  static constexpr int kOutTiles = kHeadDim / 8;  // n8 tiles of O
  static constexpr int kChunks = kHeadDim / 4;    // 16-byte chunks per fp32 row
  static constexpr int kDimSteps = kHeadDim / 8;  // k8 steps of Q K^T
  static constexpr int kKeySteps = kBlockN / 8;   // k8 steps of P V
  static constexpr int kScoreChains = kScoreChains_;  // accumulators of big x big score terms
  static_assert(kDimSteps % kScoreChains == 0, "whole chains");

  // Shared memory: Q's two planes, K's and V's two planes, K's and V's staging buffers, plus
  // slack to align the start to the 1024 bytes the swizzle atoms need. A plane is split in
  // column blocks of 32 fp32 (128 bytes) per row.
  static constexpr int kQPlaneBytes = kBlockM * kHeadDim * 4;
  static constexpr int kKvPlaneBytes = kBlockN * kHeadDim * 4;
  static constexpr int kSmemBytes = 1024 + 2 * kQPlaneBytes + 6 * kKvPlaneBytes;

  static_assert(kHeadDim % 32 == 0 && kBlockN % 32 == 0, "whole 128-byte column blocks");
  static_assert((kBlockN / 4) * (kHeadDim / 4) == kThreads, "one 4 x 4 block of V per thread and tile");
  static_assert(kThreads % kChunks == 0 && kBlockN % (kThreads / kChunks) == 0, "whole rows per copy pass");
};

namespace tf32x3_detail {

using mma_detail::BlockView;
using wgmma_detail::swizzled128;
using wgmma_detail::group_full_tiles;

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// x -> (big, small), both TF32 bit patterns. Edge cases, so that the three products of an Inf
// or NaN operand give what the fp32 product gives:
// - a small part of zero (x exactly TF32, or 0) and the NaN of Inf - Inf become the smallest
//   normal number with x's sign, so small(x) x big(y) never forms 0 x Inf when y is infinite
//   (2^-126 |y| lies far below every other term's rounding for finite y);
// - x within 2^-13 of FLT_MAX would round to Inf: its truncation is used (the remainder is exact).
__device__ __forceinline__ void split(float x, uint32_t& big, uint32_t& small) {
  float hi = __uint_as_float(to_tf32(x));
  if (isinf(hi) && !isinf(x)) hi = __uint_as_float(__float_as_uint(x) & 0xffffe000u);
  float lo = __uint_as_float(to_tf32(x - hi));
  if (!(lo != 0.0f)) lo = copysignf(1.17549435e-38f, x);
  big = __float_as_uint(hi);
  small = __float_as_uint(lo);
}

__device__ __forceinline__ void split4(const float4& v, uint4& big, uint4& small) {
  split(v.x, big.x, small.x);
  split(v.y, big.y, small.y);
  split(v.z, big.z, small.z);
  split(v.w, big.w, small.w);
}

// Byte offset of (key row, 16-byte chunk) in a raw staging buffer: rows as in global memory,
// chunk c of row r stored at c ^ f(r), f(r) = (r & 1) | ((r >> 3) & 3) << 1. The reads of
// split_keys (eight chunks of one row) and of split_values (one chunk of rows 8G + parity + 2i for
// the eight (G, parity) pairs) then each fall in eight different 16-byte bank groups.
template <class Tile>
__device__ __forceinline__ uint32_t staged(int row, int chunk) {
  const int f = (row & 1) | (((row >> 3) & 3) << 1);
  return static_cast<uint32_t>(row * (Tile::kHeadDim * 4) + ((chunk ^ f) << 4));
}

// A plane of raw fp32 -> its big plane (in place) and its small plane (same layout).
template <class Tile>
__device__ __forceinline__ void split_in_place(unsigned char* big, unsigned char* small, int bytes) {
  for (int c = threadIdx.x; c < bytes / 16; c += Tile::kThreads) {
    uint4 hi, lo;
    split4(*reinterpret_cast<const float4*>(big + 16 * c), hi, lo);
    *reinterpret_cast<uint4*>(big + 16 * c) = hi;
    *reinterpret_cast<uint4*>(small + 16 * c) = lo;
  }
}

// K or V streamed into a raw staging buffer tile by tile, from a layout linear in the key index
// (key j at key0 + j * row stride). This thread always copies chunk `chunk` of rows row0 + r *
// kRowStep; rows past the sequence's end (last tile only) and columns past the head dim read
// nothing and are zero-filled, so no product meets stale values.
template <class Tile>
struct RawKvStream {
  static constexpr int kRowStep = Tile::kThreads / Tile::kChunks;
  static constexpr int kRowsPerThread = Tile::kBlockN / kRowStep;

  const unsigned char* src;  // this thread's chunk of its first row in the next tile
  const void* base;          // a valid address for the zero-byte copies
  int64_t row_step_bytes;
  int64_t tile_bytes;
  int row0, chunk;
  bool live;  // the chunk holds real columns

  __device__ __forceinline__ void init(const core::Operand& op, int64_t key0, int64_t first_key, int64_t dim) {
    row0 = threadIdx.x / Tile::kChunks;
    chunk = threadIdx.x % Tile::kChunks;
    base = op.ptr;
    src = reinterpret_cast<const unsigned char*>(static_cast<const float*>(op.ptr) + key0 +
                                                 (first_key + row0) * op.row_stride + chunk * 4);
    row_step_bytes = op.row_stride * 4 * kRowStep;
    tile_bytes = op.row_stride * 4 * Tile::kBlockN;
    live = chunk * 4 < dim;
  }

  // Copies the next tile into `stage`; `keys_left` keys of the sequence remain from its first key.
  __device__ __forceinline__ void copy_next(unsigned char* stage, int64_t keys_left) {
    const uint32_t dst = smem_address(stage);
    const bool full = live && keys_left >= Tile::kBlockN;
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) {
      const int row = row0 + r * kRowStep;
      const bool row_live = full || (live && row < keys_left);
      cp_async_16(dst + staged<Tile>(row, chunk), row_live ? src + r * row_step_bytes : base, row_live ? 16 : 0);
    }
    src += tile_bytes;
  }
};

// K(t) from its staging buffer into its two planes (rows = keys, K-major for S = Q K^T).
template <class Tile>
__device__ __forceinline__ void split_keys(unsigned char* k_big, unsigned char* k_small, const unsigned char* stage) {
  constexpr int kRowStep = Tile::kThreads / Tile::kChunks;
  const int chunk = threadIdx.x % Tile::kChunks;
#pragma unroll
  for (int r = 0; r < Tile::kBlockN / kRowStep; ++r) {
    const int row = threadIdx.x / Tile::kChunks + r * kRowStep;
    uint4 hi, lo;
    split4(*reinterpret_cast<const float4*>(stage + staged<Tile>(row, chunk)), hi, lo);
    const uint32_t offset = swizzled128<Tile::kBlockN>(row, chunk);
    *reinterpret_cast<uint4*>(k_big + offset) = hi;
    *reinterpret_cast<uint4*>(k_small + offset) = lo;
  }
}

// V(t) from its staging buffer into its two planes, transposed: plane row d holds the tile's keys
// in P's fragment order (positions 4 pc .. 4 pc + 3 are keys 8 (pc / 2) + (pc % 2) + 2i). Each
// thread moves one 4-key x 4-dim block: four 16-byte reads (one per key), four 16-byte writes
// per plane (one per dim). Eight neighbouring lanes take the eight position chunks of one
// column block, so their writes (and, through staged(), their reads) hit distinct bank groups.
template <class Tile>
__device__ __forceinline__ void split_values(unsigned char* v_big, unsigned char* v_small, const unsigned char* stage) {
  constexpr int kDimChunks = Tile::kHeadDim / 4;
  const int pc = (threadIdx.x & 7) + 8 * ((threadIdx.x >> 3) / kDimChunks);
  const int dc = (threadIdx.x >> 3) % kDimChunks;
  const int key0 = 8 * (pc >> 1) + (pc & 1);
  float4 rows[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) rows[i] = *reinterpret_cast<const float4*>(stage + staged<Tile>(key0 + 2 * i, dc));
  auto column = [&](int e) {
    return e == 0   ? make_float4(rows[0].x, rows[1].x, rows[2].x, rows[3].x)
           : e == 1 ? make_float4(rows[0].y, rows[1].y, rows[2].y, rows[3].y)
           : e == 2 ? make_float4(rows[0].z, rows[1].z, rows[2].z, rows[3].z)
                    : make_float4(rows[0].w, rows[1].w, rows[2].w, rows[3].w);
  };
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int d = 4 * dc + e;
    uint4 hi, lo;
    split4(column(e), hi, lo);
    const uint32_t offset =
        static_cast<uint32_t>((pc >> 3) * (Tile::kHeadDim * 128) + d * 128 + (((pc & 7) ^ (d & 7)) << 4));
    *reinterpret_cast<uint4*>(v_big + offset) = hi;
    *reinterpret_cast<uint4*>(v_small + offset) = lo;
  }
}

// The descriptors of one operand's two planes.
struct Planes {
  uint64_t big, small;
  __device__ __forceinline__ Planes at(uint32_t bytes) const {
    return {wgmma::advance(big, bytes), wgmma::advance(small, bytes)};
  }
  // A copy the compiler cannot see through: the per-step descriptors are then formed next to
  // their wgmma (one add each) instead of being hoisted out of the key loop, where the 100-odd
  // of them took registers the accumulators need (ptxas: 250 bytes of spills).
  __device__ __forceinline__ Planes opaque() const {
    Planes p = *this;
    asm volatile("" : "+l"(p.big), "+l"(p.small));
    return p;
  }
};

__device__ __forceinline__ Planes planes(const unsigned char* big, const unsigned char* small, uint32_t offset) {
  return {wgmma::descriptor(smem_address(big) + offset, 16, 1024), wgmma::descriptor(smem_address(small) + offset, 16, 1024)};
}

// The tensor cores round each accumulation toward zero, relative to the accumulator's magnitude
// (measured: with every product of a 128-dim score in one accumulator, 48 wgmmas, scores came out
// ~15 fp32 ulps low, twice the SPEC bound at |s| ~ 1e4). So the scores keep their terms apart: the
// small products (2^-11 of the score) in one accumulator, where the rounding is 2^-11 smaller, and
// big x big in kScoreChains accumulators of kDimSteps / kScoreChains steps each, added in fp32
// registers (round to nearest) once the wgmmas are done.
template <class Tile>
struct ScoreAccumulators {
  float big[Tile::kScoreChains][1][Tile::kKeyTiles][4];  // [1]: the per-warp view of one m16 tile
  float small[Tile::kKeyTiles][4];

  __device__ __forceinline__ void pin() {
#pragma unroll
    for (int c = 0; c < Tile::kScoreChains; ++c) wgmma::pin(big[c][0]);
    wgmma::pin(small);
  }
  // The scores, into big[0].
  __device__ __forceinline__ float (&sum())[1][Tile::kKeyTiles][4] {
#pragma unroll
    for (int nt = 0; nt < Tile::kKeyTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = big[0][0][nt][e];
#pragma unroll
        for (int c = 1; c < Tile::kScoreChains; ++c) x += big[c][0][nt][e];
        big[0][0][nt][e] = x + small[nt][e];
      }
    return big[0];
  }
};

// S = Q K^T for the warpgroup's 64 rows: per k8 step small x big and big x small into the small
// accumulator, big x big into its chain's, each an m64 x kBlockN x k8 wgmma. A k8 step moves 32
// bytes inside a 128-byte row, a fourth step on to the next column block.
template <class Tile>
__device__ __forceinline__ void issue_scores(ScoreAccumulators<Tile>& s, const Planes& q_planes, const Planes& k_planes) {
  constexpr int kChainSteps = Tile::kDimSteps / Tile::kScoreChains;
  const Planes q = q_planes.opaque(), k = k_planes.opaque();
#pragma unroll
  for (int step = 0; step < Tile::kDimSteps; ++step) {
    const uint32_t in_block = (step % 4) * 32;
    const Planes qs = q.at((step / 4) * Tile::kBlockM * 128 + in_block);
    const Planes ks = k.at((step / 4) * Tile::kBlockN * 128 + in_block);
    wgmma::wgmma_ss<Tile::kBlockN, Float32>(s.small, qs.small, ks.big, step > 0);
    wgmma::wgmma_ss<Tile::kBlockN, Float32>(s.small, qs.big, ks.small, 1);
    wgmma::wgmma_ss<Tile::kBlockN, Float32>(s.big[step / kChainSteps][0], qs.big, ks.big, step % kChainSteps != 0);
  }
}

// T = P V of one key tile: per k8 step of keys small x big, big x small, big x big, each an m64 x
// kHeadDim x k8 wgmma with P's planes from registers and V's (transposed, K-major) from shared
// memory. T starts from zero every tile and is added to O in fp32 registers (merge_values), for
// the rounding above: O's own accumulator would take three roundings per 8 keys of the row.
template <class Tile>
__device__ __forceinline__ void issue_values(float (&t)[Tile::kOutTiles][4], const uint32_t (&p_big)[Tile::kKeySteps][4],
                                             const uint32_t (&p_small)[Tile::kKeySteps][4], const Planes& v_planes) {
  const Planes v = v_planes.opaque();
#pragma unroll
  for (int step = 0; step < Tile::kKeySteps; ++step) {
    const Planes vs = v.at((step / 4) * Tile::kHeadDim * 128 + (step % 4) * 32);
    wgmma::wgmma_rs_kmajor<Tile::kHeadDim, Float32>(t, p_big[step], vs.big, step > 0);
    wgmma::wgmma_rs_kmajor<Tile::kHeadDim, Float32>(t, p_small[step], vs.big, 1);
    wgmma::wgmma_rs_kmajor<Tile::kHeadDim, Float32>(t, p_big[step], vs.small, 1);
  }
}

// O = (O + T) x factor: the tile's values joined to the output, then the rescale to the new row
// maxima (skipped, as in the other tiers, when no row of the warp needs it).
template <class Tile>
__device__ __forceinline__ void merge_values(float (&o)[Tile::kOutTiles][4], const float (&t)[Tile::kOutTiles][4],
                                             const float (&factor)[2]) {
  const bool rescale = __any_sync(0xffffffffu, factor[0] != 1.0f || factor[1] != 1.0f);
#pragma unroll
  for (int dt = 0; dt < Tile::kOutTiles; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      o[dt][e] += t[dt][e];
      if (rescale) o[dt][e] *= factor[e >> 1];
    }
}

// P's accumulator registers as TF32 A fragments (k positions t, t + 4 = keys 2t, 2t + 1 of the
// group; split_values stores V's rows in that order), split into their two planes.
template <class Tile>
__device__ __forceinline__ void split_probabilities(uint32_t (&p_big)[Tile::kKeySteps][4],
                                                    uint32_t (&p_small)[Tile::kKeySteps][4],
                                                    const float (&s)[Tile::kKeyTiles][4]) {
#pragma unroll
  for (int k = 0; k < Tile::kKeySteps; ++k) {
    split(s[k][0], p_big[k][0], p_small[k][0]);
    split(s[k][2], p_big[k][1], p_small[k][1]);
    split(s[k][1], p_big[k][2], p_small[k][2]);
    split(s[k][3], p_big[k][3], p_small[k][3]);
  }
}

}  // namespace tf32x3_detail

template <class Tile>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocksPerSm) tf32x3_forward_kernel(const MmaArgs args) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace tf32x3_detail;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024u - (smem_address(smem_raw) & 1023u)) & 1023u);
  const core::Problem& p = args.p;

  BlockView blk;  // tf32x3_tier_supports() leaves paged K/V to cuda-fp32
  if (!mma_detail::open_block<true>(args, Tile::kBlockM, &blk)) return;

  const mma_detail::KeyTiles tiles = mma_detail::key_tiles<Tile::kBlockN>(p, blk);
  const int64_t first_key = tiles.first_key;
  const int num_tiles = tiles.num_tiles;
  const int64_t k_end = blk.seq.k_end;
  auto keys_left = [&](int kt) { return k_end - (first_key + int64_t(kt) * Tile::kBlockN); };

  unsigned char* q_big = smem;
  unsigned char* q_small = q_big + Tile::kQPlaneBytes;
  unsigned char* k_big = q_small + Tile::kQPlaneBytes;
  unsigned char* k_small = k_big + Tile::kKvPlaneBytes;
  unsigned char* v_big = k_small + Tile::kKvPlaneBytes;
  unsigned char* v_small = v_big + Tile::kKvPlaneBytes;
  unsigned char* k_stage = v_small + Tile::kKvPlaneBytes;
  unsigned char* v_stage = k_stage + Tile::kKvPlaneBytes;
  const int group = threadIdx.x / 128, warp = threadIdx.x / 32;
  const int64_t warp_row0 = blk.row0 + warp * Tile::kWarpRows;

  float o[1][Tile::kOutTiles][4];
  float row_max[1][2], row_sum[1][2];
  mma_detail::start_rows<Tile>(o, row_max, row_sum);
  if (num_tiles == 0) {  // no key in reach: out = 0, lse = -inf (or the sink)
    mma_detail::normalize_rows<Tile>(o, row_max, row_sum, args, blk, warp_row0);
    mma_detail::store_fp32_rows<Tile>(o[0], p, blk, warp_row0);
    return;
  }

  // The tiles that need no mask for any row of the warpgroup (as in the fp16/bf16 wgmma tier:
  // every warpgroup runs every tile of the block, rows a tile does not reach are masked).
  int kt_full_begin, kt_full_end;
  group_full_tiles<Tile>(blk, blk.row0 + group * Tile::kGroupRows, first_key, num_tiles, &kt_full_begin, &kt_full_end);

  // Prologue: Q and K(0) raw, split into their planes; then the copies of K(1) and V(0).
  RawKvStream<Tile> k_stream, v_stream;
  k_stream.init(p.k, blk.k_key0, first_key, p.head_dim_qk);
  v_stream.init(p.v, blk.v_key0, first_key, p.head_dim_v);
  wgmma_detail::load_q<Tile, uint32_t>(q_big, p, blk);  // raw fp32, split in place below
  k_stream.copy_next(k_stage, keys_left(0));
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  split_in_place<Tile>(q_big, q_small, Tile::kQPlaneBytes);
  split_keys<Tile>(k_big, k_small, k_stage);
  wgmma::fence_shared_for_async_proxy();
  __syncthreads();
  if (num_tiles > 1) k_stream.copy_next(k_stage, keys_left(1));
  v_stream.copy_next(v_stage, keys_left(0));
  cp_async_commit();

  const Planes q_planes = planes(q_big, q_small, group * Tile::kGroupRows * 128);
  const Planes k_planes = planes(k_big, k_small, 0);
  const Planes v_planes = planes(v_big, v_small, 0);
  const float unit = args.has_score_mod ? kLog2e : args.score_scale_log2;

  ScoreAccumulators<Tile> scores;
  float t[Tile::kOutTiles][4];  // P V of one tile (issue_values says why apart from O)
  uint32_t p_big[Tile::kKeySteps][4], p_small[Tile::kKeySteps][4];
  float factor[2];

  // After step kt's GEMMs of every warpgroup: K(kt + 1) and V(kt) into their planes, then the
  // copies of K(kt + 2) and V(kt + 1). In a tile the mask cuts (the barrier's vote) whose V holds
  // an Inf or NaN (rare), those elements are zeroed in the staging buffer before the split, and
  // mma_detail::add_skipped_values adds them after the key loop to the rows that allow their key.
  bool values_zeroed = false;
  auto refill_planes = [&](int kt) {
    cp_async_wait<0>();
    const bool cut = warp_row0 < blk.row_end && (kt < kt_full_begin || kt >= kt_full_end);
    const bool boundary = __syncthreads_or(cut) != 0;
    if (kt + 1 < num_tiles) split_keys<Tile>(k_big, k_small, k_stage);
    if (boundary && block_tile_has_nonfinite<kFloatExponentBits, Tile::kThreads>(v_stage, Tile::kKvPlaneBytes)) {
      block_zero_nonfinite<kFloatExponentBits, Tile::kThreads>(v_stage, Tile::kKvPlaneBytes);
      __syncthreads();
      values_zeroed = true;
    }
    split_values<Tile>(v_big, v_small, v_stage);
    wgmma::fence_shared_for_async_proxy();
    __syncthreads();
    if (kt + 2 < num_tiles) k_stream.copy_next(k_stage, keys_left(kt + 2));
    if (kt + 1 < num_tiles) v_stream.copy_next(v_stage, keys_left(kt + 1));
    cp_async_commit();
  };
  // Scores of tile kt (already waited for) -> probabilities (in scores.big[0]), with the mask on
  // boundary tiles.
  auto softmax_tile = [&](int kt) {
    float(&s)[1][Tile::kKeyTiles][4] = scores.sum();
    const bool needs_mask = kt < kt_full_begin || kt >= kt_full_end;
    if (needs_mask || args.has_score_mod)
      mma_detail::mask_and_modify<Tile, true>(s, args, blk, warp_row0, first_key + int64_t(kt) * Tile::kBlockN,
                                              needs_mask, nullptr);
    wgmma_detail::softmax_scores<Tile>(s[0], row_max[0], row_sum[0], factor, unit);
  };

  // Step 0: S(0) only.
  wgmma::fence();
  issue_scores<Tile>(scores, q_planes, k_planes);
  wgmma::commit();
  wgmma::wait<0>();
  scores.pin();
  softmax_tile(0);
  split_probabilities<Tile>(p_big, p_small, scores.big[0][0]);
  refill_planes(0);

  // Steps 1 .. num_tiles - 1: S(kt) and P(kt-1) V(kt-1) in flight together.
  for (int kt = 1; kt < num_tiles; ++kt) {
    wgmma::pin(t);
    wgmma::fence();
    issue_scores<Tile>(scores, q_planes, k_planes);
    wgmma::commit();
    issue_values<Tile>(t, p_big, p_small, v_planes);
    wgmma::commit();
    wgmma::wait<1>();  // S(kt)
    scores.pin();
    softmax_tile(kt);
    wgmma::wait<0>();  // P(kt-1) V(kt-1): T and the registers of P(kt-1) are free
    wgmma::pin(t);
    merge_values<Tile>(o[0], t, factor);
    split_probabilities<Tile>(p_big, p_small, scores.big[0][0]);
    refill_planes(kt);
  }

  // Last step: P V of the last tile.
  wgmma::pin(t);
  wgmma::fence();
  issue_values<Tile>(t, p_big, p_small, v_planes);
  wgmma::commit();
  wgmma::wait<0>();
  wgmma::pin(t);
  const float keep[2] = {1.0f, 1.0f};
  merge_values<Tile>(o[0], t, keep);

  if (values_zeroed) mma_detail::add_skipped_values<Tile, Float32, true>(o, args);
  mma_detail::normalize_rows<Tile>(o, row_max, row_sum, args, blk, warp_row0);
  mma_detail::store_fp32_rows<Tile>(o[0], p, blk, warp_row0);
#else
  // Built only for sm_90a; the selector never launches it elsewhere (wgmma_kernels_loaded()).
  __trap();
#endif
}

// Launches the kernel for one tile shape.
template <class Tile>
void launch_tf32x3_tile(const MmaArgs& args, cudaStream_t stream) {
  launch_tensor_core_kernel<Tile, tf32x3_forward_kernel<Tile>>("tf32x3_forward_kernel", args, stream);
}

}  // namespace flashsdpa::cuda
