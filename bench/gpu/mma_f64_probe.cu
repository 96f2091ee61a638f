// Throughput probe: FP32 FFMA against Hopper's FP64 tensor-core MMA (DMMA), with and without the
// fp32 -> fp64 conversions an exact-fp32 attention tile would need per MMA.
//
//   flashsdpa_mma_f64_probe
//
// Every kernel runs a fixed number of independent chains per warp on operands held in registers,
// over a grid of 132 x k blocks, and prints TFLOP/s (2 per multiply-add) from CUDA events. The
// question it answers: can an exact fp32 tile run its two products on m16n8k16 f64 MMAs (products
// exact, sums in fp64) faster than on FFMA, given that both peak at 128 multiply-adds per clock and
// SM on the H100 and the MMA leaves the issue slots free for the softmax and the loads.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "cuda/mma_f64.cuh"

#define CHECK(x)                                                                     \
  do {                                                                               \
    cudaError_t e = (x);                                                             \
    if (e != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s: %s (line %d)\n", #x, cudaGetErrorString(e), __LINE__); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

constexpr int kIters = 4096;

__global__ void ffma_kernel(float* out, float seed) {
  float a[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) a[i] = seed + threadIdx.x * 1e-3f + i;
  const float b = seed * 0.5f, c = 1.0f - seed;
  for (int it = 0; it < kIters; ++it) {
#pragma unroll
    for (int u = 0; u < 8; ++u)
#pragma unroll
      for (int i = 0; i < 16; ++i) a[i] = fmaf(a[i], b, c);
  }
  float s = 0;
#pragma unroll
  for (int i = 0; i < 16; ++i) s += a[i];
  if (s == 12345.0f) out[threadIdx.x] = s;
}

__device__ __forceinline__ void mma_m8n8k4(double (&d)[2], double a, double b) {
  asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0,%1}, {%2}, {%3}, {%0,%1};\n"
               : "+d"(d[0]), "+d"(d[1])
               : "d"(a), "d"(b));
}

// kChains independent accumulators per warp; kConvert fp32 -> fp64 conversions per MMA (operands
// rebuilt from fp32 registers each time, as a tile reading fp32 from shared memory would).
template <int kChains, int kConvert>
__global__ void dmma16_kernel(double* out, float seed) {
  double acc[kChains][4];
#pragma unroll
  for (int c = 0; c < kChains; ++c)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[c][i] = 0;
  double a[8], b[4];
#pragma unroll
  for (int i = 0; i < 8; ++i) a[i] = seed + i * 1e-3 + threadIdx.x * 1e-6;
#pragma unroll
  for (int i = 0; i < 4; ++i) b[i] = seed - i * 1e-3;
  float f[12];
#pragma unroll
  for (int i = 0; i < 12; ++i) f[i] = seed + i;
  for (int it = 0; it < kIters / 4; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) {
      if (kConvert > 0) {
#pragma unroll
        for (int i = 0; i < kConvert; ++i) {
          if (i < 8) a[i] = static_cast<double>(f[i]);
          else b[i - 8] = static_cast<double>(f[i]);
        }
#pragma unroll
        for (int i = 0; i < 12; ++i) f[i] = __int_as_float(__float_as_int(f[i]) ^ (it & 1));
      }
      flashsdpa::cuda::mma_f64_m16n8k16(acc[c], a, b);
    }
  }
  double s = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c)
#pragma unroll
    for (int i = 0; i < 4; ++i) s += acc[c][i];
  if (s == 12345.0) out[threadIdx.x] = s;
}

template <int kChains>
__global__ void dmma4_kernel(double* out, float seed) {
  double acc[kChains][2];
#pragma unroll
  for (int c = 0; c < kChains; ++c) acc[c][0] = acc[c][1] = 0;
  const double a = seed + threadIdx.x * 1e-6, b = seed * 0.5;
  for (int it = 0; it < kIters; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) mma_m8n8k4(acc[c], a, b);
  }
  double s = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += acc[c][0] + acc[c][1];
  if (s == 12345.0) out[threadIdx.x] = s;
}

template <class Launch>
double time_ms(Launch launch) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  launch();
  CHECK(cudaDeviceSynchronize());
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    CHECK(cudaEventRecord(start));
    launch();
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (ms < best) best = ms;
  }
  CHECK(cudaGetLastError());
  return best;
}

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs\n", prop.name, sms);
  double* dout;
  CHECK(cudaMalloc(&dout, 1024 * sizeof(double)));
  float* fout = reinterpret_cast<float*>(dout);

  for (int warps : {4, 8, 16}) {
    const int blocks = sms * 4, threads = warps * 32;
    double ms = time_ms([&] { ffma_kernel<<<blocks, threads>>>(fout, 0.25f); });
    double flops = 2.0 * blocks * threads * double(kIters) * 8 * 16;
    std::printf("FFMA                 %2d warps/block, %d blocks: %7.1f TFLOP/s (%.3f ms)\n", warps, blocks,
                flops / ms * 1e-9, ms);
  }
  auto report16 = [&](const char* name, int warps, auto kernel, int chains) {
    const int blocks = sms * 4, threads = warps * 32;
    double ms = time_ms([&] { kernel<<<blocks, threads>>>(dout, 0.25f); });
    double flops = 2.0 * blocks * warps * double(kIters / 4) * chains * 16 * 8 * 16;
    std::printf("%-20s %2d warps/block, %d blocks: %7.1f TFLOP/s (%.3f ms)\n", name, warps, blocks,
                flops / ms * 1e-9, ms);
  };
  for (int warps : {4, 8}) {
    report16("DMMA m16n8k16 x2", warps, dmma16_kernel<2, 0>, 2);
    report16("DMMA m16n8k16 x4", warps, dmma16_kernel<4, 0>, 4);
    report16("DMMA16 x4 +4 cvt", warps, dmma16_kernel<4, 4>, 4);
    report16("DMMA16 x4 +6 cvt", warps, dmma16_kernel<4, 6>, 4);
    report16("DMMA16 x4 +12 cvt", warps, dmma16_kernel<4, 12>, 4);
  }
  for (int warps : {8, 16}) {
    const int blocks = sms * 4, threads = warps * 32;
    double ms = time_ms([&] { dmma4_kernel<8><<<blocks, threads>>>(dout, 0.25f); });
    double flops = 2.0 * blocks * warps * double(kIters) * 8 * 8 * 8 * 4;
    std::printf("DMMA m8n8k4 x8       %2d warps/block, %d blocks: %7.1f TFLOP/s (%.3f ms)\n", warps, blocks,
                flops / ms * 1e-9, ms);
  }
  CHECK(cudaFree(dout));
  return 0;
}
