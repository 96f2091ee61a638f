// The Hopper forward (tier kCudaWgmma, "cuda-wgmma-sm90"): FlashAttention-2's algorithm on
// wgmma.mma_async (sm_90a only), fp16/bf16 in, fp32 accumulation.
//
// One thread block owns kBlockM = 128 query rows of one (sequence, query head): two warpgroups of
// 64 rows, each issuing its own wgmmas (hd 64: two blocks per SM, so one block's loads, barriers
// and softmax overlap the other's tensor-core work). Every thread copies tiles with cp.async into
// shared memory in the 128-byte swizzle layout the wgmma descriptors read (no warp
// specialisation). Per key tile
// a warpgroup runs a two-stage software pipeline, so the tensor cores work on one GEMM while the
// warps do the softmax of the other:
//     issue S(t) = Q K(t)^T                    (A and B from shared memory, K-major)
//     issue O += P(t-1) V(t-1)                 (P from registers, V N-major from shared memory)
//     wait for S(t); mask + score modifiers; online softmax in the log2 domain -> P(t)
//     wait for P(t-1) V(t-1); rescale O by the new row maxima; pack P(t) to fp16/bf16
// and, in boundary tiles only, a check of V(t) for Inf/NaN before P(t) V(t) is issued
// (confine_nonfinite_values).
// K is streamed one tile ahead of V (K(t+1) and V(t) are copied during step t), two buffers each.
//
// Masks, modifiers, the sequence geometry, the softmax's edge cases and the epilogue (sinks, LSE,
// staged 16-byte stores) are those of the mma.sync tier (forward_mma.cuh) and core/mask.h, reused
// as they are: the wgmma accumulator of a warp is the mma.sync m16n8 layout. This tier serves
// linear K/V layouts (batched, varlen, dense cache) with 16-byte aligned rows; everything else stays
// on cuda-mma-sm80 (tiers.cpp says why).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/mask.h"
#include "core/problem.h"
#include "core/sequence.h"
#include "cuda/device_utils.cuh"
#include "cuda/forward_mma.cuh"
#include "cuda/launch.h"
#include "cuda/wgmma_ops.cuh"

namespace flashsdpa::cuda {

// A block of two warpgroups, each issuing wgmmas for its own 64 query rows (both wgmma tiers).
struct TwoWarpgroupBlock {
  static constexpr int kWarpGroups = 2;
  static constexpr int kThreads = 128 * kWarpGroups;
  static constexpr int kGroupRows = 64;  // query rows per warpgroup (wgmma's M)
  static constexpr int kBlockM = kGroupRows * kWarpGroups;
  // The per-warp view that forward_mma.cuh's mask and epilogue helpers take: one m16 tile.
  static constexpr int kMTiles = 1;
  static constexpr int kWarpRows = 16;
};

// Tile shape of the wgmma forward for one padded head dim.
template <int kHeadDim_, int kBlockN_, int kMinBlocksPerSm_ = 1>
struct WgmmaTile : TwoWarpgroupBlock {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kKeyTiles = kBlockN / 8;   // n8 tiles of S
  static constexpr int kOutTiles = kHeadDim / 8;  // n8 tiles of O
  static constexpr int kChunks = kHeadDim / 8;    // 16-byte chunks per row
  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kDimSteps = kHeadDim / 16;  // k16 steps of Q K^T
  static constexpr int kKeySteps = kBlockN / 16;   // k16 steps of P V

  // Shared memory: Q, two K buffers, two V buffers, each in 64-element column blocks of
  // rows x 128 bytes; plus slack to align the start to the 1024 bytes the swizzle atoms need.
  static constexpr int kColumnBlockRows = 128;  // bytes per row of a column block
  static constexpr int kQBytes = kBlockM * kRowBytes;
  static constexpr int kKvTileBytes = kBlockN * kRowBytes;
  static constexpr int kSmemBytes = 1024 + kQBytes + 4 * kKvTileBytes;

  static_assert(kHeadDim % 64 == 0, "whole 128-byte column blocks");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "wgmma N is at most 256");
};

namespace wgmma_detail {

using mma_detail::BlockView;

// Byte offset of (row, 16-byte chunk) in a tile of kRows rows: column block chunk / 8 holds
// 64 elements of every row, 128 bytes per row, chunks XOR-swizzled by row % 8 (the 128-byte
// swizzle mode of the wgmma descriptors).
template <int kRows>
__device__ __forceinline__ uint32_t swizzled128(int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * (kRows * 128) + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

// Q rows [row0, row0 + kBlockM) of the block, elements of type Bits (16 / sizeof(Bits) per
// 16-byte chunk); rows past the sequence and columns past Dqk are zero-filled (their scores are 0
// and never stored).
template <class Tile, class Bits = uint16_t>
__device__ __forceinline__ void load_q(unsigned char* smem_q, const core::Problem& p, const BlockView& blk) {
  constexpr int kPerChunk = 16 / sizeof(Bits);
  const Bits* q = static_cast<const Bits*>(p.q.ptr);
  const uint32_t base = smem_address(smem_q);
  for (int c = threadIdx.x; c < Tile::kBlockM * Tile::kChunks; c += Tile::kThreads) {
    const int row = c / Tile::kChunks, chunk = c % Tile::kChunks;
    const int64_t i = blk.row0 + row;
    const bool live = i < blk.row_end && chunk * kPerChunk < p.head_dim_qk;
    const Bits* src = live ? q + core::q_offset(p, blk.seq, blk.b, i, blk.h) + chunk * kPerChunk : q;
    cp_async_16(base + swizzled128<Tile::kBlockM>(row, chunk), src, live ? 16 : 0);
  }
}

// The key tiles [*begin, *end) (of num_tiles from first_key) that need no mask for any of a
// warpgroup's rows [group_row0, group_row0 + kGroupRows): core::Mask's bounds are monotone in the
// row, so its first and last row bound the group. Empty when the group has no row.
template <class Tile>
__device__ __forceinline__ void group_full_tiles(const BlockView& blk, int64_t group_row0, int64_t first_key,
                                                 int num_tiles, int* begin, int* end) {
  *begin = *end = 0;
  const int64_t group_row_last = core::min_i64(group_row0 + Tile::kGroupRows, blk.row_end) - 1;
  const int64_t span = int64_t(num_tiles) * Tile::kBlockN;
  auto local = [&](int64_t key) { return core::clamp_i64(key - first_key, 0, span); };
  const int64_t full_lo = blk.mask.row_begin(group_row_last), full_hi = blk.mask.row_end(group_row0);
  if (group_row0 < blk.row_end && full_hi > full_lo) {
    *begin = static_cast<int>((local(full_lo) + Tile::kBlockN - 1) / Tile::kBlockN);
    *end = static_cast<int>(local(full_hi) / Tile::kBlockN);
  }
}

// K or V streamed tile by tile from a layout linear in the key index (key j at key0 + j * row
// stride). This thread always copies chunk `chunk` of rows row0 + r * kRowStep of a tile; with
// kRowStep a multiple of 8 the swizzle is the same for all of them, so the shared offsets are
// compile-time per r, and the global address is one running pointer. Rows past the sequence's
// end (last tile only) and columns past the head dim read nothing and are zero-filled, so P V
// never meets stale or uninitialised values.
template <class Tile>
struct KvStream {
  static constexpr int kRowStep = Tile::kThreads / Tile::kChunks;
  static constexpr int kRowsPerThread = Tile::kBlockN / kRowStep;
  static_assert(Tile::kThreads % Tile::kChunks == 0 && Tile::kBlockN % kRowStep == 0 && kRowStep % 8 == 0,
                "whole rows per pass, one swizzle per thread");

  const unsigned char* src;  // this thread's chunk of its first row in the next tile
  const void* base;          // a valid address for the zero-byte copies
  int64_t row_step_bytes;
  int64_t tile_bytes;
  uint32_t dst_offset;  // the chunk's offset in a tile, fixed per thread
  int row0;
  bool live;  // the chunk holds real columns

  __device__ __forceinline__ void init(const core::Operand& op, int64_t key0, int64_t first_key, int64_t dim) {
    row0 = threadIdx.x / Tile::kChunks;
    const int chunk = threadIdx.x % Tile::kChunks;
    base = op.ptr;
    src = reinterpret_cast<const unsigned char*>(static_cast<const uint16_t*>(op.ptr) + key0 +
                                                 (first_key + row0) * op.row_stride + chunk * 8);
    row_step_bytes = op.row_stride * 2 * kRowStep;
    tile_bytes = op.row_stride * 2 * Tile::kBlockN;
    dst_offset = swizzled128<Tile::kBlockN>(row0, chunk);
    live = chunk * 8 < dim;
  }

  // Copies the next tile into `tile`; `keys_left` keys of the sequence remain from its first key.
  __device__ __forceinline__ void copy_next(unsigned char* tile, int64_t keys_left) {
    const uint32_t dst = smem_address(tile) + dst_offset;
    if (live && keys_left >= Tile::kBlockN) {
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) cp_async_16(dst + r * kRowStep * 128, src + r * row_step_bytes, 16);
    } else {
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) {
        const bool row_live = live && row0 + r * kRowStep < keys_left;
        cp_async_16(dst + r * kRowStep * 128, row_live ? src + r * row_step_bytes : base, row_live ? 16 : 0);
      }
    }
    src += tile_bytes;
  }
};

// S = Q K^T for the warpgroup's 64 rows: kDimSteps wgmmas of m64 x kBlockN x k16, both operands
// K-major in shared memory. A k16 step moves 32 bytes inside a 128-byte row, a fourth step on to
// the next column block.
template <class Tile, class E>
__device__ __forceinline__ void issue_scores(float (&s)[Tile::kKeyTiles][4], uint64_t q_desc, uint64_t k_desc) {
#pragma unroll
  for (int step = 0; step < Tile::kDimSteps; ++step) {
    const uint32_t in_block = (step % 4) * 32;
    wgmma::wgmma_ss<Tile::kBlockN, E>(s, wgmma::advance(q_desc, (step / 4) * Tile::kBlockM * 128 + in_block),
                                      wgmma::advance(k_desc, (step / 4) * Tile::kBlockN * 128 + in_block), step > 0);
  }
}

// O += P V: kKeySteps wgmmas of m64 x kHeadDim x k16, P's fragments from registers, V N-major
// (rows of V are keys, 128-byte rows per column block; a k16 step is 16 rows = 2048 bytes).
template <class Tile, class E>
__device__ __forceinline__ void issue_values(float (&o)[Tile::kOutTiles][4], const uint32_t (&p)[Tile::kKeySteps][4],
                                             uint64_t v_desc) {
#pragma unroll
  for (int step = 0; step < Tile::kKeySteps; ++step)
    wgmma::wgmma_rs_nmajor<Tile::kHeadDim, E>(o, p[step], wgmma::advance(v_desc, step * 16 * 128));
}

// The tile's raw row maxima (before the scale to log2 units) over the keys this warp holds.
template <class Tile>
__device__ __forceinline__ void tile_row_max(const float (&s)[Tile::kKeyTiles][4], float (&tile_max)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float m = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < Tile::kKeyTiles; ++nt) m = fmaxf(m, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
    tile_max[r] = quad_max(m);
  }
}

// Online softmax of one key tile whose raw row maxima are tile_max (a tile split between warps
// passes the maxima of all its keys), scores -> probabilities in place, running max and
// (per-thread partial) sum updated; factor[r] is what the output accumulator's row r must be
// multiplied by. Same rules as mma_detail::softmax_step, with the rescale of O left to the caller
// (O is still being accumulated by the tensor cores while this runs).
template <class Tile>
__device__ __forceinline__ void softmax_with_max(float (&s)[Tile::kKeyTiles][4], const float (&tile_max)[2],
                                                 float (&row_max)[2], float (&row_sum)[2], float (&factor)[2],
                                                 float unit) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float new_max = fmaxf(row_max[r], tile_max[r] * unit);
    // A row that has seen no allowed key keeps max = -inf: factor 0 (O is 0 anyway) and shift 0,
    // so exp2(-inf - 0) = 0 and -inf - -inf is never formed.
    factor[r] = row_max[r] == -INFINITY ? 0.0f : fast_exp2(row_max[r] - new_max);
    const float shift = new_max == -INFINITY ? 0.0f : new_max;
    row_max[r] = new_max;
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < Tile::kKeyTiles; ++nt)
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        const float prob = fast_exp2(fmaf(s[nt][e], unit, -shift));
        s[nt][e] = prob;
        sum += prob;
      }
    row_sum[r] = row_sum[r] * factor[r] + sum;
  }
}

// Online softmax of one key tile a warp holds whole.
template <class Tile>
__device__ __forceinline__ void softmax_scores(float (&s)[Tile::kKeyTiles][4], float (&row_max)[2], float (&row_sum)[2],
                                               float (&factor)[2], float unit) {
  float tile_max[2];
  tile_row_max<Tile>(s, tile_max);
  softmax_with_max<Tile>(s, tile_max, row_max, row_sum, factor, unit);
}

// Past the first tiles a row's max rarely moves: the warp skips the rescale when none of its rows
// needs it.
template <class Tile>
__device__ __forceinline__ void rescale_output(float (&o)[Tile::kOutTiles][4], const float (&factor)[2]) {
  if (!__any_sync(0xffffffffu, factor[0] != 1.0f || factor[1] != 1.0f)) return;
#pragma unroll
  for (int dt = 0; dt < Tile::kOutTiles; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dt][e] *= factor[e >> 1];
}

// P's accumulator layout is the A-fragment layout of the next wgmma: keys 16k..16k+15 of the
// warp's rows are n8 tiles 2k and 2k + 1.
template <class Tile, class E>
__device__ __forceinline__ void pack_probabilities(uint32_t (&p)[Tile::kKeySteps][4], const float (&s)[Tile::kKeyTiles][4]) {
#pragma unroll
  for (int k = 0; k < Tile::kKeySteps; ++k) {
    p[k][0] = E::pack(s[2 * k][0], s[2 * k][1]);
    p[k][1] = E::pack(s[2 * k][2], s[2 * k][3]);
    p[k][2] = E::pack(s[2 * k + 1][0], s[2 * k + 1][1]);
    p[k][3] = E::pack(s[2 * k + 1][2], s[2 * k + 1][3]);
  }
}

}  // namespace wgmma_detail

template <class Tile, class E>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocksPerSm) wgmma_forward_kernel(const MmaArgs args) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace wgmma_detail;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024u - (smem_address(smem_raw) & 1023u)) & 1023u);
  const core::Problem& p = args.p;

  BlockView blk;  // wgmma_tier_supports() leaves paged K/V to cuda-mma-sm80
  if (!mma_detail::open_block<true>(args, Tile::kBlockM, &blk)) return;

  const mma_detail::KeyTiles tiles = mma_detail::key_tiles<Tile::kBlockN>(p, blk);
  const int64_t first_key = tiles.first_key;
  const int num_tiles = tiles.num_tiles;
  const int64_t k_end = blk.seq.k_end;
  auto keys_left = [&](int kt) { return k_end - (first_key + int64_t(kt) * Tile::kBlockN); };

  unsigned char* smem_q = smem;
  unsigned char* smem_k = smem + Tile::kQBytes;              // K buffers 0, 1
  unsigned char* smem_v = smem_k + 2 * Tile::kKvTileBytes;  // V buffers 0, 1
  const int group = threadIdx.x / 128, warp = threadIdx.x / 32;
  const int64_t warp_row0 = blk.row0 + warp * Tile::kWarpRows;

  float o[1][Tile::kOutTiles][4];
  float row_max[1][2], row_sum[1][2];
  mma_detail::start_rows<Tile>(o, row_max, row_sum);
  if (num_tiles == 0) {  // no key in reach: out = 0, lse = -inf (or the sink)
    mma_detail::finish_and_store<Tile, E>(o, row_max, row_sum, args, blk, warp_row0,
                                          smem_q + warp * Tile::kWarpRows * Tile::kRowBytes);
    return;
  }

  // Prologue: Q and K(0) in one group.
  KvStream<Tile> k_stream, v_stream;
  k_stream.init(p.k, blk.k_key0, first_key, p.head_dim_qk);
  v_stream.init(p.v, blk.v_key0, first_key, p.head_dim_v);
  load_q<Tile>(smem_q, p, blk);
  k_stream.copy_next(smem_k, keys_left(0));
  cp_async_commit();

  // The tiles that need no mask for any row of the warpgroup. Every warpgroup runs every tile of
  // the block: a wgmma issued on a path that only some warpgroups take makes the compiler
  // serialise all of them (ptxas C7518/C7520), and rows a tile does not reach are masked.
  int kt_full_begin, kt_full_end;
  group_full_tiles<Tile>(blk, blk.row0 + group * Tile::kGroupRows, first_key, num_tiles, &kt_full_begin, &kt_full_end);

  const uint64_t q_desc = wgmma::descriptor(smem_address(smem_q) + group * Tile::kGroupRows * 128, 16, 1024);
  const uint64_t k_desc = wgmma::descriptor(smem_address(smem_k), 16, 1024);
  const uint64_t v_desc = wgmma::descriptor(smem_address(smem_v), Tile::kBlockN * 128, 1024);
  auto k_buffer = [&](int kt) { return wgmma::advance(k_desc, (kt & 1) * Tile::kKvTileBytes); };
  auto v_buffer = [&](int kt) { return wgmma::advance(v_desc, (kt & 1) * Tile::kKvTileBytes); };
  const float unit = args.has_score_mod ? kLog2e : args.score_scale_log2;

  float s[1][Tile::kKeyTiles][4];
  uint32_t probs[Tile::kKeySteps][4];
  float factor[2];

  // Tiles land one step ahead: at step kt, K(kt) and V(kt - 1) must be in shared memory, and the
  // buffers of K(kt - 1) and V(kt - 2) are free (their wgmmas were waited for in step kt - 1).
  // Returns whether the mask cuts tile kt - 1 for some row of the block (the barrier's vote: each
  // warpgroup knows its own rows only).
  auto next_step = [&](int kt) {
    cp_async_wait<0>();  // this thread's copies have landed ...
    wgmma::fence_shared_for_async_proxy();
    const bool cut = kt > 0 && warp_row0 < blk.row_end && (kt - 1 < kt_full_begin || kt - 1 >= kt_full_end);
    const bool prev_boundary = __syncthreads_or(cut) != 0;  // ... and everyone's; every warpgroup is past step kt - 1
    if (kt + 1 < num_tiles) k_stream.copy_next(smem_k + ((kt + 1) & 1) * Tile::kKvTileBytes, keys_left(kt + 1));
    if (kt < num_tiles) v_stream.copy_next(smem_v + (kt & 1) * Tile::kKvTileBytes, keys_left(kt));
    cp_async_commit();
    return prev_boundary;
  };
  // Scores of tile kt (already waited for) -> probabilities, with the mask on boundary tiles.
  auto softmax_tile = [&](int kt) {
    const bool needs_mask = kt < kt_full_begin || kt >= kt_full_end;
    if (needs_mask || args.has_score_mod)
      mma_detail::mask_and_modify<Tile>(s, args, blk, warp_row0, first_key + int64_t(kt) * Tile::kBlockN, needs_mask,
                                        nullptr);
    softmax_scores<Tile>(s[0], row_max[0], row_sum[0], factor, unit);
  };

  // V(kt) has landed and P(kt) V(kt) is not issued yet: in a tile the mask cuts (`boundary`,
  // from next_step) whose V holds an Inf or NaN (rare), the block zeroes those elements in shared memory, and after the key loop
  // mma_detail::add_nonfinite_values adds them to the rows that allow their key. No wgmma and
  // no accumulator is touched inside the branch (ptxas C7518/C7520).
  bool values_zeroed = false;
  auto confine_nonfinite_values = [&](int kt, bool boundary) {
    if (!boundary) return;
    unsigned char* v_tile = smem_v + (kt & 1) * Tile::kKvTileBytes;
    if (!block_tile_has_nonfinite<E::kExponentBits, Tile::kThreads>(v_tile, Tile::kKvTileBytes)) return;
    block_zero_nonfinite<E::kExponentBits, Tile::kThreads>(v_tile, Tile::kKvTileBytes);
    wgmma::fence_shared_for_async_proxy();
    __syncthreads();
    values_zeroed = true;
  };

  // Step 0: S(0) only.
  next_step(0);
  wgmma::fence();
  issue_scores<Tile, E>(s[0], q_desc, k_buffer(0));
  wgmma::commit();
  wgmma::wait<0>();
  wgmma::pin(s[0]);
  softmax_tile(0);
  pack_probabilities<Tile, E>(probs, s[0]);

  // Steps 1 .. num_tiles - 1: S(kt) and P(kt-1) V(kt-1) in flight together.
  for (int kt = 1; kt < num_tiles; ++kt) {
    confine_nonfinite_values(kt - 1, next_step(kt));
    wgmma::pin(o[0]);
    wgmma::fence();
    issue_scores<Tile, E>(s[0], q_desc, k_buffer(kt));
    wgmma::commit();
    issue_values<Tile, E>(o[0], probs, v_buffer(kt - 1));
    wgmma::commit();
    wgmma::wait<1>();  // S(kt)
    wgmma::pin(s[0]);
    softmax_tile(kt);
    wgmma::wait<0>();  // P(kt-1) V(kt-1): O and the registers of P(kt-1) are free
    wgmma::pin(o[0]);
    rescale_output<Tile>(o[0], factor);
    pack_probabilities<Tile, E>(probs, s[0]);
  }

  // Last step: P V of the last tile.
  confine_nonfinite_values(num_tiles - 1, next_step(num_tiles));
  wgmma::pin(o[0]);
  wgmma::fence();
  issue_values<Tile, E>(o[0], probs, v_buffer(num_tiles - 1));
  wgmma::commit();
  wgmma::wait<0>();
  wgmma::pin(o[0]);
  __syncthreads();  // every warpgroup is done with Q: its rows become the output staging area

  if (values_zeroed) mma_detail::add_skipped_values<Tile, E, true>(o, args);
  // Unconditional (rows past the sequence are not stored): a read of the accumulators on a
  // divergent path would serialise the wgmmas too.
  mma_detail::finish_and_store<Tile, E>(o, row_max, row_sum, args, blk, warp_row0,
                                        smem_q + warp * Tile::kWarpRows * Tile::kRowBytes);
#else
  // Built only for sm_90a; the selector never launches it elsewhere (wgmma_kernels_loaded()).
  __trap();
#endif
}

// Launches the kernel for one tile shape and element type (E = Half or BFloat16).
template <class Tile, class E>
void launch_wgmma_tile(const MmaArgs& args, cudaStream_t stream) {
  launch_tensor_core_kernel<Tile, wgmma_forward_kernel<Tile, E>>("wgmma_forward_kernel", args, stream);
}

}  // namespace flashsdpa::cuda
