// Tensor-core forward, head dims padded to 256.
#include "cuda/forward_mma.cuh"

namespace flashsdpa::cuda {

// 128 query rows per block (8 warps x 16 rows), one block per SM, two stages. Two shapes, chosen
// by the device's opt-in shared memory per block:
// - 64-key tiles, Q re-read from shared memory: 64 KB Q + 2 x 64 KB K/V = 192 KB, which Hopper's
//   227 KB allows. Measured on an H100 (bench --sweep, bf16, v4 kernel): 317 / 332 TFLOP/s at
//   S 4k / 16k against 280 / 292 with the shape below.
// - 32-key tiles, Q in registers (64 registers; O takes 128): 64 KB Q + 2 x 32 KB K/V = 128 KB,
//   within the 163 KB of an sm_80 block.
using MmaTileD256Wide = MmaTile<256, 8, 1, 64, 2, false, 1>;
using MmaTileD256 = MmaTile<256, 8, 1, 32, 2, true, 1>;

template <class E>
void launch_d256(const MmaArgs& args, cudaStream_t stream) {
  if (args.shared_memory_optin >= MmaTileD256Wide::kSmemBytes) {
    launch_mma_tile<MmaTileD256Wide, E>(args, stream);
  } else {
    launch_mma_tile<MmaTileD256, E>(args, stream);
  }
}

void launch_mma_forward_d256(const MmaArgs& args, cudaStream_t stream) {
  if (args.p.dtype == DType::kBFloat16) {
    launch_d256<BFloat16>(args, stream);
  } else {
    launch_d256<Half>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
