// Dispatch of the Hopper wgmma forward to the tile of the problem's padded head dim.
#include "cuda/device_utils.cuh"
#include "cuda/forward_wgmma.h"
#include "cuda/tiers.h"

namespace flashsdpa::cuda {

void launch_wgmma_forward(const core::Problem& p, cudaStream_t stream) {
  MmaArgs args;
  args.p = p;
  args.score_scale_log2 = p.scale * kLog2e;
  args.vector_io = true;  // wgmma_tier_supports() requires 16-byte aligned rows
  args.has_score_mod = p.softcap > 0.0f || p.alibi_slopes != nullptr;
  args.reverse_tiles = p.window_right >= 0;  // causal: the longest query tiles first
  switch (padded_head_dim(p)) {
    case 64: launch_wgmma_forward_d64(args, stream); break;
    case 128: launch_wgmma_forward_d128(args, stream); break;
    default: launch_wgmma_forward_d256(args, stream); break;
  }
}

}  // namespace flashsdpa::cuda
