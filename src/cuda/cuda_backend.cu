// The CUDA backend's entry points: device queries, and the forward, KV-cache and backward
// dispatch from a selected tier to the kernel launch of the right tile shape.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "core/problem.h"
#include "cuda/block_order.h"
#include "cuda/cuda_backend.h"
#include "cuda/decode_launch.h"
#include "cuda/decode_tier.h"
#include "cuda/device_utils.cuh"
#include "cuda/forward_wgmma.h"
#include "cuda/launch.h"
#include "cuda/tiers.h"

namespace flashsdpa::cuda {

namespace {

// Device attributes read on every forward call: queried once per device.
int device_attribute(cudaDeviceAttr attribute) {
  constexpr int kCachedDevices = 64;
  static std::atomic<int> l2_bytes[kCachedDevices], optin_bytes[kCachedDevices];
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  std::atomic<int>* cached = nullptr;
  if (device >= 0 && device < kCachedDevices) {
    if (attribute == cudaDevAttrL2CacheSize) cached = &l2_bytes[device];
    if (attribute == cudaDevAttrMaxSharedMemoryPerBlockOptin) cached = &optin_bytes[device];
  }
  if (cached != nullptr && cached->load(std::memory_order_relaxed) > 0) return cached->load(std::memory_order_relaxed);
  int value = 0;
  check_cuda(cudaDeviceGetAttribute(&value, attribute, device), "cudaDeviceGetAttribute");
  if (cached != nullptr) cached->store(value, std::memory_order_relaxed);
  return value;
}

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Every forward tier's block order on this device (block_order.h).
int64_t block_order(const core::Problem& p) {
  return block_order_groups(p, device_attribute(cudaDevAttrL2CacheSize));
}

// What both tensor-core tiers (cuda-mma-sm80, cuda-wgmma-sm90) resolve once on the host.
MmaArgs tensor_core_args(const core::Problem& p, bool vector_io) {
  MmaArgs args;
  args.p = p;
  args.score_scale_log2 = p.scale * kLog2e;
  args.vector_io = vector_io;
  args.has_score_mod = p.softcap > 0.0f || p.alibi_slopes != nullptr;
  args.order_groups = block_order(p);
  args.shared_memory_optin = shared_memory_optin();
  return args;
}

[[noreturn]] void no_tier(const char* what) {
  throw Error(std::string(what) + ": no CUDA tier serves this yet");
}

}  // namespace

bool built() { return true; }

bool device_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not sticky, clear it
    return false;
  }
  return count > 0;
}

int device_capability() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return major * 10 + minor;
}

int shared_memory_optin() { return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin); }

void forward(const core::Problem& p, core::Tier tier, void* stream) {
  std::string why;
  switch (tier) {
    case core::Tier::kCudaMma: {
      if (!mma_tier_supports(p, &why)) throw Error("cuda-mma-sm80 cannot serve this call: " + why);
      const MmaArgs args = tensor_core_args(p, all_rows_16_byte_aligned(p));
      switch (padded_head_dim(p)) {
        case 64: launch_mma_forward_d64(args, as_stream(stream)); break;
        case 128: launch_mma_forward_d128(args, as_stream(stream)); break;
        default: launch_mma_forward_d256(args, as_stream(stream)); break;
      }
      return;
    }
    case core::Tier::kCudaWgmma:
      if (!wgmma_tier_supports(p, &why)) throw Error("cuda-wgmma-sm90 cannot serve this call: " + why);
      launch_wgmma_forward(tensor_core_args(p, true), as_stream(stream));  // rows are 16-byte aligned
      return;
    case core::Tier::kCudaFp32:
      if (!fp32_tier_supports(p, &why)) throw Error("cuda-fp32 cannot serve this call: " + why);
      launch_fp32_forward(p, all_rows_16_byte_aligned(p), block_order(p), as_stream(stream));
      return;
    case core::Tier::kCuda3xTf32:
      if (!tf32x3_tier_supports(p, &why)) throw Error("cuda-3xtf32-sm90 cannot serve this call: " + why);
      launch_3xtf32_forward(tensor_core_args(p, true), as_stream(stream));  // rows are 16-byte aligned
      return;
    case core::Tier::kCudaDmma:
      if (!dmma_tier_supports(p, &why)) throw Error("cuda-dmma-sm90 cannot serve this call: " + why);
      launch_dmma_forward(tensor_core_args(p, true), as_stream(stream));  // rows are 16-byte aligned
      return;
    case core::Tier::kCudaDecode:
      decode_forward(p, stream);  // short queries, paged continuous batching (decode_tier.h)
      return;
    default:
      no_tier("forward");
  }
}

void kvcache(const core::Problem& p, core::Tier tier, void* stream) {
  std::string why;
  switch (tier) {
    case core::Tier::kCudaDecode:
      decode_kvcache(p, stream);  // append (+ rotary), then split-KV attention (decode_tier.h)
      return;
    case core::Tier::kCudaFp32:
      if (!fp32_kvcache_supports(p, &why)) throw Error("cuda-fp32 cannot serve this KV-cache call: " + why);
      // The append kernel is the one cuda-decode launches; the attention below reads the appended
      // keys on the same stream, in order, and rotates the queries as it loads them.
      launch_kv_append(p, as_stream(stream));
      launch_fp32_forward(p, all_rows_16_byte_aligned(p), block_order(p), as_stream(stream));
      return;
    default:
      no_tier("attention_kvcache");
  }
}

void backward(const core::BwdProblem& bp, core::Tier tier, void* stream) {
  std::string why;
  if (tier != core::Tier::kCudaBackward) no_tier("attention_backward");
  if (!backward_tier_supports(bp.fwd, &why)) throw Error("cuda-bwd cannot serve this call: " + why);
  launch_backward(bp, as_stream(stream));
}

void copy_index_to_host(const int32_t* src, int64_t count, int32_t* dst, void* stream) {
  if (count <= 0) return;
  check_cuda(cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                             as_stream(stream)),
             "cudaMemcpyAsync(index tensor)");
  check_cuda(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize(index tensor)");
}

}  // namespace flashsdpa::cuda
