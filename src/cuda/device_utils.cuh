// Small device-side building blocks of the CUDA kernels: asynchronous copies (cp.async, and the
// copy engine's tensor copies with their mbarriers), ldmatrix, mma.sync, fast exp2 and the element
// types. Only CUDA headers from the toolkit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "flashsdpa/flashsdpa.h"

namespace flashsdpa::cuda {

// Throws RuntimeError with the failing call and CUDA's message.
inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw RuntimeError(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
  }
}

// A kernel's shared memory was granted (cudaFuncSetAttribute's result), or a clear refusal: some
// tile shapes need more shared memory per block than smaller GPUs have (sm_86 / sm_89: 99 KB).
inline void require_shared_memory(cudaError_t configured, int bytes, const char* kernel) {
  if (configured == cudaSuccess) return;
  int device = 0, optin = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaGetLastError();
  throw Error(std::string(kernel) + " needs " + std::to_string(bytes / 1024) +
                  " KB of shared memory per block for this head dim; this device allows " +
                  std::to_string(optin / 1024) + " KB (" + cudaGetErrorString(configured) + ")",
              ErrorKind::kNotSupported);
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- element types ------------------------------------------------------------------------------

// Each element type names its storage (Bits), the exponent field of one element
// (kElementExponent: all ones = Inf or NaN) and of a 32-bit word of elements (kExponentBits).
struct Half {
  using T = __half;
  using T2 = __half2;
  using Bits = uint16_t;
  static constexpr uint16_t kElementExponent = 0x7c00u;
  static constexpr uint32_t kExponentBits = 0x7c007c00u;  // of the two elements of a 32-bit word
  static __device__ __forceinline__ float to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

struct BFloat16 {
  using T = __nv_bfloat16;
  using T2 = __nv_bfloat162;
  using Bits = uint16_t;
  static constexpr uint16_t kElementExponent = 0x7f80u;
  static constexpr uint32_t kExponentBits = 0x7f807f80u;
  static __device__ __forceinline__ float to_float(uint16_t bits) { return __uint_as_float(uint32_t(bits) << 16); }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

// fp32 operands; on the tensor cores (cuda-3xtf32-sm90) they run as pairs of TF32 parts.
struct Float32 {
  using T = float;
  using Bits = uint32_t;
  static constexpr uint32_t kElementExponent = 0x7f800000u;
  static constexpr uint32_t kExponentBits = 0x7f800000u;
  static __device__ __forceinline__ float to_float(uint32_t bits) { return __uint_as_float(bits); }
};

// ---- programmatic dependent launch ---------------------------------------------------------------

// sm_90: a kernel launched with programmatic stream serialization (cudaLaunchKernelEx) may start
// once every block of the kernel before it has called allow_dependent_launch (or exited), and
// wait_for_primary_grid waits until that kernel has completed and its writes are visible. Elsewhere
// both are no-ops and launches serialise as usual.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_primary_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Launches `kernel` with programmatic stream serialization (see above).
template <class Args>
inline cudaError_t launch_programmatic(void (*kernel)(Args), dim3 grid, int threads, size_t smem, cudaStream_t stream,
                                       const Args& args) {
  cudaLaunchAttribute overlap[1];
  overlap[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = overlap;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, args);
}

// ---- shared memory and asynchronous copies ------------------------------------------------------

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1. src_bytes < 16 zero-fills the rest; 0 reads
// nothing at all (the source address is not dereferenced), which is how masked or out-of-range
// rows become zeros without touching memory.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// ---- the tensor copy engine (sm_90) ----------------------------------------------------------------
// Tiles filled by cp.async.bulk.tensor (TMA) complete on an mbarrier in shared memory: the
// issuing thread's arrival with the bytes to expect, then the copies' bytes. Off sm_90 these trap:
// the host picks such kernels only where their code was built for sm_90 (built_for_tma).

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

// ---- tensor cores -------------------------------------------------------------------------------

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D = A * B + D for one m16n8k16 tile, fp32 accumulators. Not volatile: a pure register
// operation, so the compiler may interleave it with the ldmatrix and softmax instructions around it.
template <class E>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<Half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<BFloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                    uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- timing ---------------------------------------------------------------------------------------

// The GPU's global timer in ns, for the benchmarks' timelines (decode --trace, fp32 --trace).
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// ---- math -----------------------------------------------------------------------------------------

// 2^x with the hardware approximation (about 2 ulp); exp2(-inf) = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---- non-finite values in boundary tiles ------------------------------------------------------
// A key that some rows of a computed tile mask gets probability 0 in those rows, and 0 x NaN or
// 0 x Inf is NaN in a product over the whole tile: a non-finite value row would reach rows that
// must not see it (SPEC §2). The forward tiers therefore check the value tile of each tile the
// mask cuts (one block-wide vote), and only when it holds an Inf or NaN take a correction path:
// the tensor-core tiers zero those elements in shared memory before the product and add them
// after the key loop to the rows that allow their key (mma_detail::add_nonfinite_values); the
// fp32 tier skips the FMAs of masked (row, key) pairs of that tile. Tiles that no row masks in
// part need neither: every row they reach allows all their keys.

constexpr uint32_t kFloatExponentBits = 0x7f800000u;

// Bits of the elements of a 32-bit word whose exponent field is all ones (Inf or NaN);
// kExponent holds the exponent field of each element (Half/BFloat16::kExponentBits, kFloatExponentBits).
template <uint32_t kExponent>
__device__ __forceinline__ uint32_t nonfinite_bits(uint32_t w) {
  constexpr uint32_t lo = kExponent & 0xffffu, hi = kExponent & 0xffff0000u;
  if constexpr (lo == 0) return (w & hi) == hi ? 0xffffffffu : 0u;  // one fp32 element
  return ((w & lo) == lo ? 0x0000ffffu : 0u) | ((w & hi) == hi ? 0xffff0000u : 0u);
}

// The word with its non-finite elements replaced by zeros.
template <uint32_t kExponent>
__device__ __forceinline__ uint32_t zero_nonfinite(uint32_t w) {
  return w & ~nonfinite_bits<kExponent>(w);
}

// Bits of the non-finite elements of this thread's share of a shared-memory tile of `bytes`
// bytes (a multiple of 16, every byte written): chunks first, first + step, ...
template <uint32_t kExponent>
__device__ __forceinline__ uint32_t tile_nonfinite_bits(const unsigned char* tile, int bytes, int first, int step) {
  uint32_t found = 0;
  for (int c = first; c < bytes / 16; c += step) {
    const uint4 v = *reinterpret_cast<const uint4*>(tile + 16 * c);
    found |= nonfinite_bits<kExponent>(v.x) | nonfinite_bits<kExponent>(v.y) | nonfinite_bits<kExponent>(v.z) |
             nonfinite_bits<kExponent>(v.w);
  }
  return found;
}

// True in every thread when any element of the tile is Inf or NaN, the block's threads reading
// it together. A barrier: every thread of the block must call it.
template <uint32_t kExponent, int kThreads>
__device__ __forceinline__ bool block_tile_has_nonfinite(const unsigned char* tile, int bytes) {
  return __syncthreads_or(tile_nonfinite_bits<kExponent>(tile, bytes, threadIdx.x, kThreads) != 0) != 0;
}

// Zeroes the non-finite elements of a shared-memory tile, the block's threads together.
template <uint32_t kExponent, int kThreads>
__device__ __forceinline__ void block_zero_nonfinite(unsigned char* tile, int bytes) {
  for (int c = threadIdx.x; c < bytes / 16; c += kThreads) {
    uint4* chunk = reinterpret_cast<uint4*>(tile + 16 * c);
    uint4 v = *chunk;
    v.x = zero_nonfinite<kExponent>(v.x);
    v.y = zero_nonfinite<kExponent>(v.y);
    v.z = zero_nonfinite<kExponent>(v.z);
    v.w = zero_nonfinite<kExponent>(v.w);
    *chunk = v;
  }
}

}  // namespace flashsdpa::cuda
