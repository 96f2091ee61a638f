// Host-side entry points of the Hopper forwards (tiers cuda-wgmma-sm90, forward_wgmma.cuh,
// cuda-3xtf32-sm90, forward_3xtf32.cuh, and cuda-dmma-sm90, forward_dmma.cuh).
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

// Runs an fp32 problem tf32x3_tier_supports() accepted (tiers.h), padded to 64 or 128.
void launch_3xtf32_forward(const MmaArgs& args, cudaStream_t stream);
void launch_3xtf32_forward_d64(const MmaArgs& args, cudaStream_t stream);
void launch_3xtf32_forward_d128(const MmaArgs& args, cudaStream_t stream);

// Runs an fp32 problem dmma_tier_supports() accepted (tiers.h), padded to 256.
void launch_dmma_forward(const MmaArgs& args, cudaStream_t stream);

}  // namespace flashsdpa::cuda
