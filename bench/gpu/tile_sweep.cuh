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

// order_groups < 0: the backend's choice (the L2 size per group); otherwise as given.
template <class Tile>
void sweep_one(const core::Problem& p, const char* name, double flop, int iters, int64_t order_groups = -1) {
  cuda::MmaArgs args;
  args.p = p;
  args.score_scale_log2 = p.scale * cuda::kLog2e;
  args.vector_io = true;
  args.has_score_mod = false;
  args.order_groups = order_groups >= 0 ? order_groups : cuda::block_order_groups(p, l2_bytes());
  args.shared_memory_optin = 0;
  const double median = median_ms([&] { cuda::launch_mma_tile<Tile, cuda::BFloat16>(args, nullptr); }, 3, iters);
  std::printf("{\"sweep\": \"%s groups %lld\", \"hd\": %lld, \"seqlen\": %lld, \"causal\": %s, \"smem\": %d, \"ms\": %.4f, \"tflops\": %.1f}\n",
              name, static_cast<long long>(args.order_groups), static_cast<long long>(p.head_dim_qk),
              static_cast<long long>(p.seqlen_q), p.window_right >= 0 ? "true" : "false", Tile::kSmemBytes, median,
              flop / (median * 1e-3) / 1e12);
  std::fflush(stdout);
}

// Causal problems: the block order on one shape. Groups = pairs is the old order (each
// sequence's tiles longest first, sequence after sequence), 1 is longest first over the grid.
template <class Tile>
void sweep_orders(const core::Problem& p, const char* name, double flop, int iters) {
  if (p.window_right < 0) return;
  const double l2 = l2_bytes();
  sweep_one<Tile>(p, name, flop, iters, p.batch * p.heads_q);
  for (double share : {0.25, 0.5}) sweep_one<Tile>(p, name, flop, iters, cuda::longest_first_groups(p, share * l2));
  sweep_one<Tile>(p, name, flop, iters, 1);
}

#define FLASHSDPA_SWEEP(...) sweep_one<cuda::MmaTile<__VA_ARGS__>>(p, #__VA_ARGS__, flop, iters)
#define FLASHSDPA_SWEEP_ORDERS(...) sweep_orders<cuda::MmaTile<__VA_ARGS__>>(p, #__VA_ARGS__, flop, iters)

}  // namespace flashsdpa::bench
