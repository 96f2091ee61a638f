// Host-side launchers shared by the decode files (CUDA runtime types, no device code).
#pragma once

#include <cuda_runtime.h>

#include "core/problem.h"

namespace flashsdpa::cuda {

// KV-cache append (kv_write.cu): k_new / v_new into their cache slots, dense or paged, k rotated
// at its slot's position when the problem has rotary. Every dtype: cuda-decode (fp16/bf16) and
// cuda-fp32 (fp32) both launch it before their attention. Slots whose cache row or block is out of
// range are skipped (SPEC §5). No-op when p.seqlen_new == 0.
void launch_kv_append(const core::Problem& p, cudaStream_t stream);

}  // namespace flashsdpa::cuda
