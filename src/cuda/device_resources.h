// Per-device resources the CUDA tiers share: the current device's ordinal, the stream-ordered
// pool that split-key scratch comes from (decode's partials, the fp32 forward's key-split pieces)
// and how many blocks of a kernel the device holds at once (what both tiers size their splits by);
// for copy-engine kernels, the driver's tensor-map encoder and whether a kernel was built for it.
#pragma once

#include <cuda.h>  // CUtensorMap and its encoder's types only: the encoder is reached through the runtime
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>

#include "cuda/device_utils.cuh"

namespace flashsdpa::cuda {

constexpr int kMaxDevices = 64;

// The calling thread's current device (0 <= ordinal < kMaxDevices, else RuntimeError).
int current_device();

// A stream-ordered pool of its own that keeps freed memory: a decode step or a split forward
// allocates the same few MB every call, and returning them to the driver would cost more than the
// kernel.
cudaMemPool_t scratch_pool(int device);

// Blocks of kKernel resident on `device` at once (SMs x blocks per SM) with `threads` threads and
// `smem_bytes` of dynamic shared memory, or 0 when smem_bytes exceeds what a block may opt into on
// the device. Also raises the kernel's dynamic shared-memory limit; once per kernel and device.
template <auto kKernel>
int resident_blocks(int device, int threads, int smem_bytes) {
  static std::mutex mutex;
  static int resident[kMaxDevices] = {};  // 0: not worked out yet, -1: does not fit
  std::lock_guard<std::mutex> lock(mutex);
  if (resident[device] == 0) {
    int smem_limit = 0;
    check_cuda(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
               "cudaDeviceGetAttribute");
    if (smem_bytes > smem_limit) {
      resident[device] = -1;
    } else {
      check_cuda(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes),
                 "cudaFuncSetAttribute");
      int per_sm = 0, sms = 0;
      check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, threads, smem_bytes),
                 "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
      resident[device] = std::max(per_sm, 1) * std::max(sms, 1);
    }
  }
  return std::max(resident[device], 0);
}

// The driver's tensor-map encoder (cuTensorMapEncodeTiled), reached through the runtime so that
// nothing links the driver library, or null when the driver has none. For kernels whose tiles the
// copy engine fills (cp.async.bulk.tensor; device_utils.cuh).
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiled tensor_map_encoder();

// Whether the machine code the device runs for kKernel was built for sm_90 or later (the copy
// engine's instructions; a build for older targets only has them trap). Once per kernel.
template <auto kKernel>
bool built_for_tma() {
  static const bool built = [] {
    cudaFuncAttributes attributes{};
    if (cudaFuncGetAttributes(&attributes, kKernel) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return attributes.binaryVersion >= 90;
  }();
  return built;
}

}  // namespace flashsdpa::cuda
