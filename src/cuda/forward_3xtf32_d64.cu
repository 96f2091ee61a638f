// Hopper 3xTF32 fp32 forward, head dims padded to 64.
#include "cuda/forward_3xtf32.cuh"
#include "cuda/forward_wgmma.h"

namespace flashsdpa::cuda {

// 128 query rows (2 warpgroups x 64), 64-key tiles. Shared memory: Q's planes 2 x 32 KB, K's and
// V's planes 4 x 16 KB, two 16 KB staging buffers = 160 KB, one block per SM. Registers: O 32,
// T 32, S 2 x 32 (one chain of 8 big x big steps, one of small terms), P's planes 64 (ptxas: 252,
// no spills; a second chain spills 158 bytes).
using Tf32x3TileD64 = Tf32x3Tile<64, 64, 1>;

void launch_3xtf32_forward_d64(const MmaArgs& args, cudaStream_t stream) {
  launch_tf32x3_tile<Tf32x3TileD64>(args, stream);
}

}  // namespace flashsdpa::cuda
