// Dispatch of the Hopper wgmma forward to the tile of the problem's padded head dim.
#include "cuda/device_utils.cuh"
#include "cuda/forward_wgmma.h"
#include "cuda/tiers.h"

namespace flashsdpa::cuda {

void launch_wgmma_forward(const MmaArgs& args, cudaStream_t stream) {
  switch (padded_head_dim(args.p)) {
    case 64: launch_wgmma_forward_d64(args, stream); break;
    case 128: launch_wgmma_forward_d128(args, stream); break;
    default: launch_wgmma_forward_d256(args, stream); break;
  }
}

}  // namespace flashsdpa::cuda
