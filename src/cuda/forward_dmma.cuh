// The Hopper fp32 forward on FP64 tensor cores (tier kCudaDmma, "cuda-dmma-sm90"): fp32 in, fp32
// out, both products on mma.sync m16n8k16 .f64 (sm_90) with every fp32 operand widened to fp64.
//
// Why fp64 products for an fp32 attention. On the H100 the FP64 tensor cores and the FP32 FFMA
// pipe peak at the same 128 multiply-adds per clock and SM (bench/gpu/mma_f64_probe.cu: 66 and
// 65 TFLOP/s), but one m16n8k16 instruction does the work of 64 FFMAs and leaves the issue slots
// to the loads, the conversions and the softmax, where the FFMA tile (cuda-fp32) spends 30% of
// its cycles. And the arithmetic is better than fp32's: an fp32 x fp32 product is exact in fp64,
// and the sums of a score (256 terms) and of a tile's P V (64 terms) run in fp64, rounded to fp32
// once. So the tier passes SPEC §6's fp32 rule by a wide margin and serves exact_fp32 calls.
//
// One thread block owns kBlockM = 64 query rows of one (sequence, query head); 8 warps. Warp w
// holds row strip w / 2 (16 rows, the MMA's M) and half w % 2 of two things: the keys of S (32 of
// a 64-key tile) and the output columns of O (128 of 256). Per key tile:
//     [barrier] V(t) copy issued                 K(t) has landed; P and V are free
//     S = Q K^T for (strip, key half)            16 k16 steps x 4 MMAs, A from Q, B from K
//     mask, modifiers; row maxima of the half -> shared memory
//     [barrier] K(t + 1) copy issued             both halves' maxima visible; K is free
//     online softmax with the row's max over the whole tile; P -> shared memory
//     [barrier]                                  P and V(t) visible
//     O = O x factor + P V for (strip, column half)   4 k16 steps x 16 MMAs, A from P, B from V
// Operands stay fp32 in shared memory (fp64 copies would not fit: Q alone is 128 KB) and are
// widened as each fragment is loaded. The k index of an MMA may be any permutation of the summed
// dimension as long as A and B agree: S maps its k position t + 4m to head dim 4t + m, so each
// lane's A and B elements are 4 consecutive floats (one 16-byte load); P is stored with the same
// permutation of each 16-key group's columns, while V is read at its natural key order (four
// 4-byte loads per B fragment, from four rows).
//
// Masks, modifiers, the sequence geometry, the softmax and its edge cases, sinks and LSE are the
// other tensor-core tiers' (forward_mma.cuh, forward_wgmma.cuh, core/mask.h): the MMA accumulator
// of a warp is the m16n8 layout they all use. Linear K/V layouts (batched, varlen, dense cache)
// with 16-byte aligned rows, head dims above 128 up to 256; the rest stays on cuda-3xtf32-sm90 or
// cuda-fp32 (tiers.cpp says why).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/mask.h"
#include "core/problem.h"
#include "core/sequence.h"
#include "cuda/device_utils.cuh"
#include "cuda/forward_fp32.cuh"
#include "cuda/forward_mma.cuh"
#include "cuda/forward_wgmma.cuh"
#include "cuda/launch.h"
#include "cuda/mma_f64.cuh"

namespace flashsdpa::cuda {

template <int kHeadDim_>
struct DmmaTile {
  static constexpr int kHeadDim = kHeadDim_;  // Dqk and Dv padded to this
  static constexpr int kThreads = 256;
  static constexpr int kMinBlocksPerSm = 1;
  static constexpr int kBlockM = 64;  // 4 row strips of 16
  static constexpr int kBlockN = 64;  // keys per tile, 2 halves of 32
  static constexpr int kHalfKeys = kBlockN / 2;
  static constexpr int kHalfCols = kHeadDim / 2;
  static constexpr int kDimSteps = kHeadDim / 16;  // k16 steps of S
  static constexpr int kKeySteps = kBlockN / 16;   // k16 steps of P V
  // The per-warp view forward_mma.cuh's helpers take: one m16 tile, the warp's output columns.
  static constexpr int kMTiles = 1;
  static constexpr int kWarpRows = 16;
  static constexpr int kOutTiles = kHalfCols / 8;
  // P V's 16 n8 tiles in two passes of 8: the fp64 accumulators of a pass (64 registers) beside
  // O's 64 fp32 ones; one pass of 16 spills. The key steps of a pass unrolled by 2: all 4 made
  // ptxas hoist every step's V loads (255 registers, spills), 1 ran ~1% slower (H100, hd 256).
  static constexpr int kOutTilesPerPass = 8;
  static constexpr int kValueStepUnroll = 2;
  // Pitches in floats. Q and K rows are read as 16-byte chunks, lane (g, t) at row g, chunk t: a
  // pitch of 4 mod 8 chunks puts rows g and g + 1 in the two halves of the banks. V is read as
  // 4-byte words, lane (g, t) at key t, column g: a pitch of 8 mod 32 words spreads the four keys.
  // P like Q (its A fragments are 16-byte chunks of rows g and g + 8).
  static constexpr int kQPitch = kHeadDim + 16;
  static constexpr int kKPitch = kHeadDim + 16;
  static constexpr int kVPitch = kHeadDim + 8;
  static constexpr int kPPitch = kBlockN + 16;
  static constexpr int kQFloats = kBlockM * kQPitch;
  static constexpr int kKFloats = kBlockN * kKPitch;
  static constexpr int kVFloats = kBlockN * kVPitch;
  static constexpr int kPFloats = kBlockM * kPPitch;
  static constexpr int kMaxFloats = 2 * kBlockM;  // each key half's row maxima
  static constexpr int kSmemBytes = (kQFloats + kKFloats + kVFloats + kPFloats + kMaxFloats) * 4;

  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "whole k16 steps and n8 tiles per column half");
  static_assert(kOutTiles % kOutTilesPerPass == 0, "whole passes");
};

// The view mask_and_modify and the softmax take of a warp's scores: 32 keys, 4 n8 tiles.
template <class Tile>
struct DmmaKeyHalf {
  static constexpr int kMTiles = 1;
  static constexpr int kBlockN = Tile::kHalfKeys;
  static constexpr int kKeyTiles = Tile::kHalfKeys / 8;
};

namespace dmma_detail {

// An A fragment from two fp32 rows (g and g + 8) whose lane holds 4 consecutive floats each: k
// position t + 4m is element m of the lane's chunk.
__device__ __forceinline__ void a_fragment(double (&a)[8], const float* row_g, const float* row_g8) {
  const float4 lo = *reinterpret_cast<const float4*>(row_g);
  const float4 hi = *reinterpret_cast<const float4*>(row_g8);
  a[0] = lo.x, a[1] = hi.x, a[2] = lo.y, a[3] = hi.y;
  a[4] = lo.z, a[5] = hi.z, a[6] = lo.w, a[7] = hi.w;
}

// S = Q K^T for the warp's 16 rows and 32 keys: acc[nt] is keys 8 nt .. 8 nt + 7 of the half.
// q: row g of the strip; k: key g of the half; both at the lane's chunk t.
template <class Tile>
__device__ __forceinline__ void compute_scores(double (&acc)[4][4], const float* q, const float* k) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0;
  // Fully unrolled: the loads and widening of later steps overlap earlier MMAs. S 1k / 4k non-causal
  // at hd 256 (H100): 42.8 / 43.6 TFLOP/s unrolled by 2, 43.9 / 44.7 by 4, 44.8 / 46.0 whole.
#pragma unroll
  for (int step = 0; step < Tile::kDimSteps; ++step, q += 16, k += 16) {
    double a[8];
    a_fragment(a, q, q + 8 * Tile::kQPitch);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const float4 kv = *reinterpret_cast<const float4*>(k + nt * 8 * Tile::kKPitch);
      const double b[4] = {kv.x, kv.y, kv.z, kv.w};
      mma_f64_m16n8k16(acc[nt], a, b);
    }
  }
}

// The warp's probabilities into P (rows of the strip, keys of the half), each 16-key group's
// columns permuted so that k position t + 4m of a P V step sits at 4t + m.
template <class Tile>
__device__ __forceinline__ void store_probabilities(float* p_strip, const float (&s)[4][4], int half) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = half * Tile::kHalfKeys + nt * 8 + 2 * t + (e & 1);
      const int in_group = key & 15;
      const int column = (key & ~15) + 4 * (in_group & 3) + (in_group >> 2);
      p_strip[(g + 8 * (e >> 1)) * Tile::kPPitch + column] = s[nt][e];
    }
}

// O = O x factor + P V for the warp's 16 rows and 128 columns, over the tile's 64 keys. Each pass
// of 8 n8 tiles sums its 64 keys in fp64 and adds the result to O, rounded once.
// p: row g of the strip at the lane's chunk t; v: key t, column g of the warp's column half.
template <class Tile>
__device__ __forceinline__ void accumulate_values(float (&o)[Tile::kOutTiles][4], const float (&factor)[2],
                                                  const float* p, const float* v) {
  const bool rescale = __any_sync(0xffffffffu, factor[0] != 1.0f || factor[1] != 1.0f);
#pragma unroll
  for (int pass = 0; pass < Tile::kOutTiles / Tile::kOutTilesPerPass; ++pass) {
    double acc[Tile::kOutTilesPerPass][4];
#pragma unroll
    for (int nt = 0; nt < Tile::kOutTilesPerPass; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0;
#pragma unroll Tile::kValueStepUnroll
    for (int step = 0; step < Tile::kKeySteps; ++step) {
      double a[8];
      a_fragment(a, p + 16 * step, p + 16 * step + 8 * Tile::kPPitch);
      const float* v_step = v + (16 * step) * Tile::kVPitch + pass * Tile::kOutTilesPerPass * 8;
#pragma unroll
      for (int nt = 0; nt < Tile::kOutTilesPerPass; ++nt) {
        const float* col = v_step + nt * 8;
        const double b[4] = {col[0], col[4 * Tile::kVPitch], col[8 * Tile::kVPitch], col[12 * Tile::kVPitch]};
        mma_f64_m16n8k16(acc[nt], a, b);
      }
    }
#pragma unroll
    for (int nt = 0; nt < Tile::kOutTilesPerPass; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float& out = o[pass * Tile::kOutTilesPerPass + nt][e];
        out = (rescale ? out * factor[e >> 1] : out) + static_cast<float>(acc[nt][e]);
      }
  }
}

}  // namespace dmma_detail

template <class Tile>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocksPerSm) dmma_forward_kernel(const MmaArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace dmma_detail;
  using KeyHalf = DmmaKeyHalf<Tile>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  float* qs = reinterpret_cast<float*>(smem_raw);
  float* ks = qs + Tile::kQFloats;
  float* vs = ks + Tile::kKFloats;
  float* ps = vs + Tile::kVFloats;
  float* half_max = ps + Tile::kPFloats;  // [key half][row of the block]
  const core::Problem& p = args.p;

  mma_detail::BlockView blk;  // dmma_tier_supports() leaves paged K/V to cuda-fp32
  if (!mma_detail::open_block<true>(args, Tile::kBlockM, &blk)) return;
  const mma_detail::KeyTiles tiles = mma_detail::key_tiles<Tile::kBlockN>(p, blk);
  const int num_tiles = tiles.num_tiles;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int strip = warp >> 1, half = warp & 1;
  const int64_t warp_row0 = blk.row0 + strip * 16;
  const int col0 = half * Tile::kHalfCols;

  float o[1][Tile::kOutTiles][4];
  float row_max[1][2], row_sum[1][2];
  mma_detail::start_rows<Tile>(o, row_max, row_sum);
  if (num_tiles == 0) {  // no key in reach: out = 0, lse = -inf (or the sink)
    mma_detail::normalize_rows<Tile>(o, row_max, row_sum, args, blk, warp_row0);
    mma_detail::store_fp32_rows<Tile>(o[0], p, blk, warp_row0, col0);
    return;
  }

  // V's pad columns are scanned with the tile for non-finite values (never read otherwise).
  for (int i = threadIdx.x; i < Tile::kBlockN * (Tile::kVPitch - Tile::kHeadDim); i += Tile::kThreads) {
    const int pad = Tile::kVPitch - Tile::kHeadDim;
    vs[(i / pad) * Tile::kVPitch + Tile::kHeadDim + i % pad] = 0.0f;
  }

  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);
  const int64_t first_key = tiles.first_key;
  fp32_detail::LinearTileCopy<Tile, Tile::kBlockM, Tile::kQPitch> q_copy(
      static_cast<const float*>(p.q.ptr), core::q_offset(p, blk.seq, blk.b, blk.row0, blk.h), 0, p.q.row_stride, dqk,
      qs);
  fp32_detail::LinearTileCopy<Tile, Tile::kBlockN, Tile::kKPitch> k_copy(static_cast<const float*>(p.k.ptr),
                                                                         blk.k_key0, first_key, p.k.row_stride, dqk, ks);
  fp32_detail::LinearTileCopy<Tile, Tile::kBlockN, Tile::kVPitch> v_copy(static_cast<const float*>(p.v.ptr),
                                                                         blk.v_key0, first_key, p.v.row_stride, dv, vs);
  q_copy.copy(0, 0, blk.row_end - blk.row0);
  k_copy.copy(first_key, blk.seq.k_begin, blk.seq.k_end);
  cp_async_commit();

  const float unit = args.has_score_mod ? kLog2e : args.score_scale_log2;
  const float* q_lane = qs + (strip * 16 + g) * Tile::kQPitch + 4 * t;
  const float* k_lane = ks + (half * Tile::kHalfKeys + g) * Tile::kKPitch + 4 * t;
  const float* p_lane = ps + (strip * 16 + g) * Tile::kPPitch + 4 * t;
  const float* v_lane = vs + t * Tile::kVPitch + col0 + g;
  float* p_strip = ps + strip * 16 * Tile::kPPitch;
  bool values_zeroed = false;

  for (int kt = 0; kt < num_tiles; ++kt) {
    const int64_t n0 = first_key + int64_t(kt) * Tile::kBlockN;
    cp_async_wait<0>();  // K(kt) (and Q) landed: this thread's copies ...
    __syncthreads();     // ... and everyone's; the last tile's P V is done, so V and P are free
    v_copy.copy(n0, blk.seq.k_begin, blk.seq.k_end);
    cp_async_commit();

    // ---- S = Q K^T for (strip, key half) -> fp32 scores, mask and modifiers ---------------------
    double acc[4][4];
    compute_scores<Tile>(acc, q_lane, k_lane);
    float s[1][KeyHalf::kKeyTiles][4];
#pragma unroll
    for (int nt = 0; nt < KeyHalf::kKeyTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[0][nt][e] = static_cast<float>(acc[nt][e]);
    const bool boundary = tiles.boundary(kt);
    if (boundary || args.has_score_mod)
      mma_detail::mask_and_modify<KeyHalf, true>(s, args, blk, warp_row0, n0 + half * Tile::kHalfKeys, boundary,
                                                 nullptr);

    // ---- the row maxima of the whole tile: this half's, then the other's ------------------------
    float tile_max[2];
    wgmma_detail::tile_row_max<KeyHalf>(s[0], tile_max);
    if (t == 0) {
      half_max[half * Tile::kBlockM + strip * 16 + g] = tile_max[0];
      half_max[half * Tile::kBlockM + strip * 16 + g + 8] = tile_max[1];
    }
    __syncthreads();  // both halves' maxima visible; every warp is past S, so K is free
    if (kt + 1 < num_tiles) k_copy.copy(n0 + Tile::kBlockN, blk.seq.k_begin, blk.seq.k_end);
    cp_async_commit();
    const float* other_max = half_max + (half ^ 1) * Tile::kBlockM + strip * 16 + g;
    tile_max[0] = fmaxf(tile_max[0], other_max[0]);
    tile_max[1] = fmaxf(tile_max[1], other_max[8]);

    float factor[2];
    wgmma_detail::softmax_with_max<KeyHalf>(s[0], tile_max, row_max[0], row_sum[0], factor, unit);
    store_probabilities<Tile>(p_strip, s[0], half);

    // ---- P and V(kt) visible; a cut tile's V with an Inf or NaN zeroed first --------------------
    cp_async_wait<1>();  // V(kt); K(kt + 1) may still be in flight
    __syncthreads();
    // As in the other tensor-core tiers: a masked key's probability is 0, and 0 x Inf is NaN, so
    // a cut tile's non-finite values are zeroed and added after the loop to the rows that allow
    // their key (mma_detail::add_skipped_values).
    if (boundary && block_tile_has_nonfinite<kFloatExponentBits, Tile::kThreads>(reinterpret_cast<unsigned char*>(vs),
                                                                                Tile::kVFloats * 4)) {
      block_zero_nonfinite<kFloatExponentBits, Tile::kThreads>(reinterpret_cast<unsigned char*>(vs), Tile::kVFloats * 4);
      __syncthreads();
      values_zeroed = true;
    }

    // ---- O = O x factor + P V for (strip, column half) ------------------------------------------
    accumulate_values<Tile>(o[0], factor, p_lane, v_lane);
  }

  // Each half summed its own keys: the row sums meet in shared memory (the maxima, no longer read).
  __syncthreads();
  {
    const float mine0 = quad_sum(row_sum[0][0]), mine1 = quad_sum(row_sum[0][1]);
    if (t == 0) {
      half_max[half * Tile::kBlockM + strip * 16 + g] = mine0;
      half_max[half * Tile::kBlockM + strip * 16 + g + 8] = mine1;
    }
    __syncthreads();
    const float* other = half_max + (half ^ 1) * Tile::kBlockM + strip * 16 + g;
    // normalize_rows sums the quad again: the total sits on lane t == 0 alone.
    row_sum[0][0] = t == 0 ? mine0 + other[0] : 0.0f;
    row_sum[0][1] = t == 0 ? mine1 + other[8] : 0.0f;
  }
  if (values_zeroed) mma_detail::add_skipped_values<Tile, Float32, true>(o, args, strip, col0);
  // Both halves write the same LSE values for their rows (the same bits).
  mma_detail::normalize_rows<Tile>(o, row_max, row_sum, args, blk, warp_row0);
  mma_detail::store_fp32_rows<Tile>(o[0], p, blk, warp_row0, col0);
#else
  // Built for sm_90 only; the selector never launches it elsewhere (wgmma_kernels_loaded()).
  __trap();
#endif
}

// Launches the kernel for one tile shape.
template <class Tile>
void launch_dmma_tile(const MmaArgs& args, cudaStream_t stream) {
  launch_tensor_core_kernel<Tile, dmma_forward_kernel<Tile>>("dmma_forward_kernel", args, stream);
}

}  // namespace flashsdpa::cuda
