// Tile-shape sweep of the tensor-core forward: instantiates candidate MmaTile shapes outside the
// library and times each on the same problem, to choose the shapes forward_mma_d*.cu build.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "cuda/forward_mma.cuh"
#include "tile_sweep.h"

namespace flashsdpa::bench {

template <class Tile>
void sweep_one(const core::Problem& p, const char* name, double flop, int iters) {
  cuda::MmaArgs args;
  args.p = p;
  args.score_scale_log2 = p.scale * cuda::kLog2e;
  args.vector_io = true;
  args.has_score_mod = false;
  args.reverse_tiles = p.window_right >= 0;
  for (int w = 0; w < 3; ++w) cuda::launch_mma_tile<Tile, cuda::BFloat16>(args, nullptr);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms;
  for (int it = 0; it < iters; ++it) {
    cudaEventRecord(start);
    cuda::launch_mma_tile<Tile, cuda::BFloat16>(args, nullptr);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  std::printf("{\"sweep\": \"%s\", \"hd\": %lld, \"seqlen\": %lld, \"causal\": %s, \"smem\": %d, \"ms\": %.4f, \"tflops\": %.1f}\n",
              name, static_cast<long long>(p.head_dim_qk), static_cast<long long>(p.seqlen_q),
              p.window_right >= 0 ? "true" : "false", Tile::kSmemBytes, median, flop / (median * 1e-3) / 1e12);
  std::fflush(stdout);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

#define FLASHSDPA_SWEEP(...) sweep_one<cuda::MmaTile<__VA_ARGS__>>(p, #__VA_ARGS__, flop, iters)

}  // namespace flashsdpa::bench
