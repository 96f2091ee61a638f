#include "tile_sweep.cuh"
namespace flashsdpa::bench {
void sweep_d256(const core::Problem& p, double flop, int iters) {
  FLASHSDPA_SWEEP(256, 8, 1, 64, 2, false, 1);
  FLASHSDPA_SWEEP(256, 8, 1, 32, 2, true, 1);
  FLASHSDPA_SWEEP(256, 4, 1, 32, 2, true, 2);
  FLASHSDPA_SWEEP_ORDERS(256, 8, 1, 64, 2, false, 1);
}
}  // namespace flashsdpa::bench
