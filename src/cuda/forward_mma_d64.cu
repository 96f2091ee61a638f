// Tensor-core forward, head dims padded to 64.
#include "cuda/forward_mma.cuh"

namespace flashsdpa::cuda {

// 128 query rows per block (4 warps x 32 rows), Q held in registers (32 registers at D = 64),
// 64-key tiles, three stages: 16 KB Q + 3 x 16 KB K/V = 64 KB, so three blocks fit one SM.
using MmaTileD64 = MmaTile<64, 4, 2, 64, 3, true, 2>;

void launch_mma_forward_d64(const MmaArgs& args, cudaStream_t stream) {
  if (args.p.dtype == DType::kBFloat16) {
    launch_mma_tile<MmaTileD64, BFloat16>(args, stream);
  } else {
    launch_mma_tile<MmaTileD64, Half>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
