// Hopper wgmma forward, head dims padded to 256.
#include "cuda/forward_wgmma.cuh"
#include "cuda/forward_wgmma.h"

namespace flashsdpa::cuda {

// 128 query rows (2 warpgroups x 64), 64-key tiles: O m64n256 takes 128 registers, S m64n64 32,
// P 16. 64 KB Q + 2 x 32 KB K + 2 x 32 KB V = 192 KB, one block per SM.
using WgmmaTileD256 = WgmmaTile<256, 64>;

void launch_wgmma_forward_d256(const MmaArgs& args, cudaStream_t stream) {
  if (args.p.dtype == DType::kBFloat16) {
    launch_wgmma_tile<WgmmaTileD256, BFloat16>(args, stream);
  } else {
    launch_wgmma_tile<WgmmaTileD256, Half>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
