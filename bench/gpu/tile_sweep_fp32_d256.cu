#include "tile_sweep_fp32.cuh"
namespace flashsdpa::bench {
void sweep_fp32_d256(const core::Problem& p, double flop, int iters) {
  FLASHSDPA_SWEEP_FP32(256, 4, 16, 64, 1, true, true, 2);
  FLASHSDPA_SWEEP_FP32(256, 4, 16, 64, 1, true, true);
  FLASHSDPA_SWEEP_FP32(256, 4, 16, 64, 1);
  FLASHSDPA_SWEEP_FP32(256, 4, 16, 64, 1, false);
  FLASHSDPA_SWEEP_FP32(256, 4, 16, 32, 1);
}
}  // namespace flashsdpa::bench
