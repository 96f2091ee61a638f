#include "tile_sweep.cuh"
namespace flashsdpa::bench {
void sweep_d128(const core::Problem& p, double flop, int iters) {
  FLASHSDPA_SWEEP(128, 4, 2, 64, 2, false, 2);
  FLASHSDPA_SWEEP(128, 8, 1, 64, 2, true, 1);
  FLASHSDPA_SWEEP(128, 4, 1, 32, 2, true, 3);
  FLASHSDPA_SWEEP(128, 4, 2, 32, 2, false, 2);
}
}  // namespace flashsdpa::bench
