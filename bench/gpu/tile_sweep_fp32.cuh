// Tile-shape sweep of the exact fp32 forward: instantiates candidate Fp32Tile shapes outside the
// library and times each on the same problem, to choose the shapes forward_fp32.cu builds. Each
// shape's output is also compared with the first shape's (the built one) on the same problem.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/block_order.h"
#include "cuda/forward_fp32.cuh"
#include "tile_sweep.h"

namespace flashsdpa::bench {

// The first shape each head dim's sweep lists (its output is the one the others are compared with).
inline std::string first_name(const core::Problem& p) {
  const int64_t d = p.head_dim_qk;
  return d == 64 ? "64, 4, 8, 64, 2" : d == 128 ? "128, 4, 8, 64, 1, true, true" : "256, 4, 16, 64, 1, true, true, 2";
}

inline std::vector<float>& first_output() {
  static std::vector<float> out;
  return out;
}

// Plain grids only (no key split): the sweep compares tile shapes.
template <class Tile>
void sweep_fp32_one(const core::Problem& p, const char* name, double flop, int iters) {
  if (Tile::kSmemBytes > cuda::max_shared_memory_per_block()) return;
  cuda::Fp32Args args;
  args.p = p;
  args.vector_io = true;
  args.order_groups = cuda::block_order_groups(p, l2_bytes());
  const double median = median_ms([&] { cuda::launch_fp32_tile<Tile>(args, nullptr); }, 2, iters);
  // Contiguous out of the benchmark's problems: batch x seqlen x heads x Dv floats.
  std::vector<float> out(static_cast<size_t>(p.batch * p.seqlen_q * p.heads_q * p.head_dim_v));
  cudaMemcpy(out.data(), p.out.ptr, out.size() * sizeof(float), cudaMemcpyDeviceToHost);
  std::vector<float>& first = first_output();
  if (std::string(name) == first_name(p)) first = out;
  double max_diff = first.size() == out.size() ? 0.0 : -1.0;
  for (size_t n = 0; max_diff >= 0.0 && n < out.size(); ++n)
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(out[n]) - first[n]));
  std::printf("{\"sweep\": \"fp32 %s\", \"hd\": %lld, \"seqlen\": %lld, \"causal\": %s, \"smem\": %d, \"ms\": %.4f, \"tflops\": %.1f, \"max_diff_vs_first\": %.3g}\n",
              name, static_cast<long long>(p.head_dim_qk), static_cast<long long>(p.seqlen_q),
              p.window_right >= 0 ? "true" : "false", Tile::kSmemBytes, median, flop / (median * 1e-3) / 1e12, max_diff);
  std::fflush(stdout);
}

#define FLASHSDPA_SWEEP_FP32(...) sweep_fp32_one<cuda::Fp32Tile<__VA_ARGS__>>(p, #__VA_ARGS__, flop, iters)

}  // namespace flashsdpa::bench
