// Host declarations of the tile-shape sweeps (tile_sweep_d*.cu, tile_sweep_fp32_d*.cu): each times
// candidate MmaTile (bf16) or Fp32Tile (fp32) shapes of one head dim on a validated problem and
// prints one JSON line per shape.
#pragma once

#include "core/problem.h"

namespace flashsdpa::bench {

void sweep_d64(const core::Problem& p, double flop, int iters);
void sweep_d128(const core::Problem& p, double flop, int iters);
void sweep_d256(const core::Problem& p, double flop, int iters);
void sweep_fp32_d64(const core::Problem& p, double flop, int iters);
void sweep_fp32_d128(const core::Problem& p, double flop, int iters);
void sweep_fp32_d256(const core::Problem& p, double flop, int iters);

}  // namespace flashsdpa::bench
