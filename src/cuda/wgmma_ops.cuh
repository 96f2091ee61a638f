// Hopper warpgroup matrix multiply (wgmma, sm_90a only) for the forward tier cuda-wgmma-sm90:
// shared-memory matrix descriptors, the fence / commit / wait discipline, and the instruction
// shapes the kernel issues. Include only from code compiled for sm_90a (forward_wgmma.cuh guards).
//
// Accumulators: a warpgroup's m64nN fp32 tile is held as d[N / 8][4] per thread, which is the
// mma.sync m16n8 C layout per warp (warp w of the group owns rows 16w..16w+15; d[t][0..1] are
// row g = lane / 4, columns 8t + 2 (lane % 4) + 0..1; d[t][2..3] the same columns of row g + 8).
// The A operand in registers is the mma.sync m16n8k16 A fragment of the warp's 16 rows.
#pragma once

#include <cstdint>

#include "cuda/device_utils.cuh"

namespace flashsdpa::cuda::wgmma {

// A shared-memory operand in the 128-byte swizzle layout: 8-row x 128-byte atoms (rows 128 bytes
// apart, 16-byte chunk c of row r stored at chunk c ^ (r % 8)), atoms 1024-byte aligned.
// leading_bytes: K-major operands ignore it (16); N-major ones step by it from one 64-element
// column block to the next. stride_bytes: from one 8-row (K-major) or 8-key (N-major) group to
// the next. Layout type 1 (bits 62-63) is the 128-byte swizzle.
__device__ __forceinline__ uint64_t descriptor(uint32_t smem_address, uint32_t leading_bytes, uint32_t stride_bytes) {
  return uint64_t((smem_address & 0x3FFFF) >> 4) | (uint64_t(leading_bytes >> 4) << 16) |
         (uint64_t(stride_bytes >> 4) << 32) | (uint64_t(1) << 62);
}
// The same descriptor moved by `bytes` (a multiple of 16, inside the 256 KB shared window).
__device__ __forceinline__ uint64_t advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// Orders this thread's earlier register accesses before the next wgmma reads or writes them.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most kPending committed groups are still running.
template <int kPending>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Shared memory written by ordinary stores or cp.async must be made visible to the async proxy
// that wgmma reads through (each writing thread, before the barrier that publishes it).
__device__ __forceinline__ void fence_shared_for_async_proxy() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Keeps the compiler from moving reads or writes of accumulator registers across a wgmma issue
// or wait (the asm statements name only the operands of the instruction itself).
template <int kTiles>
__device__ __forceinline__ void pin(float (&d)[kTiles][4]) {
#pragma unroll
  for (int t = 0; t < kTiles; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[t][e])::"memory");
}

// D = A B (+ D when accumulate != 0): A (64 x k) and B (k x N) both K-major in shared memory
// (k = 16 for fp16/bf16; k = 8 for E = Float32, TF32 operands).
template <int N, class E>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t a, uint64_t b, int accumulate);
// D = A B (+ D when accumulate != 0): A (64 x 16) in registers, B (16 x N) N-major in shared
// memory (imm-trans-b = 1).
template <int N, class E>
__device__ __forceinline__ void wgmma_rs_nmajor(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b,
                                                int accumulate = 1);
// D += A B: A in registers, B K-major in shared memory. With E = Float32 the shapes are k8 and the
// operands TF32 (the tensor cores read the upper 19 bits of each 32-bit element); A's four
// registers hold (row g, k t), (g + 8, t), (g, t + 4), (g + 8, t + 4) of the warp's 16 rows, and
// 32-bit types take K-major operands only.
template <int N, class E>
__device__ __forceinline__ void wgmma_rs_kmajor(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b,
                                                int accumulate = 1);

// The specialisations differ only in N, the element type and the length of the operand lists:
// N / 2 accumulator registers per thread (%0 ..), then A, B and the scale-d predicate's operand.
// The lists are written once here and each instruction shape is one line below.
#define FLASHSDPA_WGMMA_D4(t) "+f"(d[t][0]), "+f"(d[t][1]), "+f"(d[t][2]), "+f"(d[t][3])
#define FLASHSDPA_WGMMA_D8(t)                                                                           \
  FLASHSDPA_WGMMA_D4(t), FLASHSDPA_WGMMA_D4(t + 1), FLASHSDPA_WGMMA_D4(t + 2), FLASHSDPA_WGMMA_D4(t + 3), \
      FLASHSDPA_WGMMA_D4(t + 4), FLASHSDPA_WGMMA_D4(t + 5), FLASHSDPA_WGMMA_D4(t + 6), FLASHSDPA_WGMMA_D4(t + 7)
#define FLASHSDPA_WGMMA_ACC_N32 \
  FLASHSDPA_WGMMA_D4(0), FLASHSDPA_WGMMA_D4(1), FLASHSDPA_WGMMA_D4(2), FLASHSDPA_WGMMA_D4(3)
#define FLASHSDPA_WGMMA_ACC_N64 FLASHSDPA_WGMMA_D8(0)
#define FLASHSDPA_WGMMA_ACC_N128 FLASHSDPA_WGMMA_D8(0), FLASHSDPA_WGMMA_D8(8)
#define FLASHSDPA_WGMMA_ACC_N256 \
  FLASHSDPA_WGMMA_D8(0), FLASHSDPA_WGMMA_D8(8), FLASHSDPA_WGMMA_D8(16), FLASHSDPA_WGMMA_D8(24)
#define FLASHSDPA_WGMMA_REGS_N32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define FLASHSDPA_WGMMA_REGS_N64 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define FLASHSDPA_WGMMA_REGS_N128 FLASHSDPA_WGMMA_REGS_N64 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define FLASHSDPA_WGMMA_REGS_N256 FLASHSDPA_WGMMA_REGS_N128 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

// D = A B (+ D): A and B descriptors at %(N/2) and %(N/2 + 1), accumulate's predicate after them.
// SHAPE is the instruction's k (k16 for 16-bit types, k8 for TF32), TAIL its immediates after the
// predicate: scale-a, scale-b, and for 16-bit types the transpose flags.
#define FLASHSDPA_WGMMA_SS(N, E, SHAPE, PTX_TYPE, A, B, P, TAIL)                                           \
  template <>                                                                                             \
  __device__ __forceinline__ void wgmma_ss<N, E>(float(&d)[N / 8][4], uint64_t a, uint64_t b, int accumulate) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\n"                                            \
                 "wgmma.mma_async.sync.aligned.m64n" #N SHAPE ".f32." PTX_TYPE "." PTX_TYPE                \
                 " {" FLASHSDPA_WGMMA_REGS_N##N "}, " A ", " B ", p, " TAIL ";\n}\n"                        \
                 : FLASHSDPA_WGMMA_ACC_N##N                                                               \
                 : "l"(a), "l"(b), "r"(accumulate));                                                      \
  }

// D = A B (+ D): A's four registers from %(N/2), B's descriptor after them, then accumulate's
// predicate.
#define FLASHSDPA_WGMMA_RS(FN, N, E, SHAPE, PTX_TYPE, A, B, P, TAIL)                                       \
  template <>                                                                                             \
  __device__ __forceinline__ void FN<N, E>(float(&d)[N / 8][4], const uint32_t(&a)[4], uint64_t b, int accumulate) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\n"                                            \
                 "wgmma.mma_async.sync.aligned.m64n" #N SHAPE ".f32." PTX_TYPE "." PTX_TYPE                \
                 " {" FLASHSDPA_WGMMA_REGS_N##N "}, " A ", " B ", p, " TAIL ";\n}\n"                        \
                 : FLASHSDPA_WGMMA_ACC_N##N                                                               \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));                  \
  }

FLASHSDPA_WGMMA_SS(64, Half, "k16", "f16", "%32", "%33", "%34", "1, 1, 0, 0")
FLASHSDPA_WGMMA_SS(64, BFloat16, "k16", "bf16", "%32", "%33", "%34", "1, 1, 0, 0")
FLASHSDPA_WGMMA_SS(128, Half, "k16", "f16", "%64", "%65", "%66", "1, 1, 0, 0")
FLASHSDPA_WGMMA_SS(128, BFloat16, "k16", "bf16", "%64", "%65", "%66", "1, 1, 0, 0")
FLASHSDPA_WGMMA_SS(32, Float32, "k8", "tf32", "%16", "%17", "%18", "1, 1")
FLASHSDPA_WGMMA_SS(64, Float32, "k8", "tf32", "%32", "%33", "%34", "1, 1")
FLASHSDPA_WGMMA_RS(wgmma_rs_nmajor, 64, Half, "k16", "f16", "{%32, %33, %34, %35}", "%36", "%37", "1, 1, 1")
FLASHSDPA_WGMMA_RS(wgmma_rs_nmajor, 64, BFloat16, "k16", "bf16", "{%32, %33, %34, %35}", "%36", "%37", "1, 1, 1")
FLASHSDPA_WGMMA_RS(wgmma_rs_nmajor, 128, Half, "k16", "f16", "{%64, %65, %66, %67}", "%68", "%69", "1, 1, 1")
FLASHSDPA_WGMMA_RS(wgmma_rs_nmajor, 128, BFloat16, "k16", "bf16", "{%64, %65, %66, %67}", "%68", "%69", "1, 1, 1")
FLASHSDPA_WGMMA_RS(wgmma_rs_nmajor, 256, Half, "k16", "f16", "{%128, %129, %130, %131}", "%132", "%133", "1, 1, 1")
FLASHSDPA_WGMMA_RS(wgmma_rs_nmajor, 256, BFloat16, "k16", "bf16", "{%128, %129, %130, %131}", "%132", "%133", "1, 1, 1")
FLASHSDPA_WGMMA_RS(wgmma_rs_kmajor, 64, Float32, "k8", "tf32", "{%32, %33, %34, %35}", "%36", "%37", "1, 1")
FLASHSDPA_WGMMA_RS(wgmma_rs_kmajor, 128, Float32, "k8", "tf32", "{%64, %65, %66, %67}", "%68", "%69", "1, 1")

#undef FLASHSDPA_WGMMA_RS
#undef FLASHSDPA_WGMMA_SS
#undef FLASHSDPA_WGMMA_REGS_N256
#undef FLASHSDPA_WGMMA_REGS_N128
#undef FLASHSDPA_WGMMA_REGS_N64
#undef FLASHSDPA_WGMMA_REGS_N32
#undef FLASHSDPA_WGMMA_ACC_N256
#undef FLASHSDPA_WGMMA_ACC_N128
#undef FLASHSDPA_WGMMA_ACC_N64
#undef FLASHSDPA_WGMMA_ACC_N32
#undef FLASHSDPA_WGMMA_D8
#undef FLASHSDPA_WGMMA_D4

}  // namespace flashsdpa::cuda::wgmma
