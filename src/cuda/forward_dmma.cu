// Hopper fp32 forward on FP64 tensor cores (cuda-dmma-sm90), head dims padded to 256.
#include "cuda/forward_dmma.cuh"
#include "cuda/forward_wgmma.h"

namespace flashsdpa::cuda {

// 64 query rows (8 warps), 64-key tiles. Shared memory: Q, K, V (fp32, padded rows) 200 KB, P
// 20 KB: 223 KB, one block per SM.
using DmmaTileD256 = DmmaTile<256>;

void launch_dmma_forward(const MmaArgs& args, cudaStream_t stream) { launch_dmma_tile<DmmaTileD256>(args, stream); }

int fp32_to_fp64_rate_ratio() {
  int device = 0, ratio = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&ratio, cudaDevAttrSingleToDoublePrecisionPerfRatio, device) != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    return 0;
  }
  return ratio;
}

}  // namespace flashsdpa::cuda
