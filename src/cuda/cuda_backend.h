// The CUDA backend's host interface. No CUDA types here: streams travel as void*. When the
// library is built without CUDA, cuda_stub.cpp provides these and reports "not built".
#pragma once

#include <cstdint>

#include "core/problem.h"
#include "core/select.h"

namespace flashsdpa::cuda {

bool built();
bool device_available();
// Compute capability of the current device as major * 10 + minor, 0 when none.
int device_capability();
// The current device's opt-in shared memory per block in bytes (queried once per device; the
// selector asks on every call), 0 when none.
int shared_memory_optin();

// `tier` comes from core::select_tier.
void forward(const core::Problem& p, core::Tier tier, void* stream);
void kvcache(const core::Problem& p, core::Tier tier, void* stream);
void backward(const core::BwdProblem& p, core::Tier tier, void* stream);
void paged_kv_write(const core::KvWriteProblem& p, void* stream);

// True when ptr is device (or managed) memory that kernels can read.
bool is_device_pointer(const void* ptr);

// Device -> host copy of index values, for checked mode.
void copy_index_to_host(const int32_t* src, int64_t count, int32_t* dst, void* stream);

}  // namespace flashsdpa::cuda
