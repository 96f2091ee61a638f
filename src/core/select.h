// The selector: one function answers both "is this call supported?" and "which tier serves it,
// and why?" (the role of llama.cpp's ggml_cuda_get_best_fattn_kernel). The entry points and
// `flashsdpa explain` both go through it, so what explain prints is what runs.
#pragma once

#include <string>

#include "core/problem.h"
#include "flashsdpa/flashsdpa.h"

namespace flashsdpa::core {

enum class Tier : int32_t {
  kNone = 0,
  kCpuTiled,        // src/cpu: every feature, any head dim 1..512
  kCudaMma,         // src/cuda: fp16/bf16 tensor-core prefill, sm80+
  kCudaFp32,        // src/cuda: exact fp32 (no TF32)
  kCudaDecode,      // src/cuda: split-KV decoding for short query lengths
  kCudaWgmma,       // src/cuda: fp16/bf16 prefill on Hopper's wgmma, sm90a
  kCudaBackward,    // src/cuda: the backward, fp32 SIMT, every dtype
  kCuda3xTf32,      // src/cuda: fp32 prefill on Hopper's wgmma, three TF32 products per product
  kCudaDmma,        // src/cuda: fp32 prefill on Hopper's FP64 tensor cores (exact products)
};

const char* tier_name(Tier tier);

// FLASHSDPA_CUDA_FORWARD_TIER=<tier>[,<tier>]: the entry of `list` that names a prefill tier of the
// call's dtypes (cuda-wgmma-sm90 or cuda-mma-sm80 for fp16/bf16, cuda-3xtf32-sm90, cuda-dmma-sm90
// or cuda-fp32 for fp32), kNone when none does. An entry that is no prefill tier at all lands in *unknown (the
// first such entry; the selector then refuses every call), empty entries are skipped.
Tier forced_prefill_tier(const std::string& list, bool fp32, std::string* unknown);

struct TierChoice {
  Tier tier = Tier::kNone;
  Backend backend = Backend::kCpu;
  std::string reason;  // why this tier, or why none
};

// p must be validated. `backend` is the resolved backend (never kAuto).
TierChoice select_tier(const Problem& p, Op op, Backend backend);
// paged_kv_write: a plain copy every backend serves in one pass (one launch on the GPU).
TierChoice select_tier(const KvWriteProblem& p, Backend backend);

// The backend that serves a call whose tensors start at `data` (q's pointer). kAuto picks CUDA
// when the CUDA backend is built and `data` is device memory, else the CPU. An explicit backend
// that does not match where the memory lives is refused (a CPU kernel must never dereference a
// device pointer, nor a kernel a host one).
Backend resolve_backend(Backend requested, const void* data);

}  // namespace flashsdpa::core
