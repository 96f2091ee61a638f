// Tensor-core forward, head dims padded to 64.
#include "cuda/forward_mma.cuh"

namespace flashsdpa::cuda {

// 128 query rows per block (4 warps x 32 rows), Q held in registers (32 registers at D = 64),
// 64-key tiles, three stages: 16 KB Q + 3 x 16 KB K/V = 64 KB, two blocks per SM (registers).
using MmaTileD64 = MmaTile<64, 4, 2, 64, 3, true, 2>;
// Causal (or right-windowed) queries of up to 4k rows: 64-row blocks (4 warps x 16 rows), two
// stages, four blocks per SM. Half the rows per block halve the work a diagonal tile wastes and
// the spread between the longest and shortest block. Measured on an H100 (bench --sweep, bf16,
// causal, 16k tokens, longest-first order): 192 / 261 TFLOP/s at S 1k / 4k against 160 / 258
// with the shape above, 287 against 314 at 16k (docs/perf-log.md, v5).
using MmaTileD64Short = MmaTile<64, 4, 1, 64, 2, true, 4>;

template <class E>
void launch_d64(const MmaArgs& args, cudaStream_t stream) {
  const int64_t rows = args.p.seqlen_q > 0 ? args.p.seqlen_q : args.p.total_q;  // varlen: the longest, else all
  if (args.p.window_right >= 0 && rows <= 4096) {
    launch_mma_tile<MmaTileD64Short, E>(args, stream);
  } else {
    launch_mma_tile<MmaTileD64, E>(args, stream);
  }
}

void launch_mma_forward_d64(const MmaArgs& args, cudaStream_t stream) {
  if (args.p.dtype == DType::kBFloat16) {
    launch_d64<BFloat16>(args, stream);
  } else {
    launch_d64<Half>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
