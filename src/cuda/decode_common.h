// Device helpers shared by the decode kernels (decode_attention.cu, kv_write.cu): element
// conversions (fp32 too: the KV append also serves cuda-fp32's fp32 caches) and the dtype
// dispatch. The tensor-core and copy primitives are device_utils.cuh's.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/device_utils.cuh"

namespace flashsdpa::cuda::decode {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// An L2 cache policy that evicts these lines first: for data read once (the K/V stream).
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// cp.async of 16 bytes (src_bytes < 16 zero-fills the rest) with an L2 policy and a 128-byte L2
// fetch: for K/V rows read once. Fetch size on an H100 (us per call, B 1 x 32k / B 8 x 8k / B 64 x
// 16k, dense): 128 B 52.6 / 97.8 / 1451, 256 B 52.5 / 99.5 / 1451, none 53.6 / 100.6 / 1484.
__device__ __forceinline__ void cp_async_16_streaming(uint32_t dst, const void* src, int src_bytes, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::128B [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes), "l"(policy));
}

// ---- the tensor copy engine (sm_90) ----------------------------------------------------------------
// A warp's K/V stage is filled by cp.async.bulk.tensor (TMA) and completes on an mbarrier in shared
// memory: one arrival (the issuing lane's, with the bytes to expect) and the copies' bytes. Off
// sm_90 these are never called (the host does not pick the TMA path there) and trap.

__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t arrivals) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  __trap();
#endif
}
// The issuing lane's arrival, with the bytes the copies of this phase will deliver.
__device__ __forceinline__ void mbarrier_expect_bytes(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n .reg .pred done;\n"
      "WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n @!done bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#else
  __trap();
#endif
}
// One box of a 5-d tensor map into shared memory, completing on `bar`, with an L2 policy.
// Coordinates outside the tensor read nothing and land as zeros.
__device__ __forceinline__ void tma_load_5d(uint32_t dst, const void* map, int c0, int c1, int c2, int c3, int c4,
                                            uint32_t bar, uint64_t policy) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%2, %3, %4, %5, %6}], [%7], %8;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(bar), "l"(policy)
      : "memory");
#else
  __trap();
#endif
}
// Orders this thread's ordinary shared-memory writes before later copy-engine writes there.
__device__ __forceinline__ void fence_async_shared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls f(Half{}) or f(BFloat16{}) for a 16-bit float dtype.
template <typename F>
void dispatch_half_types(DType dtype, F&& f) {
  if (dtype == DType::kFloat16) f(Half{});
  else f(BFloat16{});
}

}  // namespace flashsdpa::cuda::decode
