// The exact fp32 forward (tier kCudaFp32): SIMT FFMA, no TF32, every feature.
//
// A block of 256 threads (16 x 16) owns 64 query rows of one (sequence, query head). Thread
// (ty, tx) holds rows ty + 16 r (r < 4), keys tx + 16 c of each key tile and output columns
// tx * 4 + 64 cc .. + 3, so
//   S = Q K^T     reads one float4 of Q (a broadcast: a warp spans two ty) and one float4 of K per
//                 row/key and d-quad; K rows are padded by 4 floats so 16 consecutive rows fall in
//                 16 different bank quads;
//   P -> smem     the probabilities are re-shared through a small padded tile;
//   O += P V      reads float4s of P (broadcast) and of V rows (contiguous across tx).
// Softmax runs in natural units and subtracts the row max before one exp2 per score: the scores
// that dominate a row have arguments near 0, where exp2's relative error is smallest, so the
// result stays within fp32 rounding of the reference (SPEC §6).
#include <cuda_runtime.h>

#include <cstdint>

#include "core/mask.h"
#include "core/problem.h"
#include "core/sequence.h"
#include "cuda/device_utils.cuh"
#include "cuda/launch.h"

namespace flashsdpa::cuda {

namespace {

template <int kHeadDim_, int kBlockN_, int kMinBlocksPerSm_>
struct Fp32Tile {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kThreads = 256;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
  static constexpr int kRows = kBlockM / 16;      // rows per thread
  static constexpr int kKeys = kBlockN / 16;      // keys per thread per tile
  static constexpr int kColGroups = kHeadDim / 64;  // float4 output column groups per thread
  static constexpr int kPitch = kHeadDim + 4;     // padded row, floats
  static constexpr int kPPitch = kBlockN + 4;
  static constexpr int kQFloats = kBlockM * kPitch;
  static constexpr int kKvFloats = kBlockN * kPitch;
  static constexpr int kStageFloats = 2 * kKvFloats;  // K then V
  static constexpr int kStages = 2;                    // the copy of tile t + 1 overlaps the math of tile t
  static constexpr int kSmemBytes = (kQFloats + kStages * kStageFloats + kBlockM * kPPitch) * 4 + kStages * kBlockN;
};

struct Fp32Args {
  core::Problem p;
  bool vector_io;  // rows 16-byte aligned and D % 4 == 0
  bool reverse_tiles;
};

struct Fp32Block {
  core::SeqView seq;
  core::Mask mask;
  int64_t b = 0, h = 0, kv_head = 0;
  int64_t row0 = 0, row_end = 0;
};

// Rows of one operand into a padded tile; row_base(r) < 0 zero-fills the row without reading.
template <class Tile, class RowBase>
__device__ __forceinline__ void load_rows(float* tile, const float* base, int rows, int dim, bool vector_io,
                                          RowBase row_base) {
  constexpr int kQuads = Tile::kHeadDim / 4;
  for (int c = threadIdx.x; c < rows * kQuads; c += Tile::kThreads) {
    const int row = c / kQuads, quad = c % kQuads, col = quad * 4;
    const int64_t offset = row_base(row);
    float* dst = tile + row * Tile::kPitch + col;
    if (vector_io) {
      const bool live = offset >= 0 && col < dim;
      cp_async_16(smem_address(dst), live ? base + offset + col : base, live ? 16 : 0);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) dst[e] = (offset >= 0 && col + e < dim) ? base[offset + col + e] : 0.0f;
    }
  }
}

template <class Tile>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocksPerSm) fp32_forward_kernel(const Fp32Args args) {
  extern __shared__ __align__(16) float smem_f[];
  const core::Problem& p = args.p;

  Fp32Block blk;
  blk.b = blockIdx.z;
  blk.h = blockIdx.y;
  blk.kv_head = blk.h / p.group;
  blk.seq = core::sequence(p, blk.b);
  const int64_t tile = args.reverse_tiles ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  blk.row0 = tile * Tile::kBlockM;
  if (blk.row0 >= blk.seq.sq) return;
  blk.row_end = core::min_i64(blk.row0 + Tile::kBlockM, blk.seq.sq);
  blk.mask = core::sequence_mask(p, blk.seq);

  float* qs = smem_f;
  float* stages = qs + Tile::kQFloats;
  float* ps = stages + Tile::kStages * Tile::kStageFloats;
  unsigned char* key_valid = reinterpret_cast<unsigned char*>(ps + Tile::kBlockM * Tile::kPPitch);

  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);

  load_rows<Tile>(qs, static_cast<const float*>(p.q.ptr), Tile::kBlockM, dqk, args.vector_io, [&](int r) -> int64_t {
    const int64_t i = blk.row0 + r;
    return i < blk.row_end ? core::q_offset(p, blk.seq, blk.b, i, blk.h) : -1;
  });

  const int64_t key_begin = blk.mask.tile_begin(blk.row0, blk.row_end);
  const int64_t key_end = blk.mask.tile_end(blk.row0, blk.row_end);
  const int64_t first_key = key_begin / Tile::kBlockN * Tile::kBlockN;
  const int num_tiles =
      key_end > key_begin ? static_cast<int>((key_end - first_key + Tile::kBlockN - 1) / Tile::kBlockN) : 0;

  core::ScoreMod mod;
  mod.softcap = p.softcap;
  mod.has_alibi = p.alibi_slopes != nullptr;
  if (mod.has_alibi) mod.alibi_slope = p.alibi_slopes[blk.b * p.alibi_batch_stride + blk.h];
  const bool has_mod = mod.softcap > 0.0f || mod.has_alibi;
  const bool paged = p.kv_layout == core::KvLayout::kPaged;

  float o[Tile::kRows][Tile::kColGroups][4] = {};
  float row_max[Tile::kRows], row_sum[Tile::kRows];
#pragma unroll
  for (int r = 0; r < Tile::kRows; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
  }

  // Batched, varlen and dense-cache K/V are linear in the key index: resolve key 0 once.
  const bool linear_kv = !paged;
  const int64_t k_key0 = linear_kv ? core::key_offset(p, blk.seq, p.k, blk.b, 0) + blk.kv_head * p.k.head_stride : 0;
  const int64_t v_key0 = linear_kv ? core::key_offset(p, blk.seq, p.v, blk.b, 0) + blk.kv_head * p.v.head_stride : 0;
  auto load_kv_tile = [&](int kt) {
    const int64_t n0 = first_key + int64_t(kt) * Tile::kBlockN;
    float* ks = stages + (kt % Tile::kStages) * Tile::kStageFloats;
    auto key_row = [&](const core::Operand& kv, int64_t key0, int r) -> int64_t {
      const int64_t j = n0 + r;
      if (j >= blk.seq.k_end) return -1;
      if (linear_kv) return key0 + j * kv.row_stride;
      const int64_t offset = core::key_offset(p, blk.seq, kv, blk.b, j);
      return offset < 0 ? -1 : offset + blk.kv_head * kv.head_stride;
    };
    load_rows<Tile>(ks, static_cast<const float*>(p.k.ptr), Tile::kBlockN, dqk, args.vector_io,
                    [&](int r) { return key_row(p.k, k_key0, r); });
    load_rows<Tile>(ks + Tile::kKvFloats, static_cast<const float*>(p.v.ptr), Tile::kBlockN, dv, args.vector_io,
                    [&](int r) { return key_row(p.v, v_key0, r); });
    if (paged)
      for (int r = threadIdx.x; r < Tile::kBlockN; r += Tile::kThreads)
        key_valid[(kt % Tile::kStages) * Tile::kBlockN + r] = key_row(p.k, 0, r) >= 0;
  };

  if (num_tiles > 0) load_kv_tile(0);
  cp_async_commit();
  for (int kt = 0; kt < num_tiles; ++kt) {
    const int64_t n0 = first_key + int64_t(kt) * Tile::kBlockN;
    cp_async_wait<0>();  // tile kt (and Q) have landed (this thread's copies) ...
    __syncthreads();     // ... everyone's; tile kt - 1's buffer and P are free again
    if (kt + 1 < num_tiles) load_kv_tile(kt + 1);
    cp_async_commit();
    const float* ks = stages + (kt % Tile::kStages) * Tile::kStageFloats;
    const float* vs = ks + Tile::kKvFloats;
    const unsigned char* valid = key_valid + (kt % Tile::kStages) * Tile::kBlockN;

    // S = Q K^T
    float s[Tile::kRows][Tile::kKeys] = {};
    for (int d = 0; d < dqk; d += 4) {
      float4 qv[Tile::kRows], kv[Tile::kKeys];
#pragma unroll
      for (int r = 0; r < Tile::kRows; ++r) qv[r] = *reinterpret_cast<const float4*>(qs + (ty + 16 * r) * Tile::kPitch + d);
#pragma unroll
      for (int c = 0; c < Tile::kKeys; ++c) kv[c] = *reinterpret_cast<const float4*>(ks + (tx + 16 * c) * Tile::kPitch + d);
#pragma unroll
      for (int r = 0; r < Tile::kRows; ++r)
#pragma unroll
        for (int c = 0; c < Tile::kKeys; ++c) {
          s[r][c] = fmaf(qv[r].x, kv[c].x, s[r][c]);
          s[r][c] = fmaf(qv[r].y, kv[c].y, s[r][c]);
          s[r][c] = fmaf(qv[r].z, kv[c].z, s[r][c]);
          s[r][c] = fmaf(qv[r].w, kv[c].w, s[r][c]);
        }
    }

    // Scale, modifiers, mask (boundary tiles only), online softmax in natural units.
    const bool needs_mask = paged || !blk.mask.tile_unmasked(blk.row0, blk.row_end, n0, n0 + Tile::kBlockN);
#pragma unroll
    for (int r = 0; r < Tile::kRows; ++r) {
      const int64_t i = blk.row0 + ty + 16 * r;
      float tile_max = -INFINITY;
#pragma unroll
      for (int c = 0; c < Tile::kKeys; ++c) {
        const int64_t j = n0 + tx + 16 * c;
        float x = s[r][c] * p.scale;
        // In double: tanhf is not correctly rounded, and its error, times softcap, would
        // exceed fp32 rounding of the score (SPEC §6 holds this tier to the fp32 reference).
        if (has_mod) x = static_cast<float>(mod.apply(static_cast<double>(x), i, j, blk.mask.diag));
        if (needs_mask && (!blk.mask.allowed(i, j) || (paged && !valid[tx + 16 * c]))) x = -INFINITY;
        s[r][c] = x;
        tile_max = fmaxf(tile_max, x);
      }
#pragma unroll
      for (int lane_mask = 1; lane_mask < 16; lane_mask <<= 1)
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, lane_mask));
      const float new_max = fmaxf(row_max[r], tile_max);
      const float factor = row_max[r] == -INFINITY ? 0.0f : fast_exp2((row_max[r] - new_max) * kLog2e);
      const float shift = new_max == -INFINITY ? 0.0f : new_max;
      row_max[r] = new_max;
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < Tile::kKeys; ++c) {
        const float prob = fast_exp2((s[r][c] - shift) * kLog2e);
        sum += prob;
        ps[(ty + 16 * r) * Tile::kPPitch + tx + 16 * c] = prob;
      }
      row_sum[r] = row_sum[r] * factor + sum;
#pragma unroll
      for (int cc = 0; cc < Tile::kColGroups; ++cc)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[r][cc][e] *= factor;
    }
    __syncthreads();

    // O += P V
#pragma unroll 2
    for (int k = 0; k < Tile::kBlockN; k += 4) {
      float4 pv[Tile::kRows];
#pragma unroll
      for (int r = 0; r < Tile::kRows; ++r) pv[r] = *reinterpret_cast<const float4*>(ps + (ty + 16 * r) * Tile::kPPitch + k);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        float4 vv[Tile::kColGroups];
#pragma unroll
        for (int cc = 0; cc < Tile::kColGroups; ++cc)
          vv[cc] = *reinterpret_cast<const float4*>(vs + (k + kk) * Tile::kPitch + 64 * cc + 4 * tx);
#pragma unroll
        for (int r = 0; r < Tile::kRows; ++r) {
          const float pr = kk == 0 ? pv[r].x : kk == 1 ? pv[r].y : kk == 2 ? pv[r].z : pv[r].w;
#pragma unroll
          for (int cc = 0; cc < Tile::kColGroups; ++cc) {
            o[r][cc][0] = fmaf(pr, vv[cc].x, o[r][cc][0]);
            o[r][cc][1] = fmaf(pr, vv[cc].y, o[r][cc][1]);
            o[r][cc][2] = fmaf(pr, vv[cc].z, o[r][cc][2]);
            o[r][cc][3] = fmaf(pr, vv[cc].w, o[r][cc][3]);
          }
        }
      }
    }
  }
  cp_async_wait<0>();

  // Sinks, normalisation, LSE, store.
  float* out = static_cast<float*>(const_cast<void*>(p.out.ptr));
#pragma unroll
  for (int r = 0; r < Tile::kRows; ++r) {
    float sum = row_sum[r];
#pragma unroll
    for (int lane_mask = 1; lane_mask < 16; lane_mask <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, lane_mask);
    float m = row_max[r];
    float factor = 1.0f;
    if (p.sinks != nullptr) {
      const float sink = p.sinks[blk.h];
      const float new_max = fmaxf(m, sink);
      factor = m == -INFINITY ? 0.0f : fast_exp2((m - new_max) * kLog2e);
      sum = sum * factor + fast_exp2((sink - new_max) * kLog2e);
      m = new_max;
    }
    // sum is NaN when a NaN score reached this row: keep it visible (core::SoftmaxRow).
    const float inv = sum > 0.0f ? factor / sum : (sum == 0.0f ? 0.0f : sum);
    const int64_t i = blk.row0 + ty + 16 * r;
    if (i >= blk.row_end) continue;
    if (p.lse != nullptr && tx == 0)
      p.lse[core::lse_offset(p, blk.seq, blk.b, i, blk.h)] = sum > 0.0f ? m + logf(sum) : (sum == 0.0f ? -INFINITY : sum);
    float* dst = out + core::out_offset(p, blk.seq, blk.b, i, blk.h);
#pragma unroll
    for (int cc = 0; cc < Tile::kColGroups; ++cc) {
      const int col = 64 * cc + 4 * tx;
      const float4 v = make_float4(o[r][cc][0] * inv, o[r][cc][1] * inv, o[r][cc][2] * inv, o[r][cc][3] * inv);
      if (args.vector_io && col < dv) {
        *reinterpret_cast<float4*>(dst + col) = v;
      } else {
        const float e[4] = {v.x, v.y, v.z, v.w};
        for (int k = 0; k < 4 && col + k < dv; ++k) dst[col + k] = e[k];
      }
    }
  }
}

template <class Tile>
void launch_fp32_tile(const Fp32Args& args, cudaStream_t stream) {
  const auto kernel = fp32_forward_kernel<Tile>;
  static const cudaError_t configured =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  check_cuda(configured, "cudaFuncSetAttribute(fp32_forward_kernel)");
  const core::Problem& p = args.p;
  const int64_t tiles = (p.seqlen_q + Tile::kBlockM - 1) / Tile::kBlockM;
  if (tiles == 0 || p.batch == 0 || p.heads_q == 0) return;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.heads_q), static_cast<unsigned>(p.batch));
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(args);
  check_cuda(cudaGetLastError(), "fp32_forward_kernel launch");
}

}  // namespace

// Head dims padded to 64, 128 or 256, two K/V stages each. Key tiles: 64 keys at D = 64 (104 KB
// of shared memory, two blocks per SM); 32 at D = 128 (111 KB, two blocks); 16 at D = 256 (138 KB,
// one block; 32 keys would need 209 KB, over the 163 KB an sm_80 block may have).
void launch_fp32_forward(const core::Problem& p, bool vector_io, cudaStream_t stream) {
  Fp32Args args;
  args.p = p;
  args.vector_io = vector_io;
  args.reverse_tiles = p.window_right >= 0;
  const int64_t d = p.head_dim_qk > p.head_dim_v ? p.head_dim_qk : p.head_dim_v;
  if (d <= 64) {
    launch_fp32_tile<Fp32Tile<64, 64, 2>>(args, stream);
  } else if (d <= 128) {
    launch_fp32_tile<Fp32Tile<128, 32, 2>>(args, stream);
  } else {
    launch_fp32_tile<Fp32Tile<256, 16, 1>>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
