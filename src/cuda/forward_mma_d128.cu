// Tensor-core forward, head dims padded to 128.
#include "cuda/forward_mma.cuh"

namespace flashsdpa::cuda {

// 128 query rows per block (4 warps x 32 rows): each K/V fragment read from shared memory feeds
// two m16 tiles, halving shared-memory traffic per mma against 16 rows per warp. Q stays in shared
// memory (in registers it would need 64 more next to the 128 of O). 64-key tiles, two stages:
// 32 KB Q + 2 x 32 KB K/V = 96 KB, two blocks per SM. Measured on an H100 (bench --sweep, bf16,
// 16k tokens, v4 kernel): 335 TFLOP/s against 307 with 8 warps x 16 rows and Q in registers and
// 301 with 64-row blocks; 32-key tiles measure the same (340), see docs/perf-log.md.
using MmaTileD128 = MmaTile<128, 4, 2, 64, 2, false, 2>;

void launch_mma_forward_d128(const MmaArgs& args, cudaStream_t stream) {
  if (args.p.dtype == DType::kBFloat16) {
    launch_mma_tile<MmaTileD128, BFloat16>(args, stream);
  } else {
    launch_mma_tile<MmaTileD128, Half>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
