#include "tile_sweep.cuh"
namespace flashsdpa::bench {
void sweep_d128(const core::Problem& p, double flop, int iters) {
  FLASHSDPA_SWEEP(128, 4, 2, 64, 2, false, 2);
  FLASHSDPA_SWEEP(128, 4, 2, 32, 2, false, 2);
  FLASHSDPA_SWEEP(128, 4, 2, 32, 3, false, 2);
  FLASHSDPA_SWEEP_ORDERS(128, 4, 2, 64, 2, false, 2);
}
}  // namespace flashsdpa::bench
