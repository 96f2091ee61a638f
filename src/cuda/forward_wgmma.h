// Host-side entry points of the Hopper wgmma forward (tier cuda-wgmma-sm90, forward_wgmma.cuh).
// CUDA runtime types only, no device code.
#pragma once

#include <cuda_runtime.h>

#include "core/problem.h"
#include "cuda/launch.h"

namespace flashsdpa::cuda {

// Runs a problem wgmma_tier_supports() accepted (tiers.h), in the tile of its padded head dim.
void launch_wgmma_forward(const MmaArgs& args, cudaStream_t stream);

// One launcher per built tile (forward_wgmma_d*.cu).
void launch_wgmma_forward_d64(const MmaArgs& args, cudaStream_t stream);
void launch_wgmma_forward_d128(const MmaArgs& args, cudaStream_t stream);
void launch_wgmma_forward_d256(const MmaArgs& args, cudaStream_t stream);

}  // namespace flashsdpa::cuda
