// A measurement, not a tier: fp32 attention on tensor cores with each fp32 product split into
// three TF32 products (big x big + big x small + small x big, big = x rounded to TF32, small = the
// rest rounded to TF32), accumulated in fp32 -- the scheme torch's efficient backend uses for fp32
// (docs/perf-log.md, "fp32 tier v4"). Dense batched layout, Sq == Sk a multiple of 128, head dim
// 128, causal or not, no other feature: enough to time the idea against cuda-fp32 on the prefill
// grid and to compare its outputs with cuda-fp32's before a real tier is written.
//
// Block: 8 warps, 128 query rows (16 per warp), 64-key tiles; Q, and K / V double-buffered, in
// shared memory with a 132-float row pitch (conflict-free fragment loads). S = Q K^T and O += P V
// with mma.sync m16n8k8 TF32; P stays in registers: its accumulator layout is used directly as the
// A operand by pairing the A fragment's k index t / t + 4 with keys 2t / 2t + 1 of each 8-key
// group, and V's B fragment is read in that order.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda/device_utils.cuh"
#include "cuda/launch.h"
#include "tile_sweep.h"

namespace flashsdpa::bench {
namespace {

constexpr int kD = 128, kBlockM = 128, kBlockN = 64, kWarps = 8, kThreads = 32 * kWarps;
constexpr int kPitch = kD + 4;  // floats per shared-memory row
constexpr int kTileFloats = kBlockN * kPitch;
constexpr int kSmemBytes = (kBlockM * kPitch + 4 * kTileFloats) * 4;

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// x = big + small, both TF32.
__device__ __forceinline__ void split(float x, uint32_t& big, uint32_t& small) {
  big = to_tf32(x);
  small = to_tf32(x - __uint_as_float(big));
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// rows x 128 floats from global (row r at src + r * row_stride) into shared memory, 16-byte copies.
__device__ __forceinline__ void copy_rows(float* dst, const float* src, int64_t row_stride, int rows) {
  for (int c = threadIdx.x; c < rows * (kD / 4); c += kThreads) {
    const int r = c / (kD / 4), q = c % (kD / 4);
    cuda::cp_async_16(cuda::smem_address(dst + r * kPitch + 4 * q), src + r * row_stride + 4 * q, 16);
  }
}

__global__ void __launch_bounds__(kThreads, 1) fp32_tc_kernel(const core::Problem p, bool causal) {
  extern __shared__ __align__(16) float smem[];
  float* qs = smem;
  float* ks = qs + kBlockM * kPitch;  // two K tiles, then two V tiles
  float* vs = ks + 2 * kTileFloats;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, kv_head = h / p.group;
  const int64_t row0 = (gridDim.x - 1 - blockIdx.x) * int64_t(kBlockM);  // longest first under causal
  const float* q = static_cast<const float*>(p.q.ptr) + b * p.q.batch_stride + h * p.q.head_stride;
  const float* k = static_cast<const float*>(p.k.ptr) + b * p.k.batch_stride + kv_head * p.k.head_stride;
  const float* v = static_cast<const float*>(p.v.ptr) + b * p.v.batch_stride + kv_head * p.v.head_stride;
  const int64_t keys = p.seqlen_k;
  const int num_tiles = static_cast<int>(causal ? (row0 + kBlockM + kBlockN - 1) / kBlockN : keys / kBlockN);

  copy_rows(qs, q + row0 * p.q.row_stride, p.q.row_stride, kBlockM);
  copy_rows(ks, k, p.k.row_stride, kBlockN);
  copy_rows(vs, v, p.v.row_stride, kBlockN);
  cuda::cp_async_commit();

  const float scale_log2 = p.scale * 1.4426950408889634f;
  float o[kD / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  const float* q_warp = qs + (warp * 16) * kPitch;

  for (int kt = 0; kt < num_tiles; ++kt) {
    if (kt + 1 < num_tiles) {
      const int64_t n1 = int64_t(kt + 1) * kBlockN;
      copy_rows(ks + ((kt + 1) % 2) * kTileFloats, k + n1 * p.k.row_stride, p.k.row_stride, kBlockN);
      copy_rows(vs + ((kt + 1) % 2) * kTileFloats, v + n1 * p.v.row_stride, p.v.row_stride, kBlockN);
    }
    cuda::cp_async_commit();
    cuda::cp_async_wait<1>();  // tile kt (and Q) landed for this thread ...
    __syncthreads();           // ... and for everyone
    const float* kt_s = ks + (kt % 2) * kTileFloats;
    const float* vt_s = vs + (kt % 2) * kTileFloats;

    // ---- S = Q K^T ----------------------------------------------------------------------------
    float s[kBlockN / 8][4] = {};
#pragma unroll 2
    for (int d0 = 0; d0 < kD; d0 += 8) {
      uint32_t a_big[4], a_small[4];
      split(q_warp[g * kPitch + d0 + t], a_big[0], a_small[0]);
      split(q_warp[(g + 8) * kPitch + d0 + t], a_big[1], a_small[1]);
      split(q_warp[g * kPitch + d0 + t + 4], a_big[2], a_small[2]);
      split(q_warp[(g + 8) * kPitch + d0 + t + 4], a_big[3], a_small[3]);
      // The three products as three passes over the 8 key groups, so that consecutive MMAs write
      // different accumulators instead of waiting on each other.
      uint32_t kb[kBlockN / 8][2], ks_[kBlockN / 8][2];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        split(kt_s[(8 * j + g) * kPitch + d0 + t], kb[j][0], ks_[j][0]);
        split(kt_s[(8 * j + g) * kPitch + d0 + t + 4], kb[j][1], ks_[j][1]);
      }
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) mma_tf32(s[j], a_small, kb[j][0], kb[j][1]);
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) mma_tf32(s[j], a_big, ks_[j][0], ks_[j][1]);
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) mma_tf32(s[j], a_big, kb[j][0], kb[j][1]);
    }

    // ---- mask (causal diagonal tiles), online softmax ------------------------------------------
    const int64_t n0 = int64_t(kt) * kBlockN;
    const int64_t r_top = row0 + warp * 16 + g;
    if (causal && n0 + kBlockN - 1 > row0 + warp * 16) {
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t key = n0 + 8 * j + 2 * t + (e & 1), row = r_top + (e >> 1) * 8;
          if (key > row) s[j][e] = -INFINITY;
        }
    }
    float factor[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float m = row_max[half];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) m = fmaxf(m, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      const float m_scaled = m == -INFINITY ? 0.0f : m * scale_log2;
      factor[half] = exp2f(row_max[half] * scale_log2 - m_scaled);
      row_max[half] = m;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pr = exp2f(s[j][2 * half + e] * scale_log2 - m_scaled);
          s[j][2 * half + e] = pr;
          sum += pr;
        }
      row_sum[half] = row_sum[half] * factor[half] + sum;
    }
#pragma unroll
    for (int c = 0; c < kD / 8; ++c) {
      o[c][0] *= factor[0];
      o[c][1] *= factor[0];
      o[c][2] *= factor[1];
      o[c][3] *= factor[1];
    }

    // ---- O += P V: k index t <-> key 2t, t + 4 <-> key 2t + 1 of each 8-key group ---------------
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
      uint32_t a_big[4], a_small[4];
      split(s[j][0], a_big[0], a_small[0]);
      split(s[j][2], a_big[1], a_small[1]);
      split(s[j][1], a_big[2], a_small[2]);
      split(s[j][3], a_big[3], a_small[3]);
      const float* v0 = vt_s + (8 * j + 2 * t) * kPitch + g;
      // Output tiles in groups of 4, the three products as passes over the group (see S).
#pragma unroll
      for (int c0 = 0; c0 < kD / 8; c0 += 4) {
        uint32_t vb[4][2], vs_[4][2];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          split(v0[8 * (c0 + c)], vb[c][0], vs_[c][0]);
          split(v0[kPitch + 8 * (c0 + c)], vb[c][1], vs_[c][1]);
        }
#pragma unroll
        for (int c = 0; c < 4; ++c) mma_tf32(o[c0 + c], a_small, vb[c][0], vb[c][1]);
#pragma unroll
        for (int c = 0; c < 4; ++c) mma_tf32(o[c0 + c], a_big, vs_[c][0], vs_[c][1]);
#pragma unroll
        for (int c = 0; c < 4; ++c) mma_tf32(o[c0 + c], a_big, vb[c][0], vb[c][1]);
      }
    }
    __syncthreads();  // every warp is done with tile kt's buffers before they are refilled
  }
  cuda::cp_async_wait<0>();

  // ---- normalise and store ------------------------------------------------------------------------
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float l = row_sum[half];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = 1.0f / l;
    const int64_t row = row0 + warp * 16 + g + 8 * half;
    float* out = static_cast<float*>(p.out.mutable_ptr()) + b * p.out.batch_stride + row * p.out.row_stride +
                 h * p.out.head_stride;
#pragma unroll
    for (int c = 0; c < kD / 8; ++c) {
      out[8 * c + 2 * t] = o[c][2 * half] * inv;
      out[8 * c + 2 * t + 1] = o[c][2 * half + 1] * inv;
    }
  }
}

}  // namespace

// Times the 3xTF32 prototype on one problem and prints the largest absolute difference between
// its output and cuda-fp32's (the FMA tier, accurate to fp32 rounding). A distance to float64 is
// not computed here: tests settle accuracy once a tier exists.
void sweep_fp32_tc(const core::Problem& p, double flop, int iters) {
  if (p.head_dim_qk != kD || p.head_dim_v != kD || p.seqlen_q != p.seqlen_k || p.seqlen_q % kBlockM != 0) return;
  const bool causal = p.window_right >= 0;
  const size_t count = static_cast<size_t>(p.batch * p.seqlen_q * p.heads_q * kD);
  cuda::launch_fp32_forward(p, true, 0, nullptr);
  std::vector<float> fma(count), tc(count);
  cudaMemcpy(fma.data(), p.out.ptr, count * 4, cudaMemcpyDeviceToHost);
  static const cudaError_t configured =
      cudaFuncSetAttribute(fp32_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (configured != cudaSuccess) return;
  const dim3 grid(static_cast<unsigned>(p.seqlen_q / kBlockM), static_cast<unsigned>(p.heads_q),
                  static_cast<unsigned>(p.batch));
  const double ms = median_ms([&] { fp32_tc_kernel<<<grid, kThreads, kSmemBytes>>>(p, causal); }, 2, iters);
  const cudaError_t err = cudaGetLastError();
  cudaMemcpy(tc.data(), p.out.ptr, count * 4, cudaMemcpyDeviceToHost);
  double max_diff = 0.0, max_abs = 0.0;
  for (size_t n = 0; n < count; ++n) {
    max_diff = std::fmax(max_diff, std::fabs(static_cast<double>(tc[n]) - fma[n]));
    max_abs = std::fmax(max_abs, std::fabs(static_cast<double>(fma[n])));
  }
  std::printf(
      "{\"sweep\": \"fp32 3xtf32 prototype\", \"hd\": %d, \"seqlen\": %lld, \"causal\": %s, \"ms\": %.4f, "
      "\"tflops\": %.1f, \"max_diff_vs_fma\": %.3g, \"max_abs_out\": %.3g, \"error\": \"%s\"}\n",
      kD, static_cast<long long>(p.seqlen_q), causal ? "true" : "false", ms, flop / (ms * 1e-3) / 1e12, max_diff,
      max_abs, cudaGetErrorString(err));
  std::fflush(stdout);
}

}  // namespace flashsdpa::bench
