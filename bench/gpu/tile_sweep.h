// Host declarations of the tile-shape sweeps (tile_sweep_d*.cu, tile_sweep_fp32_d*.cu): each times
// candidate MmaTile (bf16) or Fp32Tile (fp32) shapes of one head dim on a validated problem and
// prints one JSON line per shape.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "core/problem.h"

namespace flashsdpa::bench {

// The L2 cache budget of one longest-first group (block_order.h), as a fraction of the L2 size:
// the backend uses 1.0; the sweep times others on the built shapes.
inline double l2_bytes() {
  int device = 0, bytes = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, device);
  return bytes;
}

// Median milliseconds of `iters` launches (CUDA events around each), after `warmups` untimed ones.
template <class Launch>
double median_ms(Launch&& launch, int warmups, int iters) {
  for (int w = 0; w < warmups; ++w) launch();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms;
  for (int it = 0; it < iters; ++it) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void sweep_d64(const core::Problem& p, double flop, int iters);
void sweep_d128(const core::Problem& p, double flop, int iters);
void sweep_d256(const core::Problem& p, double flop, int iters);
void sweep_fp32_d64(const core::Problem& p, double flop, int iters);
void sweep_fp32_d128(const core::Problem& p, double flop, int iters);
void sweep_fp32_d256(const core::Problem& p, double flop, int iters);
// The 3xTF32 tensor-core prototype (tile_sweep_fp32_tc.cu): hd 128, Sq == Sk, dense batched.
void sweep_fp32_tc(const core::Problem& p, double flop, int iters);

}  // namespace flashsdpa::bench
