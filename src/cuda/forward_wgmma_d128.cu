// Hopper wgmma forward, head dims padded to 128.
#include "cuda/forward_wgmma.cuh"
#include "cuda/forward_wgmma.h"

namespace flashsdpa::cuda {

// 128 query rows (2 warpgroups x 64), 128-key tiles: S m64n128 and O m64n128 take 64 registers
// each, P 32. 32 KB Q + 2 x 32 KB K + 2 x 32 KB V = 160 KB, one block per SM.
using WgmmaTileD128 = WgmmaTile<128, 128>;

void launch_wgmma_forward_d128(const MmaArgs& args, cudaStream_t stream) {
  if (args.p.dtype == DType::kBFloat16) {
    launch_wgmma_tile<WgmmaTileD128, BFloat16>(args, stream);
  } else {
    launch_wgmma_tile<WgmmaTileD128, Half>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
