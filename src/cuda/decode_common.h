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

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls f(Half{}) or f(BFloat16{}) for a 16-bit float dtype.
template <typename F>
void dispatch_half_types(DType dtype, F&& f) {
  if (dtype == DType::kFloat16) f(Half{});
  else f(BFloat16{});
}

}  // namespace flashsdpa::cuda::decode
