#include "tile_sweep_fp32.cuh"
namespace flashsdpa::bench {
void sweep_fp32_d64(const core::Problem& p, double flop, int iters) {
  FLASHSDPA_SWEEP_FP32(64, 4, 8, 64, 2);
  FLASHSDPA_SWEEP_FP32(64, 4, 8, 64, 2, true, true);
  FLASHSDPA_SWEEP_FP32(64, 4, 8, 64, 2, false);
  FLASHSDPA_SWEEP_FP32(64, 4, 8, 64, 1);
}
}  // namespace flashsdpa::bench
