// Hopper 3xTF32 fp32 forward, head dims padded to 128, and the dispatch by padded head dim.
#include "cuda/forward_3xtf32.cuh"
#include "cuda/forward_wgmma.h"
#include "cuda/tiers.h"

namespace flashsdpa::cuda {

// 128 query rows (2 warpgroups x 64), 32-key tiles. Shared memory: Q's planes 2 x 64 KB, K's and
// V's planes 4 x 16 KB, two 16 KB staging buffers = 224 KB, one block per SM. 64-key tiles would
// need 288 KB. Registers: O 64, T 64, S 3 x 16 (two chains of big x big, one of small terms),
// P's planes 32 (ptxas: 255, 20 bytes of spills).
using Tf32x3TileD128 = Tf32x3Tile<128, 32, 2>;

void launch_3xtf32_forward_d128(const MmaArgs& args, cudaStream_t stream) {
  launch_tf32x3_tile<Tf32x3TileD128>(args, stream);
}

void launch_3xtf32_forward(const MmaArgs& args, cudaStream_t stream) {
  if (padded_head_dim(args.p) <= 64) {
    launch_3xtf32_forward_d64(args, stream);
  } else {
    launch_3xtf32_forward_d128(args, stream);
  }
}

}  // namespace flashsdpa::cuda
