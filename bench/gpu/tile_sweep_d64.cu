#include "tile_sweep.cuh"
namespace flashsdpa::bench {
// MmaTile<head dim, warps, m16 tiles per warp, key tile, stages, Q in registers, min blocks per SM>
void sweep_d64(const core::Problem& p, double flop, int iters) {
  FLASHSDPA_SWEEP(64, 4, 2, 64, 3, true, 2);
  FLASHSDPA_SWEEP(64, 4, 2, 64, 2, true, 2);
  FLASHSDPA_SWEEP(64, 4, 1, 64, 2, true, 4);
  FLASHSDPA_SWEEP_ORDERS(64, 4, 2, 64, 3, true, 2);
}
}  // namespace flashsdpa::bench
