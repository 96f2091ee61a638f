#include "tile_sweep_fp32.cuh"
namespace flashsdpa::bench {
void sweep_fp32_d128(const core::Problem& p, double flop, int iters) {
  FLASHSDPA_SWEEP_FP32(128, 4, 8, 64, 1, true, true);
  FLASHSDPA_SWEEP_FP32(128, 4, 8, 64, 1);
  FLASHSDPA_SWEEP_FP32(128, 4, 8, 64, 1, false);
  FLASHSDPA_SWEEP_FP32(128, 8, 16, 64, 1);
  FLASHSDPA_SWEEP_FP32(128, 8, 16, 64, 1, false);
}
}  // namespace flashsdpa::bench
