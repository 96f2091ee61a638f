// Hopper 3xTF32 fp32 forward, head dims padded to 256.
#include "cuda/forward_3xtf32.cuh"
#include "cuda/forward_wgmma.h"

namespace flashsdpa::cuda {

// 64 query rows, the head dim split between the two warpgroups (Tf32x3SplitTile says why), 16-key
// tiles, 217 KB of shared memory, one block per SM. Registers per thread as at hd 128: O 64, T 64,
// S 3 x 8 (two chains of 8 big x big steps, one of small terms), P's planes 16, K's next tile 16.
using Tf32x3TileD256 = Tf32x3SplitTile<16, 2>;

void launch_3xtf32_forward_d256(const MmaArgs& args, cudaStream_t stream) {
  launch_tf32x3_tile<Tf32x3TileD256>(args, stream);
}

}  // namespace flashsdpa::cuda
