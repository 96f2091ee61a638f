// Per-device resources the CUDA tiers share: the current device's ordinal and the stream-ordered
// pool that split-key scratch comes from (decode's partials, the fp32 forward's key-split pieces).
#pragma once

#include <cuda_runtime.h>

namespace flashsdpa::cuda {

constexpr int kMaxDevices = 64;

// The calling thread's current device (0 <= ordinal < kMaxDevices, else RuntimeError).
int current_device();

// A stream-ordered pool of its own that keeps freed memory: a decode step or a split forward
// allocates the same few MB every call, and returning them to the driver would cost more than the
// kernel.
cudaMemPool_t scratch_pool(int device);

}  // namespace flashsdpa::cuda
