// Host declarations of the tile-shape sweep (tile_sweep_d*.cu): each times candidate MmaTile
// shapes of one head dim on a validated bf16 problem and prints one JSON line per shape.
#pragma once

#include "core/problem.h"

namespace flashsdpa::bench {

void sweep_d64(const core::Problem& p, double flop, int iters);
void sweep_d128(const core::Problem& p, double flop, int iters);
void sweep_d256(const core::Problem& p, double flop, int iters);

}  // namespace flashsdpa::bench
