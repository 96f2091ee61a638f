// Tensor-core forward, head dims padded to 256.
#include "cuda/forward_mma.cuh"

namespace flashsdpa::cuda {

// 64 query rows per block (4 warps x 16 rows), Q in registers (64 registers; O takes 128), 32-key
// tiles, two stages: 32 KB Q + 2 x 32 KB K/V = 96 KB, two blocks per SM.
using MmaTileD256 = MmaTile<256, 4, 1, 32, 2, true, 2>;

void launch_mma_forward_d256(const MmaArgs& args, cudaStream_t stream) {
  if (args.p.dtype == DType::kBFloat16) {
    launch_mma_tile<MmaTileD256, BFloat16>(args, stream);
  } else {
    launch_mma_tile<MmaTileD256, Half>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
