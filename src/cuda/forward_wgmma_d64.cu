// Hopper wgmma forward, head dims padded to 64.
#include "cuda/forward_wgmma.cuh"
#include "cuda/forward_wgmma.h"
#include "cuda/tiers.h"

namespace flashsdpa::cuda {

// 128 query rows (2 warpgroups x 64), 64-key tiles, two blocks per SM (at most 128 registers):
// S, P and O take 32 + 16 + 32 registers; 16 KB Q + 2 x 8 KB K + 2 x 8 KB V = 48 KB per block.
using WgmmaTileD64 = WgmmaTile<64, 64, 2>;

void launch_wgmma_forward_d64(const MmaArgs& args, cudaStream_t stream) {
  if (args.p.dtype == DType::kBFloat16) {
    launch_wgmma_tile<WgmmaTileD64, BFloat16>(args, stream);
  } else {
    launch_wgmma_tile<WgmmaTileD64, Half>(args, stream);
  }
}

// Whether the current device runs the sm_90a build of the kernels: a build without
// -gencode=arch=compute_90a,code=sm_90a leaves only their trapping sm_80 / PTX versions.
bool wgmma_kernels_loaded() {
  static const bool loaded = [] {
    cudaFuncAttributes attributes{};
    if (cudaFuncGetAttributes(&attributes, wgmma_forward_kernel<WgmmaTileD64, Half>) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return attributes.binaryVersion == 90;
  }();
  return loaded;
}

}  // namespace flashsdpa::cuda
