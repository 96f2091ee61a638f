// The exact fp32 forward (tier kCudaFp32): SIMT FFMA, no TF32, every feature. The kernel template
// lives here so the benchmark can time candidate tile shapes (bench/gpu/tile_sweep_fp32*.cu); the
// library builds the shapes chosen in forward_fp32.cu.
//
// Both products are register-blocked SIMT GEMMs, as in a good SGEMM. A block of 256 threads owns
// kBlockM query rows of one (sequence, query head). kThreadsPerRow (G) lanes of one warp share each
// row: lane (row_lane, key_lane) of warp w (LaneRoles: which lane bits are which) holds
//   rows      first_row + R r (r < TM),  first_row = w * R * TM + row_lane,  R = 32 / G row groups
//             per warp, so at a fixed r a warp's rows are R consecutive rows;
//   keys      key_lane + G c (c < TN) of each key tile, so at a fixed c the warp reads G
//             consecutive K rows;
//   columns   4 key_lane + 4 G j .. + 3 (j < CQ) of the output.
// S = Q K^T: per 4 head-dim steps a thread reads TM float4s of Q and TN float4s of K (rows padded
//   by 4 floats: consecutive rows fall in different bank quads) for 4 TM TN FFMAs.
// P -> smem: stored transposed (key-major), TM consecutive floats per (thread, key).
// O += P V: per key a thread reads TM floats of P and CQ float4s of V for 4 TM CQ FFMAs.
// Rows are shared only within a warp, so the softmax's row max and sum are warp shuffles.
//
// K and V have one buffer each, and each load overlaps the other product: V of tile t streams in
// during S = Q K^T of tile t, K of tile t + 1 during O += P V of tile t (two barriers per tile).
//
// Exactness (SPEC §6 holds fp32 to a plain fp32 implementation): every score is one fmaf chain
// over d = 0, 1, ... in order, the same sum the previous kernels computed and tested at |s| ~ 1e4
// (tests/cuda/test_cuda_forward.cpp, ExtremeLogits); softmax runs in natural units and subtracts
// the row max before one exp2 per score, so the scores that dominate a row have arguments near 0,
// where exp2's relative error is smallest; softcap and ALiBi are evaluated in double.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "core/mask.h"
#include "core/problem.h"
#include "core/rotary.h"
#include "core/sequence.h"
#include "cuda/block_order.h"
#include "cuda/device_resources.h"
#include "cuda/device_utils.cuh"
#include "cuda/key_split.h"
#include "cuda/launch.h"

namespace flashsdpa::cuda {

struct Fp32Args {
  core::Problem p;
  bool vector_io;      // rows 16-byte aligned and D % 4 == 0
  // Causal masks and windows with a right edge: longest query tiles first across the grid, in this
  // many L2-sized groups (block_order.h, as the tensor-core tiers); 0: the grid's order.
  int64_t order_groups;
  // Key-split launch (key_split.h; split.blocks == 0: one item per block of a (tiles, heads,
  // batch) grid): query tiles per sequence, the pieces' partials ([2 * blocks] slots of
  // Tile::kStateFloats per thread) and one merge counter per block, zeroed before the launch.
  KeySplitSchedule split;
  uint32_t q_tiles = 0;
  float* split_partials = nullptr;
  uint32_t* split_counters = nullptr;
  // Benchmark timeline of the persistent kernel's pieces (launch.h, Fp32Debug); nullptr: none.
  unsigned long long* trace = nullptr;
  int trace_capacity = 0;
};

template <int kHeadDim_, int kRowsPerThread_, int kThreadsPerRow_, int kBlockN_, int kMinBlocksPerSm_,
          bool kPairedLanes_ = true, bool kPipelinedScores_ = false, int kScoreChunkUnroll_ = 1,
          bool kPersistent_ = false>
struct Fp32Tile {
  static constexpr int kHeadDim = kHeadDim_;  // Dqk and Dv padded to this
  static constexpr int kThreads = 256;
  static constexpr int kRowsPerThread = kRowsPerThread_;  // TM
  static constexpr int kThreadsPerRow = kThreadsPerRow_;  // G
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
  // Lane bit 0 picks the row, bit 1 the key (see lane_roles); false: lane = row_lane * G + key_lane.
  static constexpr bool kPairedLanes = kPairedLanes_;
  // S's operands for the next 4 head dims are loaded before this step's FMAs, into registers of
  // their own, so their shared-memory latency overlaps the FMAs (4 x TM + 4 x TN more registers).
  static constexpr bool kPipelinedScores = kPipelinedScores_;
  // 16-dim chunks of S per loop iteration: 2 gives the scheduler the next chunk's loads to hoist.
  static constexpr int kScoreChunkUnroll = kScoreChunkUnroll_;
  // Uniform calls run on the persistent kernel (key_split.h), built where it was measured to pay.
  static constexpr bool kPersistent = kPersistent_;

  static constexpr int kRowLanes = 32 / kThreadsPerRow;  // R: row groups per warp
  static constexpr int kWarpRows = kRowLanes * kRowsPerThread;
  static constexpr int kBlockM = kWarpRows * (kThreads / 32);
  static constexpr int kKeysPerThread = kBlockN / kThreadsPerRow;       // TN
  static constexpr int kColQuads = kHeadDim / (4 * kThreadsPerRow);     // CQ: float4 output columns
  static constexpr int kQPitch = kHeadDim + 4;  // floats; +4: R consecutive rows hit R bank quads
  static constexpr int kKPitch = kHeadDim + 4;  // likewise for G consecutive keys
  static constexpr int kVPitch = kHeadDim;      // read along the row: contiguous already
  static constexpr int kPPitch = kBlockM;       // P transposed: key-major
  static constexpr int kQFloats = kBlockM * kQPitch;
  static constexpr int kKFloats = kBlockN * kKPitch;
  static constexpr int kVFloats = kBlockN * kVPitch;
  static constexpr int kPFloats = kBlockN * kPPitch;
  static constexpr int kTileBytes = (kQFloats + kKFloats + kVFloats + kPFloats) * 4;
  // A block's scheduling state (BlockControl) after the tiles, in dynamic shared memory: static
  // __shared__ variables move the dynamic base off its 128-byte alignment, and with it every
  // tile's bank pattern (96 bytes of them: 40% more excessive shared wavefronts, 2.6% slower).
  static constexpr int kControlBytes = kPersistent ? 128 : 0;
  static constexpr int kSmemBytes = kTileBytes + kControlBytes;
  // A thread's softmax state (row max, row sum, O), as a key-split piece leaves it in scratch.
  static constexpr int kStateFloats = 2 * kRowsPerThread + kRowsPerThread * kColQuads * 4;

  static_assert(kThreadsPerRow == 8 || kThreadsPerRow == 16, "2 or 4 row groups per warp");
  static_assert(kRowsPerThread == 2 || kRowsPerThread % 4 == 0, "P is read as float2 or float4s");
  static_assert(kBlockN % kThreadsPerRow == 0, "whole keys per thread");
  static_assert(kHeadDim % (4 * kThreadsPerRow) == 0, "whole float4 output columns per thread");
  static_assert(kHeadDim % 16 == 0, "the score loop steps 16 head dims at a time");
  static_assert(kStateFloats % 4 == 0, "the state moves as float4s");
};

// A block's scheduling state: the persistent kernel's current piece (written by thread 0 between
// pieces), its place in its list, and the key-split merge's vote.
struct BlockControl {
  KeySplitPiece piece;
  BlockPieces cursor;
  bool has_piece;
  bool finished_last;
  // Benchmark timeline (Fp32Debug): the piece's start, its Q and first K tile issued, landed, its
  // key loop's end, its first V tile issued.
  unsigned long long trace_ns[5];
};

// The dynamic shared memory: the tiles from its 128-byte aligned base, then the BlockControl.
__device__ __forceinline__ float* tile_smem() {
  extern __shared__ __align__(128) unsigned char fp32_smem[];
  return reinterpret_cast<float*>(fp32_smem);
}
template <class Tile>
__device__ __forceinline__ BlockControl& block_control() {
  static_assert(sizeof(BlockControl) <= Tile::kControlBytes, "the control area holds the BlockControl");
  return *reinterpret_cast<BlockControl*>(reinterpret_cast<unsigned char*>(tile_smem()) + Tile::kTileBytes);
}

namespace fp32_detail {

// kN consecutive floats of shared memory (16- or 8-byte aligned) into registers, and back.
template <int kN>
__device__ __forceinline__ void load_floats(float (&dst)[kN], const float* src) {
  if constexpr (kN % 4 == 0) {
#pragma unroll
    for (int n = 0; n < kN; n += 4) {
      const float4 v = *reinterpret_cast<const float4*>(src + n);
      dst[n] = v.x, dst[n + 1] = v.y, dst[n + 2] = v.z, dst[n + 3] = v.w;
    }
  } else {
    static_assert(kN == 2, "float2 or float4s");
    const float2 v = *reinterpret_cast<const float2*>(src);
    dst[0] = v.x, dst[1] = v.y;
  }
}
template <int kN>
__device__ __forceinline__ void store_floats(float* dst, const float (&src)[kN]) {
  if constexpr (kN % 4 == 0) {
#pragma unroll
    for (int n = 0; n < kN; n += 4)
      *reinterpret_cast<float4*>(dst + n) = make_float4(src[n], src[n + 1], src[n + 2], src[n + 3]);
  } else {
    static_assert(kN == 2, "float2 or float4s");
    *reinterpret_cast<float2*>(dst) = make_float2(src[0], src[1]);
  }
}

// kRows rows of one operand into a tile of kPitch floats per row; row_base(r) < 0 zero-fills the
// row without reading. Columns at or past dim are zero, so padded head dims add nothing.
template <class Tile, int kRows, int kPitch, class RowBase>
__device__ __forceinline__ void load_rows(float* tile, const float* base, int dim, bool vector_io, RowBase row_base) {
  constexpr int kQuads = Tile::kHeadDim / 4;
  for (int c = threadIdx.x; c < kRows * kQuads; c += Tile::kThreads) {
    const int row = c / kQuads, col = (c % kQuads) * 4;
    const int64_t offset = row_base(row);
    float* dst = tile + row * kPitch + col;
    if (vector_io) {
      const bool live = offset >= 0 && col < dim;
      cp_async_16(smem_address(dst), live ? base + offset + col : base, live ? 16 : 0);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) dst[e] = (offset >= 0 && col + e < dim) ? base[offset + col + e] : 0.0f;
    }
  }
}

// The fast copy of a K or V tile when K/V are linear in the key index (batched, varlen, dense
// cache) and rows are 16-byte aligned: the thread's chunks share one 16-byte column and lie
// kRowStep rows apart, so a tile is kIters cp.async at compile-time shared-memory offsets from
// one running global pointer, with only the row bound checked per chunk.
template <class Tile, int kRows, int kPitch>
struct LinearTileCopy {
  static constexpr int kQuads = Tile::kHeadDim / 4;
  static constexpr int kRowStep = Tile::kThreads / kQuads;
  static constexpr int kIters = kRows / kRowStep;
  static_assert(Tile::kThreads % kQuads == 0 && kRows % kRowStep == 0, "whole rows per pass");

  const float* base;     // the operand: the address of chunks that read nothing
  const float* src;      // the thread's column of key row_in_tile of the next tile
  int64_t row_stride;    // floats between keys
  int64_t tile_stride;   // floats between tiles
  uint32_t dst;          // shared address of the thread's first chunk
  int row_in_tile;
  bool col_live;         // the column is inside the head dim

  __device__ __forceinline__ LinearTileCopy(const float* base, int64_t key0, int64_t first_key, int64_t stride,
                                            int dim, float* tile) {
    const int col = (threadIdx.x % kQuads) * 4;
    row_in_tile = threadIdx.x / kQuads;
    row_stride = stride;
    tile_stride = stride * kRows;
    col_live = col < dim;
    this->base = base;
    src = base + key0 + (first_key + row_in_tile) * stride + col;
    dst = smem_address(tile + row_in_tile * kPitch + col);
  }
  // The tile of keys n0 .. n0 + kRows - 1, zero-filled outside [k_begin, k_end) (keys below
  // k_begin are a KV cache's left padding: masked for every row, so they are never read);
  // tiles are copied in order.
  __device__ __forceinline__ void copy(int64_t n0, int64_t k_begin, int64_t k_end) {
    const float* row_src = src;
    if (col_live && n0 >= k_begin && n0 + kRows <= k_end) {
#pragma unroll
      for (int i = 0; i < kIters; ++i, row_src += kRowStep * row_stride)
        cp_async_16(dst + i * kRowStep * kPitch * 4, row_src, 16);
    } else {
#pragma unroll
      for (int i = 0; i < kIters; ++i, row_src += kRowStep * row_stride) {
        const int64_t key = n0 + row_in_tile + i * kRowStep;
        const bool live = col_live && key >= k_begin && key < k_end;
        cp_async_16(dst + i * kRowStep * kPitch * 4, live ? row_src : base, live ? 16 : 0);
      }
    }
    src += tile_stride;
  }
};

// s[r][c] = <q row first_row + R r, k row key_lane + G c> over d < 16 * d_chunks, one fmaf chain
// per score in increasing d. q and k point at the thread's first row / key.
template <class Tile>
__device__ __forceinline__ void compute_scores(float (&s)[Tile::kRowsPerThread][Tile::kKeysPerThread],
                                               const float* q, const float* k, int d_chunks) {
  constexpr int TM = Tile::kRowsPerThread, TN = Tile::kKeysPerThread;
  constexpr int kQStep = Tile::kRowLanes * Tile::kQPitch, kKStep = Tile::kThreadsPerRow * Tile::kKPitch;
  auto load = [&](float4 (&qv)[TM], float4 (&kv)[TN], int d) {
#pragma unroll
    for (int r = 0; r < TM; ++r) qv[r] = *reinterpret_cast<const float4*>(q + r * kQStep + d);
#pragma unroll
    for (int c = 0; c < TN; ++c) kv[c] = *reinterpret_cast<const float4*>(k + c * kKStep + d);
  };
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) s[r][c] = 0.0f;
  float4 q_next[TM], k_next[TN];
  if constexpr (Tile::kPipelinedScores) load(q_next, k_next, 0);
  constexpr int kChunkUnroll = Tile::kScoreChunkUnroll;
#pragma unroll kChunkUnroll
  for (int chunk = 0; chunk < d_chunks; ++chunk, q += 16, k += 16) {
#pragma unroll
    for (int d = 0; d < 16; d += 4) {
      float4 qv[TM], kv[TN];
      if constexpr (Tile::kPipelinedScores) {
#pragma unroll
        for (int r = 0; r < TM; ++r) qv[r] = q_next[r];
#pragma unroll
        for (int c = 0; c < TN; ++c) kv[c] = k_next[c];
        // After the last step this reads the 4 floats after the last chunk: still inside each
        // row (at most its 4 pad floats), never used.
        load(q_next, k_next, d + 4);
      } else {
        load(qv, kv, d);
      }
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) {
          s[r][c] = fmaf(qv[r].x, kv[c].x, s[r][c]);
          s[r][c] = fmaf(qv[r].y, kv[c].y, s[r][c]);
          s[r][c] = fmaf(qv[r].z, kv[c].z, s[r][c]);
          s[r][c] = fmaf(qv[r].w, kv[c].w, s[r][c]);
        }
    }
  }
}

// o[r][j] += sum over the tile's keys n of P[n][r] V[n][columns j], keys in increasing order.
// p points at the thread's P slot of key 0, v at its first column of key 0. allowed(r, n): false
// skips the FMA, the rare path of a boundary tile whose V holds an Inf or NaN (device_utils.cuh):
// a masked key's probability is 0 and 0 x NaN is NaN, so it must not be multiplied at all.
template <class Tile, class Allowed>
__device__ __forceinline__ void accumulate_pv(float (&o)[Tile::kRowsPerThread][Tile::kColQuads][4], const float* p,
                                              const float* v, Allowed allowed) {
  constexpr int TM = Tile::kRowsPerThread, CQ = Tile::kColQuads, kColStep = 4 * Tile::kThreadsPerRow;
#pragma unroll 8
  for (int n = 0; n < Tile::kBlockN; ++n) {
    float pr[TM];
    load_floats(pr, p + n * Tile::kPPitch);
    float4 vv[CQ];
#pragma unroll
    for (int j = 0; j < CQ; ++j) vv[j] = *reinterpret_cast<const float4*>(v + n * Tile::kVPitch + j * kColStep);
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      if (!allowed(r, n)) continue;
#pragma unroll
      for (int j = 0; j < CQ; ++j) {
        o[r][j][0] = fmaf(pr[r], vv[j].x, o[r][j][0]);
        o[r][j][1] = fmaf(pr[r], vv[j].y, o[r][j][1]);
        o[r][j][2] = fmaf(pr[r], vv[j].z, o[r][j][2]);
        o[r][j][3] = fmaf(pr[r], vv[j].w, o[r][j][3]);
      }
    }
  }
}

// Which row group and key lane a lane is. A warp's shared-memory read returns one 32-bit register
// per lane and cycle, twice that when lanes n and n ^ 1, or n and n ^ 2, read the same address. So
// lane bit 0 is a row bit and bit 1 a key bit: Q and P reads (one address per row group) are
// uniform across n ^ 2, K and V reads (one address per key lane) across n ^ 1, and every
// LDS.128 of both products takes 2 cycles instead of 4. The remaining bits: row bits, then keys.
template <class Tile>
struct LaneRoles {
  static constexpr int kRowBitsHigh = Tile::kRowLanes == 4 ? 1 : 0;  // row bits above bit 0
  // The lanes sharing a row differ only in these bits.
  static constexpr unsigned kKeyBits =
      Tile::kPairedLanes ? (2u | (0x1fu & ~((1u << (2 + kRowBitsHigh)) - 1))) : unsigned(Tile::kThreadsPerRow - 1);
  int row_lane, key_lane;
  __device__ __forceinline__ explicit LaneRoles(int lane) {
    if constexpr (Tile::kPairedLanes) {
      row_lane = (lane & 1) | (((lane >> 2) & ((1 << kRowBitsHigh) - 1)) << 1);
      key_lane = ((lane >> 1) & 1) | ((lane >> (2 + kRowBitsHigh)) << 1);
    } else {
      row_lane = lane / Tile::kThreadsPerRow;
      key_lane = lane % Tile::kThreadsPerRow;
    }
  }
};

// Reductions over the kThreadsPerRow lanes that share a row (lanes differing in kKeyBits).
template <unsigned kKeyBits>
__device__ __forceinline__ float row_lanes_max(float x) {
#pragma unroll
  for (unsigned mask = 1; mask < 32; mask <<= 1)
    if (kKeyBits & mask) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, mask));
  return x;
}
template <unsigned kKeyBits>
__device__ __forceinline__ float row_lanes_sum(float x) {
#pragma unroll
  for (unsigned mask = 1; mask < 32; mask <<= 1)
    if (kKeyBits & mask) x += __shfl_xor_sync(0xffffffffu, x, mask);
  return x;
}

// KV-cache calls with rotary (SPEC §3): the block's query rows, already in shared memory, rotated
// in place at their positions (core::rotary_q_position) with core::rotary_apply, the one
// definition the reference and the KV append also follow; dims past rotary_dim keep their bits.
// One thread per row, once per block before the key loop: a decode block holds a handful of
// rows, and the rotation is rotary_dim / 2 pairs per row against a pass over the whole cache.
// Rotating here, in the block's own copy of Q, needs no scratch and leaves the loads and the
// score loop as they are. The loop's first barrier publishes the rotated rows.
template <class Tile>
__device__ __forceinline__ void rotate_query_rows(float* qs, const core::Problem& p, const core::SeqView& seq,
                                                  int64_t row0, int64_t row_end) {
  cp_async_commit();
  cp_async_wait<0>();  // this thread's copies of Q landed ...
  __syncthreads();     // ... and everyone's
  const float* cos_table = static_cast<const float*>(p.rotary_cos);
  const float* sin_table = static_cast<const float*>(p.rotary_sin);
  for (int64_t r = threadIdx.x; r < row_end - row0; r += Tile::kThreads) {
    const int64_t table_row = core::rotary_row(p, core::rotary_q_position(p, seq, row0 + r));
    if (table_row < 0) continue;  // no table row: left unrotated, never read out of bounds
    core::rotary_apply(qs + r * Tile::kQPitch, cos_table + table_row * p.rotary_row_stride,
                       sin_table + table_row * p.rotary_row_stride, p.rotary_dim, p.rotary_interleaved);
  }
}

// A thread's softmax state before any key: max -inf, sum 0, O 0.
template <class Tile>
__device__ __forceinline__ void clear_softmax_state(float (&o)[Tile::kRowsPerThread][Tile::kColQuads][4],
                                                    float (&row_max)[Tile::kRowsPerThread],
                                                    float (&row_sum)[Tile::kRowsPerThread]) {
#pragma unroll
  for (int r = 0; r < Tile::kRowsPerThread; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
#pragma unroll
    for (int j = 0; j < Tile::kColQuads; ++j) o[r][j][0] = o[r][j][1] = o[r][j][2] = o[r][j][3] = 0.0f;
  }
}

// Key-split pieces (key_split.h). Each piece stores its thread's state (max, sum, O: the same
// rows and columns in every piece, so no layout change) to its slot, and the piece that finishes
// last merges every piece's state, in piece order whoever finishes last (bit-reproducible), into
// row_max / row_sum / o. Returns whether this piece is that last one (it then stores the rows).
template <class Tile>
__device__ bool merge_key_split(const Fp32Args& args, const KeySplitPiece& piece,
                                float (&o)[Tile::kRowsPerThread][Tile::kColQuads][4],
                                float (&row_max)[Tile::kRowsPerThread], float (&row_sum)[Tile::kRowsPerThread]) {
  constexpr int TM = Tile::kRowsPerThread, CQ = Tile::kColQuads, kStatQuads = (2 * TM + 3) / 4;
  // A slot holds, per thread, quads of (max[0..TM), sum[0..TM)) then O's quads o[r][j] at
  // kStatQuads + r * CQ + j, each quad kThreads float4s apart so a block's access is coalesced.
  // O moves quad by quad, straight from and into o: a copy of the whole state beside o cost the
  // key-split kernel 24 registers (254 against the plain kernel's 230).
  const size_t slot_quads = size_t(Tile::kStateFloats / 4) * Tile::kThreads;
  float4* partials = reinterpret_cast<float4*>(args.split_partials) + threadIdx.x;
  auto o_quad = [](int r, int j) { return (kStatQuads + r * CQ + j) * Tile::kThreads; };

  float4* mine = partials + piece.slot * slot_quads;
  float stats[4 * kStatQuads];
#pragma unroll
  for (int r = 0; r < TM; ++r) stats[r] = row_max[r], stats[TM + r] = row_sum[r];
#pragma unroll
  for (int q = 0; q < kStatQuads; ++q)
    __stcg(mine + q * Tile::kThreads, make_float4(stats[4 * q], stats[4 * q + 1], stats[4 * q + 2], stats[4 * q + 3]));
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int j = 0; j < CQ; ++j) __stcg(mine + o_quad(r, j), make_float4(o[r][j][0], o[r][j][1], o[r][j][2], o[r][j][3]));
  __threadfence();  // the state is visible device-wide before the count says so
  __syncthreads();
  bool& finished_last = block_control<Tile>().finished_last;
  if (threadIdx.x == 0) finished_last = atomicAdd(args.split_counters + piece.first, 1u) == piece.pieces - 1;
  __syncthreads();
  if (!finished_last) return false;
  __threadfence();

  const uint64_t item_begin = uint64_t(piece.item - args.split.whole_items) * args.split.tiles_per_item;
  clear_softmax_state<Tile>(o, row_max, row_sum);
  for (uint32_t k = 0; k < piece.pieces; ++k) {
    const float4* theirs = partials + split_piece_slot(args.split, piece.first + k, item_begin) * slot_quads;
#pragma unroll
    for (int q = 0; q < kStatQuads; ++q) {
      const float4 v = __ldcg(theirs + q * Tile::kThreads);
      stats[4 * q] = v.x, stats[4 * q + 1] = v.y, stats[4 * q + 2] = v.z, stats[4 * q + 3] = v.w;
    }
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const float m = fmaxf(row_max[r], stats[r]);
      const float mine_factor = row_max[r] == -INFINITY ? 0.0f : fast_exp2((row_max[r] - m) * kLog2e);
      const float their_factor = stats[r] == -INFINITY ? 0.0f : fast_exp2((stats[r] - m) * kLog2e);
      row_max[r] = m;
      row_sum[r] = row_sum[r] * mine_factor + stats[TM + r] * their_factor;
#pragma unroll
      for (int j = 0; j < CQ; ++j) {
        const float4 v = __ldcg(theirs + o_quad(r, j));
        o[r][j][0] = o[r][j][0] * mine_factor + v.x * their_factor;
        o[r][j][1] = o[r][j][1] * mine_factor + v.y * their_factor;
        o[r][j][2] = o[r][j][2] * mine_factor + v.z * their_factor;
        o[r][j][3] = o[r][j][3] * mine_factor + v.w * their_factor;
      }
    }
  }
  return true;
}

}  // namespace fp32_detail

// Work item `item` of the grid's natural order (tile fastest, then head, then sequence).
__device__ __forceinline__ BlockWork natural_order_item(const Fp32Args& args, uint32_t item) {
  BlockWork work;
  work.tile = item % args.q_tiles;
  work.head = item / args.q_tiles % args.p.heads_q;
  work.batch = item / args.q_tiles / args.p.heads_q;
  return work;
}

// One work item's rows and the keys they may see.
struct ItemRows {
  int64_t batch, head, kv_head;
  core::SeqView seq;
  core::Mask mask;
  int64_t row0, row_end;  // query rows [row0, row_end); row0 >= seq.sq: the item is past the sequence
  int64_t first_key;      // key tile 0's first key
  int num_tiles;          // key tiles the rows see
};

template <class Tile>
__device__ __forceinline__ ItemRows item_rows(const core::Problem& p, const BlockWork& work) {
  constexpr int N = Tile::kBlockN;
  ItemRows it;
  it.batch = work.batch;
  it.head = work.head;
  it.kv_head = work.head / p.group;
  it.seq = core::sequence(p, it.batch);
  it.mask = core::sequence_mask(p, it.seq);
  it.row0 = work.tile * Tile::kBlockM;
  it.row_end = core::min_i64(it.row0 + Tile::kBlockM, it.seq.sq);
  const int64_t key_begin = it.mask.tile_begin(it.row0, it.row_end);
  const int64_t key_end = it.mask.tile_end(it.row0, it.row_end);
  it.first_key = key_begin / N * N;
  it.num_tiles = key_end > key_begin ? static_cast<int>((key_end - it.first_key + N - 1) / N) : 0;
  return it;
}

// The row offset of key j of K or V for an item (-1: not readable); key0 is key 0's offset when
// K/V are linear in the key index (not paged).
__device__ __forceinline__ int64_t item_key_row(const core::Problem& p, const ItemRows& it, const core::Operand& kv,
                                                int64_t key0, int64_t j) {
  if (j < it.seq.k_begin || j >= it.seq.k_end) return -1;
  if (p.kv_layout != core::KvLayout::kPaged) return key0 + j * kv.row_stride;
  const int64_t offset = core::key_offset(p, it.seq, kv, it.batch, j);
  return offset < 0 ? -1 : offset + it.kv_head * kv.head_stride;
}

// Key 0's offset in K or V when they are linear in the key index (batched, varlen, dense cache).
__device__ __forceinline__ int64_t item_key0(const core::Problem& p, const ItemRows& it, const core::Operand& kv) {
  return p.kv_layout == core::KvLayout::kPaged ? 0
                                               : core::key_offset(p, it.seq, kv, it.batch, 0) + it.kv_head * kv.head_stride;
}

// An item's query rows into qs (not committed). Rows are linear in the row index within a
// sequence, so with aligned rows they take the K/V tiles' copy: issuing the hd 256 block's 64 KB
// through load_rows (a row offset per 16 bytes) took ~2 us of each item's prologue, the copy of
// a K tile ~0.3 us (docs/perf-log.md, "fp32 tier v8").
template <class Tile>
__device__ __forceinline__ void load_query_rows(const Fp32Args& args, const ItemRows& it, float* qs) {
  const core::Problem& p = args.p;
  if (args.vector_io) {
    fp32_detail::LinearTileCopy<Tile, Tile::kBlockM, Tile::kQPitch> rows(
        static_cast<const float*>(p.q.ptr), core::q_offset(p, it.seq, it.batch, it.row0, it.head), 0, p.q.row_stride,
        static_cast<int>(p.head_dim_qk), qs);
    rows.copy(0, 0, it.row_end - it.row0);
    return;
  }
  fp32_detail::load_rows<Tile, Tile::kBlockM, Tile::kQPitch>(
      qs, static_cast<const float*>(p.q.ptr), static_cast<int>(p.head_dim_qk), /*vector_io=*/false, [&](int r) -> int64_t {
        const int64_t i = it.row0 + r;
        return i < it.row_end ? core::q_offset(p, it.seq, it.batch, i, it.head) : -1;
      });
}

// The item's rows, normalised (sinks included), and their LSE.
template <class Tile>
__device__ __forceinline__ void store_rows(const Fp32Args& args, const ItemRows& it, int first_row, int key_lane,
                                           float (&o)[Tile::kRowsPerThread][Tile::kColQuads][4],
                                           const float (&row_max)[Tile::kRowsPerThread],
                                           const float (&row_sum)[Tile::kRowsPerThread]) {
  using namespace fp32_detail;
  constexpr int TM = Tile::kRowsPerThread, CQ = Tile::kColQuads, G = Tile::kThreadsPerRow, R = Tile::kRowLanes;
  constexpr unsigned kKeyBits = LaneRoles<Tile>::kKeyBits;
  const core::Problem& p = args.p;
  const int64_t b = it.batch, h = it.head, row0 = it.row0, row_end = it.row_end;
  const core::SeqView& seq = it.seq;
  const int dv = static_cast<int>(p.head_dim_v);
  float* out = static_cast<float*>(p.out.mutable_ptr());
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    float sum = row_lanes_sum<kKeyBits>(row_sum[r]);
    float m = row_max[r];
    float factor = 1.0f;
    if (p.sinks != nullptr) {
      const float sink = p.sinks[h];
      const float new_max = fmaxf(m, sink);
      factor = m == -INFINITY ? 0.0f : fast_exp2((m - new_max) * kLog2e);
      sum = sum * factor + fast_exp2((sink - new_max) * kLog2e);
      m = new_max;
    }
    // sum is NaN when a NaN score reached this row: keep it visible (core::SoftmaxRow).
    const float inv = sum > 0.0f ? factor / sum : (sum == 0.0f ? 0.0f : sum);
    const int64_t i = row0 + first_row + R * r;
    if (i >= row_end) continue;
    if (p.lse != nullptr && key_lane == 0)
      p.lse[core::lse_offset(p, seq, b, i, h)] = sum > 0.0f ? m + logf(sum) : (sum == 0.0f ? -INFINITY : sum);
    float* dst = out + core::out_offset(p, seq, b, i, h);
#pragma unroll
    for (int j = 0; j < CQ; ++j) {
      const int col = 4 * key_lane + 4 * G * j;
      const float4 v = make_float4(o[r][j][0] * inv, o[r][j][1] * inv, o[r][j][2] * inv, o[r][j][3] * inv);
      if (args.vector_io && col < dv) {
        *reinterpret_cast<float4*>(dst + col) = v;
      } else {
        const float e[4] = {v.x, v.y, v.z, v.w};
        for (int k = 0; k < 4 && col + k < dv; ++k) dst[col + k] = e[k];
      }
    }
  }
}

// A plain-grid block's one piece: its whole item.
struct WholeItemPiece {
  static constexpr bool kScheduled = false;
  int64_t order_groups;
  __device__ __forceinline__ BlockWork work() const { return this_block_work(order_groups); }
  __device__ __forceinline__ KeySplitPiece current() const { return KeySplitPiece{0, 0, UINT32_MAX}; }
};

// A persistent block's current piece, kept in shared memory (written by thread 0 between pieces)
// and read where used, so that the key loop holds none of the schedule in registers.
struct ScheduledPiece {
  static constexpr bool kScheduled = true;  // the block's schedule is in its BlockControl
  const Fp32Args& args;
  const KeySplitPiece& piece;  // shared
  __device__ __forceinline__ BlockWork work() const { return natural_order_item(args, piece.item); }
  __device__ __forceinline__ KeySplitPiece current() const { return piece; }
};

// One work item's key tiles [piece.tile_begin, min(piece.tile_end, its tiles)) of the current piece
// of `pieces` (WholeItemPiece or ScheduledPiece): all of them (piece.whole), or a key-split
// piece, which stores its rows only if it finishes the item last.
template <class Tile, class Pieces>
__device__ __forceinline__ void attend_item(const Fp32Args& args, const Pieces& pieces) {
  using namespace fp32_detail;
  constexpr int TM = Tile::kRowsPerThread, TN = Tile::kKeysPerThread, CQ = Tile::kColQuads;
  constexpr int G = Tile::kThreadsPerRow, R = Tile::kRowLanes, N = Tile::kBlockN;
  float* const smem_f = tile_smem();
  const core::Problem& p = args.p;

  // ---- this item's rows and keys ---------------------------------------------------------------
  // Worked out again for the store after the key loop, from the piece source (blockIdx, or shared
  // memory): the key loop does not hold the item's batch, head and sequence in registers.
  const ItemRows it = item_rows<Tile>(p, pieces.work());
  const int64_t b = it.batch, h = it.head;
  const core::SeqView& seq = it.seq;
  const core::Mask& mask = it.mask;
  const int64_t row0 = it.row0, row_end = it.row_end, first_key = it.first_key;
  if (row0 >= seq.sq) return;
  const KeySplitPiece piece = pieces.current();
  const int tile_begin = static_cast<int>(piece.tile_begin);
  const int tile_end = piece.tile_end < uint32_t(it.num_tiles) ? static_cast<int>(piece.tile_end) : it.num_tiles;

  float* qs = smem_f;
  float* ks = qs + Tile::kQFloats;
  float* vs = ks + Tile::kKFloats;
  float* ps = vs + Tile::kVFloats;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const LaneRoles<Tile> roles(lane);
  const int row_lane = roles.row_lane, key_lane = roles.key_lane;
  constexpr unsigned kKeyBits = LaneRoles<Tile>::kKeyBits;
  const int first_row = warp * Tile::kWarpRows + row_lane;  // the thread's rows: first_row + R r
  const int p_slot = (warp * R + row_lane) * TM;            // its TM floats in each key's P row
  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);
  const int d_chunks = (dqk + 15) / 16;

  core::ScoreMod mod;
  mod.softcap = p.softcap;
  mod.has_alibi = p.alibi_slopes != nullptr;
  if (mod.has_alibi) mod.alibi_slope = p.alibi_slopes[b * p.alibi_batch_stride + h];
  const bool has_mod = mod.softcap > 0.0f || mod.has_alibi;
  const bool paged = p.kv_layout == core::KvLayout::kPaged;
  // The benchmark timeline's instants of a persistent block's piece (launch.h, Fp32Debug).
  auto stamp = [&](int n) {
    if constexpr (Pieces::kScheduled)
      if (args.trace != nullptr && threadIdx.x == 0) block_control<Tile>().trace_ns[n] = global_ns();
  };

  // ---- loads: Q once, then K and V tiles ------------------------------------------------------
  load_query_rows<Tile>(args, it, qs);
  if (p.rotary_dim > 0) rotate_query_rows<Tile>(qs, p, seq, row0, row_end);  // KV-cache calls only
  const int64_t k_key0 = item_key0(p, it, p.k), v_key0 = item_key0(p, it, p.v);
  const bool fast_copy = args.vector_io && !paged;
  // The copies step through the tiles in order from the piece's first.
  const int64_t piece_key = first_key + int64_t(tile_begin) * N;
  LinearTileCopy<Tile, N, Tile::kKPitch> k_copy(static_cast<const float*>(p.k.ptr), k_key0, piece_key, p.k.row_stride,
                                                dqk, ks);
  LinearTileCopy<Tile, N, Tile::kVPitch> v_copy(static_cast<const float*>(p.v.ptr), v_key0, piece_key, p.v.row_stride,
                                                dv, vs);
  auto load_k_tile = [&](int kt) {
    const int64_t n0 = first_key + int64_t(kt) * N;
    if (fast_copy) return k_copy.copy(n0, seq.k_begin, seq.k_end);
    load_rows<Tile, N, Tile::kKPitch>(ks, static_cast<const float*>(p.k.ptr), dqk, args.vector_io,
                                      [&](int r) { return item_key_row(p, it, p.k, k_key0, n0 + r); });
  };
  auto load_v_tile = [&](int kt) {
    const int64_t n0 = first_key + int64_t(kt) * N;
    if (fast_copy) return v_copy.copy(n0, seq.k_begin, seq.k_end);
    load_rows<Tile, N, Tile::kVPitch>(vs, static_cast<const float*>(p.v.ptr), dv, args.vector_io,
                                      [&](int r) { return item_key_row(p, it, p.v, v_key0, n0 + r); });
  };

  float o[TM][CQ][4];
  float row_max[TM], row_sum[TM];
  clear_softmax_state<Tile>(o, row_max, row_sum);

  if (tile_begin < tile_end) load_k_tile(tile_begin);
  cp_async_commit();
  stamp(1);
  for (int kt = tile_begin; kt < tile_end; ++kt) {
    const int64_t n0 = first_key + int64_t(kt) * N;
    cp_async_wait<0>();  // K of tile kt (and Q) landed: this thread's copies ...
    __syncthreads();     // ... and everyone's; V's buffer and P are free again
    if (kt == tile_begin) stamp(2);
    load_v_tile(kt);
    cp_async_commit();
    if (kt == tile_begin) stamp(4);

    // ---- S = Q K^T ----------------------------------------------------------------------------
    float s[TM][TN];
    compute_scores<Tile>(s, qs + first_row * Tile::kQPitch, ks + key_lane * Tile::kKPitch, d_chunks);

    // ---- scale, modifiers, mask (boundary tiles only), online softmax in natural units --------
    const bool mask_boundary = !mask.tile_unmasked(row0, row_end, n0, n0 + N);
    const bool needs_mask = paged || mask_boundary;
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TN; ++c) s[r][c] *= p.scale;
    if (has_mod || needs_mask) {
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        const int64_t j = n0 + key_lane + G * c;
        // paged: a key whose block_table entry is out of range reads zeros and is masked
        const bool key_live = !paged || (j < seq.k_end && core::key_offset(p, seq, p.k, b, j) >= 0);
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const int64_t i = row0 + first_row + R * r;
          // In double: tanhf is not correctly rounded, and its error, times softcap, would
          // exceed fp32 rounding of the score (SPEC §6 holds this tier to the fp32 reference).
          if (has_mod) s[r][c] = static_cast<float>(mod.apply(static_cast<double>(s[r][c]), i, j, mask.diag));
          if (needs_mask && (!mask.allowed(i, j) || !key_live)) s[r][c] = -INFINITY;
        }
      }
    }
    float factor[TM];
    bool rescale = false;
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int c = 0; c < TN; ++c) tile_max = fmaxf(tile_max, s[r][c]);
      tile_max = row_lanes_max<kKeyBits>(tile_max);
      const float new_max = fmaxf(row_max[r], tile_max);
      factor[r] = row_max[r] == -INFINITY ? 0.0f : fast_exp2((row_max[r] - new_max) * kLog2e);
      rescale |= factor[r] != 1.0f;
      const float shift = new_max == -INFINITY ? 0.0f : new_max;
      row_max[r] = new_max;
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        s[r][c] = fast_exp2((s[r][c] - shift) * kLog2e);
        sum += s[r][c];
      }
      row_sum[r] = row_sum[r] * factor[r] + sum;
    }
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      float column[TM];
#pragma unroll
      for (int r = 0; r < TM; ++r) column[r] = s[r][c];
      store_floats(ps + (key_lane + G * c) * Tile::kPPitch + p_slot, column);
    }
    // Late in a long row the max rarely moves: skip the rescale when no row of the warp moved.
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int j = 0; j < CQ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[r][j][e] *= factor[r];
    }

    cp_async_wait<0>();  // V of tile kt landed
    __syncthreads();     // P complete; K's buffer is free
    if (kt + 1 < tile_end) load_k_tile(kt + 1);
    cp_async_commit();

    // ---- O += P V -----------------------------------------------------------------------------
    // Tiles the mask cuts: one block-wide check of V for Inf/NaN; with one (rare), masked
    // (row, key) pairs skip their FMA (accumulate_pv), as the reference sums allowed keys only.
    if (mask_boundary && block_tile_has_nonfinite<kFloatExponentBits, Tile::kThreads>(
                          reinterpret_cast<const unsigned char*>(vs), Tile::kVFloats * 4)) {
      accumulate_pv<Tile>(o, ps + p_slot, vs + 4 * key_lane,
                          [&](int r, int n) { return mask.allowed(row0 + first_row + R * r, n0 + n); });
    } else {
      accumulate_pv<Tile>(o, ps + p_slot, vs + 4 * key_lane, [](int, int) { return true; });
    }
  }
  cp_async_wait<0>();
  stamp(3);
  if constexpr (Tile::kPersistent) {
    if (!pieces.current().whole && !merge_key_split<Tile>(args, pieces.current(), o, row_max, row_sum))
      return;
  }

  // ---- sinks, normalisation, LSE, store ---------------------------------------------------------
  store_rows<Tile>(args, item_rows<Tile>(p, pieces.work()), first_row, key_lane, o, row_max, row_sum);
}

// One piece's record in the benchmark timeline (launch.h, Fp32Debug), by thread 0 after the piece.
__device__ __forceinline__ void record_piece(const Fp32Args& args, const BlockControl& control) {
  const unsigned long long end = global_ns();
  const unsigned long long record = atomicAdd(args.trace, 1ull);
  if (record >= static_cast<unsigned long long>(args.trace_capacity)) return;
  unsigned long long* rec = args.trace + 1 + kFp32TraceWords * record;
  rec[0] = (static_cast<unsigned long long>(blockIdx.x) << 32) | control.piece.item;
  rec[1] = (static_cast<unsigned long long>(control.piece.tile_begin) << 32) | control.piece.tile_end;
  for (int n = 0; n < 5; ++n) rec[2 + n] = control.trace_ns[n];
  rec[7] = end;
}

// The plain kernel (kPersistent false): one item per block, block (tile, head, sequence) of the
// grid (or the item this_block_work maps it to). The persistent kernel: one wave of blocks, block
// r taking its pieces in order (key_split.h). Two instantiations rather than a runtime flag: the
// plain kernel keeps the grid's work item a function of blockIdx, which ptxas re-reads instead of
// holding in registers, and the tiles without a persistent schedule never build the loop.
template <class Tile, bool kPersistent>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocksPerSm) fp32_forward_kernel(const Fp32Args args) {
  if constexpr (!kPersistent) {
    attend_item<Tile>(args, WholeItemPiece{args.order_groups});
  } else {
    const KeySplitSchedule& split = args.split;
    BlockControl& control = block_control<Tile>();
    if (threadIdx.x == 0) {
      control.cursor = first_block_piece(split, blockIdx.x);
      control.has_piece = next_block_piece(split, blockIdx.x, control.cursor, control.piece);
    }
    __syncthreads();
    while (control.has_piece) {
      if (args.trace != nullptr && threadIdx.x == 0) control.trace_ns[0] = global_ns();
      attend_item<Tile>(args, ScheduledPiece{args, control.piece});
      __syncthreads();  // everyone is done with the piece
      if (threadIdx.x == 0) {
        if (args.trace != nullptr) record_piece(args, control);
        control.has_piece = next_block_piece(split, blockIdx.x, control.cursor, control.piece);
      }
      __syncthreads();
    }
  }
}

// The device's shared memory per block (opt-in maximum), for choosing among built shapes.
inline int max_shared_memory_per_block() {
  int device = 0, bytes = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  return bytes;
}

// Blocks of the kernel resident on `device` at once (SMs x blocks per SM); also raises the
// kernel's dynamic shared-memory limit (resident_blocks), or refuses a tile that does not fit.
template <class Tile, bool kPersistent>
int fp32_resident_blocks(int device) {
  const int resident = resident_blocks<fp32_forward_kernel<Tile, kPersistent>>(device, Tile::kThreads, Tile::kSmemBytes);
  if (resident == 0) require_shared_memory(cudaErrorInvalidValue, Tile::kSmemBytes, "fp32_forward_kernel");
  return resident;
}

// Every item reads the same key tiles [0, ceil(Sk / BlockN)): batched Q and K, no per-sequence key
// counts, no window (so no causal mask). Only then does an even split of the flattened tiles
// balance the blocks.
inline bool uniform_key_work(const Fp32Args& args) {
  const core::Problem& p = args.p;
  return p.q_layout == core::QLayout::kBatched && p.kv_layout == core::KvLayout::kBatched &&
         p.seqused_k == nullptr && p.cache_seqlens == nullptr && p.cache_seqlen_all < 0 && p.cache_leftpad == nullptr &&
         p.window_left < 0 && p.window_right < 0 && p.seqlen_k > 0 && p.rotary_dim == 0;
}

// How a uniform call runs: FLASHSDPA_FP32_KEY_SPLIT=0 the plain grid, =1 persistent and always
// splitting the last waves; unset, persistent, splitting when the plain grid's waves would be less
// than 99% full. For measurement and tests.
enum class Fp32Schedule { kPlain, kPersistent, kAlwaysSplit };
inline Fp32Schedule fp32_schedule() {
  static const Fp32Schedule value = [] {
    const char* env = std::getenv("FLASHSDPA_FP32_KEY_SPLIT");
    if (env == nullptr || *env == '\0') return Fp32Schedule::kPersistent;
    return env[0] == '0' ? Fp32Schedule::kPlain : Fp32Schedule::kAlwaysSplit;
  }();
  return value;
}

template <class Tile>
void launch_fp32_tile(const Fp32Args& args, cudaStream_t stream) {
  const core::Problem& p = args.p;
  const int64_t tiles = (p.seqlen_q + Tile::kBlockM - 1) / Tile::kBlockM;
  if (tiles == 0 || p.batch == 0 || p.heads_q == 0) return;
  const int device = current_device();
  Fp32Args launch_args = args;
  if (!fits_block_order(tiles, p.heads_q, p.batch)) launch_args.order_groups = 0;
  launch_args.q_tiles = static_cast<uint32_t>(tiles);
  launch_args.split = KeySplitSchedule{};
  const Fp32Schedule schedule = fp32_schedule();
  if (Tile::kPersistent && schedule != Fp32Schedule::kPlain && uniform_key_work(args))
    launch_args.split = choose_key_split(tiles * p.heads_q * p.batch, (p.seqlen_k + Tile::kBlockN - 1) / Tile::kBlockN,
                                         fp32_resident_blocks<Tile, Tile::kPersistent>(device),
                                         schedule == Fp32Schedule::kAlwaysSplit ? 2.0 : 0.99);
  const KeySplitSchedule& split = launch_args.split;
  if (split.blocks == 0) {
    fp32_resident_blocks<Tile, false>(device);  // raises the plain kernel's shared-memory limit
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.heads_q), static_cast<unsigned>(p.batch));
    fp32_forward_kernel<Tile, false><<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(launch_args);
    check_cuda(cudaGetLastError(), "fp32_forward_kernel launch");
    return;
  }
  if constexpr (Tile::kPersistent) {
    // Scratch only when items are split: the merge counters (zeroed), then 2 partial slots per run.
    void* scratch = nullptr;
    cudaError_t status = cudaSuccess;
    if (split_total_tiles(split) > 0) {
      const size_t counter_bytes = (size_t(split.blocks) * sizeof(uint32_t) + 255) / 256 * 256;
      const size_t bytes =
          counter_bytes + size_t(2) * split.blocks * Tile::kThreads * Tile::kStateFloats * sizeof(float);
      check_cuda(cudaMallocFromPoolAsync(&scratch, bytes, scratch_pool(device), stream), "cudaMallocFromPoolAsync");
      launch_args.split_counters = static_cast<uint32_t*>(scratch);
      launch_args.split_partials = reinterpret_cast<float*>(static_cast<unsigned char*>(scratch) + counter_bytes);
      status = cudaMemsetAsync(scratch, 0, counter_bytes, stream);
    }
    if (status == cudaSuccess) {
      fp32_forward_kernel<Tile, true><<<split.blocks, Tile::kThreads, Tile::kSmemBytes, stream>>>(launch_args);
      status = cudaGetLastError();
    }
    if (scratch != nullptr) check_cuda(cudaFreeAsync(scratch, stream), "cudaFreeAsync");
    check_cuda(status, "fp32_forward_kernel launch (persistent)");
  }
}

}  // namespace flashsdpa::cuda
