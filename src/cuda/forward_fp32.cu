// The exact fp32 forward's built tile shapes and their choice (kernel: forward_fp32.cuh).
#include "cuda/forward_fp32.cuh"
#include "cuda/launch.h"

namespace flashsdpa::cuda {

namespace {

// Fp32Tile<head dim, rows per thread, lanes per row, keys per tile, blocks per SM, paired lanes,
// pipelined scores, score chunks per loop iteration>; all 256 threads.
// Shared memory: Q and K rows padded by 4 floats, V unpadded, P transposed (docs/perf-log.md,
// "fp32 tier v3", has the counts and the measured alternatives).
// Measured on an H100 (bench --sweep-fp32, 16k tokens, S 4k / 16k): see the notes per shape.
// hd 64: 128 rows x 64 keys, 4 x 8 scores and 4 x 8 outputs per thread, 99 KB: two blocks per SM
// (39.0 / 39.2 TFLOP/s; one block per SM 38.3 / 38.6).
using Fp32TileD64 = Fp32Tile<64, 4, 8, 64, 2>;
// Pipelined scores (S's next operands loaded before this step's FMAs): +1.7-1.9% at hd 128 and
// +1.3-1.6% at hd 256 on an H100 (bit-identical outputs); at hd 64 the 128-register limit of two
// blocks per SM turns them into spills (-18% on an H200), so hd 64 loads in step.
// hd 128: 128 rows x 64 keys, 4 x 8 scores and 4 x 16 outputs per thread, 163 KB (sm_80's limit)
// (42.5 / 42.7; 8 x 4 scores and 8 x 8 outputs 41.3 / 41.6).
using Fp32TileD128 = Fp32Tile<128, 4, 8, 64, 1, true, true>;
// hd 256: 64 rows, 4 x 4 scores and 4 x 16 outputs per thread; 64-key tiles need 210 KB (sm_90),
// 32-key tiles 138 KB where a block may have less (36.0 / 36.0 against 32.0 / 32.2). Two score
// chunks per iteration: +0.8-1.2% on an H100 (39.6 / 40.6 / 40.8 against 39.3 / 40.1 / 40.4 at
// S 1k / 4k / 16k, non-causal).
using Fp32TileD256 = Fp32Tile<256, 4, 16, 64, 1, true, true, 2, true>;
using Fp32TileD256Small = Fp32Tile<256, 4, 16, 32, 1>;

Fp32Debug g_debug;

}  // namespace

void fp32_set_debug(const Fp32Debug& debug) { g_debug = debug; }

void launch_fp32_forward(const core::Problem& p, bool vector_io, int64_t order_groups, cudaStream_t stream) {
  Fp32Args args;
  args.p = p;
  args.vector_io = vector_io;
  args.order_groups = order_groups;
  args.trace = g_debug.trace;
  args.trace_capacity = g_debug.trace_capacity;
  const int64_t d = p.head_dim_qk > p.head_dim_v ? p.head_dim_qk : p.head_dim_v;
  if (d <= 64) {
    launch_fp32_tile<Fp32TileD64>(args, stream);
  } else if (d <= 128) {
    launch_fp32_tile<Fp32TileD128>(args, stream);
  } else if (Fp32TileD256::kSmemBytes <= max_shared_memory_per_block()) {
    launch_fp32_tile<Fp32TileD256>(args, stream);
  } else {
    launch_fp32_tile<Fp32TileD256Small>(args, stream);
  }
}

}  // namespace flashsdpa::cuda
