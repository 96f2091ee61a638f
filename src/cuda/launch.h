// Host-side launchers of the CUDA forward kernels, one per built tile shape; the backend
// (cuda_backend.cu) picks among them. CUDA runtime types only, no device code.
#pragma once

#include <cuda_runtime.h>

#include "core/problem.h"

namespace flashsdpa::cuda {

// Everything a tensor-core launch resolves once on the host.
struct MmaArgs {
  core::Problem p;
  float score_scale_log2;  // scale * log2(e): raw dot products -> log2-domain scores
  bool vector_io;          // every row starts 16-byte aligned and D % 8 == 0: cp.async / 16-byte stores
  bool has_score_mod;      // softcap or ALiBi: scores go through core::ScoreMod
  // Causal masks and windows with a right edge: blocks take their query tiles longest first, in
  // this many groups of (sequence, head) pairs (block_order.h). 0: natural order (tile = x,
  // head = y, sequence = z), for masks under which every tile does the same work.
  int64_t order_groups;
  int shared_memory_optin;  // the device's opt-in shared memory per block: picks the hd 256 tile shape
};

// Tensor-core forward, Dqk and Dv both padded to 64, 128 or 256 (forward_mma_d*.cu).
void launch_mma_forward_d64(const MmaArgs& args, cudaStream_t stream);
void launch_mma_forward_d128(const MmaArgs& args, cudaStream_t stream);
void launch_mma_forward_d256(const MmaArgs& args, cudaStream_t stream);

// Exact fp32 forward (forward_fp32.cu). vector_io: rows 16-byte aligned and D % 4 == 0;
// order_groups as MmaArgs::order_groups.
void launch_fp32_forward(const core::Problem& p, bool vector_io, int64_t order_groups, cudaStream_t stream);

// Benchmark-only (bench/gpu/bench_prefill.cpp --trace), read at each launch: a device buffer that
// receives the timeline of the next persistent fp32 launches. Word 0 counts the records; record n
// (words 1 + kFp32TraceWords n ..) is one piece: block << 32 | item, first key tile << 32 | end
// tile, then ns (global timer, thread 0) at the piece's start, once its Q and first K tile were
// issued, once they landed, at its key loop's end, once its first V tile was issued, and after
// its rows were stored.
inline constexpr int kFp32TraceWords = 8;
struct Fp32Debug {
  unsigned long long* trace = nullptr;
  int trace_capacity = 0;  // records
};
void fp32_set_debug(const Fp32Debug& debug);

// The backward (tier cuda-bwd, backward.cu): dq, dk, dv and dsinks in fp32 SIMT, deterministic.
void launch_backward(const core::BwdProblem& bp, cudaStream_t stream);

}  // namespace flashsdpa::cuda
