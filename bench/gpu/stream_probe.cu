// Decode's memory pattern without the attention: CTAs that each stream one (kv head, key range) of a
// [S, Hkv, D] bf16 K and V cache, by three copy mechanisms, timed and traced. It answers, before
// the decode kernel's loads are rewritten, whether a different mechanism streams faster per CTA
// than the 16-byte cp.async the kernel uses (docs/perf-log.md, "CUDA decode": at batch 1 x 32k
// keys the loop ends 40-53 us after launch across CTAs, ~2.4 TB/s, against 2.95 TB/s for long
// streams), and whether the spread between CTAs belongs to the memory system or to the kernel.
//
//   flashsdpa_stream_probe [--keys S] [--splits a,b,c] [--only MECHANISM:STAGES]
//
// --only runs one (mechanism, stages) pair, so that each can run in its own process (a kernel fault
// ends the process's CUDA context and every measurement after it).
//
// Mechanisms (each CTA reads keys [split * S / splits, ...) of one head of K and of V, 16-key
// chunks of 4 KB per operand, and folds one word per 16 bytes into a checksum so nothing is
// skipped):
//   cp.async      4 warps, each its own ring of 16-byte cp.async.cg copies with an evict-first L2
//                 policy and 256-byte L2 prefetch (the decode kernel's copy), 2 or 4 chunks ahead
//   bulk          one thread issues cp.async.bulk (1-D, 256 bytes per key row) into a ring of
//                 stages completed by mbarriers
//   tensor        one thread issues one 2-D cp.async.bulk.tensor per chunk and operand (a tensor
//                 map over the cache as [S, Hkv x D]; box 16 keys x 128 dims)
// Prints one JSON line per (mechanism, stages, splits): us per call (median of 20, CUDA events),
// GB/s of K+V bytes, the first chunk's arrival after its CTA's start (p50) and the CTAs' end times
// after the first start (p10 / p50 / max, globaltimer). On the H100 the 4-stage cp.async ring
// stops with an illegal instruction in warps 1-3 (compute-sanitizer: cp_async_kernel<4> + 0x620;
// not understood yet), so the default list runs it last and each pair is best run with --only.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace {

constexpr int kHeads = 8;
constexpr int kDim = 128;
constexpr int kRowBytes = kDim * 2;               // one key of one head, bf16
constexpr int kKeyStride = kHeads * kRowBytes;    // bytes from one key to the next
constexpr int kChunkKeys = 16;
constexpr int kChunkBytes = kChunkKeys * kRowBytes;  // 4 KB per operand
constexpr int kThreads = 128;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

struct Job {
  const unsigned char* k;
  const unsigned char* v;
  int keys_per_cta;
  int splits;
  unsigned long long* stamps;  // per CTA: start, first chunk in shared memory, end
  unsigned* checksum;
};

__device__ __forceinline__ unsigned long long now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void finish(const Job& job, unsigned acc, unsigned long long start,
                                       unsigned long long first) {
  __syncthreads();
  if (threadIdx.x == 0) {
    job.stamps[3 * blockIdx.x] = start;
    job.stamps[3 * blockIdx.x + 1] = first;
    job.stamps[3 * blockIdx.x + 2] = now();
  }
  if (acc == 0x12345678u) atomicAdd(job.checksum, 1u);  // keeps the reads alive
}

// ---- 16-byte cp.async, one ring per warp (the decode kernel's copy) ------------------------------

template <int kStages>
__global__ void __launch_bounds__(kThreads) cp_async_kernel(Job job) {
  extern __shared__ __align__(128) unsigned char smem[];
  const unsigned long long start = now();
  const int head = blockIdx.x / job.splits, split = blockIdx.x % job.splits;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks = job.keys_per_cta / kChunkKeys;
  unsigned char* ring = smem + warp * kStages * 2 * kChunkBytes;
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  auto issue = [&](int c) {  // chunk c of this CTA into stage c / 4 % kStages; a commit group per call
    if (c < chunks) {
      const int64_t key0 = int64_t(split) * job.keys_per_cta + int64_t(c) * kChunkKeys;
      unsigned char* stage = ring + ((c / 4) % kStages) * 2 * kChunkBytes;
#pragma unroll
      for (int op = 0; op < 2; ++op) {
        const unsigned char* base = (op == 0 ? job.k : job.v) + key0 * kKeyStride + head * kRowBytes;
#pragma unroll
        for (int i = 0; i < kChunkKeys / 2; ++i) {  // 2 keys x 16 lanes x 16 bytes per instruction
          const int key = 2 * i + lane / 16;
          const uint32_t dst = smem_address(stage + op * kChunkBytes + key * kRowBytes + (lane % 16) * 16);
          asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst),
                       "l"(base + int64_t(key) * kKeyStride + (lane % 16) * 16), "l"(policy));
        }
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  unsigned acc = 0;
  unsigned long long first = 0;
  // Warp w takes chunks w, w + 4, ...: the CTA's four warps read neighbouring chunks.
  for (int s = 0; s < kStages - 1; ++s) issue(warp + 4 * s);
  for (int c = warp; c < chunks; c += 4) {
    issue(c + 4 * (kStages - 1));
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 1));
    __syncwarp();
    if (c == 0) first = now();
    const unsigned char* stage = ring + ((c / 4) % kStages) * 2 * kChunkBytes;
    for (int o = lane * 16; o < 2 * kChunkBytes; o += 32 * 16) acc ^= *reinterpret_cast<const unsigned*>(stage + o);
    __syncwarp();
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
  finish(job, acc, start, first);
}

// ---- mbarrier helpers for the bulk copies -------------------------------------------------------

__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_expect(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
}

// ---- producer-thread rings: 1-D bulk copies or 2-D tensor copies ----------------------------------

template <int kStages, bool kTensor>
__global__ void __launch_bounds__(kThreads) bulk_kernel(Job job, const __grid_constant__ CUtensorMap k_map,
                                                        const __grid_constant__ CUtensorMap v_map) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) uint64_t full[kStages];
  const unsigned long long start = now();
  const int head = blockIdx.x / job.splits, split = blockIdx.x % job.splits;
  const int chunks = job.keys_per_cta / kChunkKeys;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) mbar_init(&full[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  auto issue = [&](int c) {  // thread 0 only
    if (c >= chunks) return;
    const int s = c % kStages;
    const int64_t key0 = int64_t(split) * job.keys_per_cta + int64_t(c) * kChunkKeys;
    unsigned char* stage = smem + s * 2 * kChunkBytes;
    mbar_expect(&full[s], 2 * kChunkBytes);
    if constexpr (kTensor) {
      const int x = head * kDim, y = static_cast<int>(key0);
      asm volatile(
          "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
              smem_address(stage)),
          "l"(&k_map), "r"(x), "r"(y), "r"(smem_address(&full[s]))
          : "memory");
      asm volatile(
          "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
              smem_address(stage + kChunkBytes)),
          "l"(&v_map), "r"(x), "r"(y), "r"(smem_address(&full[s]))
          : "memory");
    } else {
      for (int op = 0; op < 2; ++op) {
        const unsigned char* base = (op == 0 ? job.k : job.v) + key0 * kKeyStride + head * kRowBytes;
        for (int key = 0; key < kChunkKeys; ++key)
          asm volatile(
              "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                  smem_address(stage + op * kChunkBytes + key * kRowBytes)),
              "l"(base + int64_t(key) * kKeyStride), "r"(kRowBytes), "r"(smem_address(&full[s]))
              : "memory");
      }
    }
  };
  if (threadIdx.x == 0)
    for (int c = 0; c < kStages; ++c) issue(c);
  unsigned acc = 0;
  unsigned long long first = 0;
  for (int c = 0; c < chunks; ++c) {
    const int s = c % kStages;
    mbar_wait(&full[s], (c / kStages) & 1);
    if (c == 0) first = now();
    const unsigned char* stage = smem + s * 2 * kChunkBytes;
    for (int o = threadIdx.x * 16; o < 2 * kChunkBytes; o += kThreads * 16)
      acc ^= *reinterpret_cast<const unsigned*>(stage + o);
    __syncthreads();  // the stage is free again
    if (threadIdx.x == 0) issue(c + kStages);
  }
  finish(job, acc, start, first);
}

CUtensorMap make_map(PFN_cuTensorMapEncodeTiled_v12000 encode, const void* base, int64_t keys) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {cuuint64_t(kHeads * kDim), cuuint64_t(keys)};
  const cuuint64_t strides[1] = {cuuint64_t(kKeyStride)};
  const cuuint32_t box[2] = {kDim, kChunkKeys};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
                            element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::fprintf(stderr, "cuTensorMapEncodeTiled failed (%d)\n", int(r));
    std::exit(1);
  }
  return map;
}

struct Result {
  double us, gbps, first_p50, end_p10, end_p50, end_max;
};

template <class Launch>
Result time_it(Launch launch, const Job& job, int ctas, double bytes) {
  for (int w = 0; w < 3; ++w) launch();
  check(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> ms;
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  for (int it = 0; it < 20; ++it) {
    check(cudaEventRecord(a), "record");
    launch();
    check(cudaEventRecord(b), "record");
    check(cudaEventSynchronize(b), "sync");
    float t = 0;
    check(cudaEventElapsedTime(&t, a, b), "elapsed");
    ms.push_back(t);
  }
  check(cudaGetLastError(), "launch");
  std::sort(ms.begin(), ms.end());
  std::vector<unsigned long long> stamps(3 * size_t(ctas));
  check(cudaMemcpy(stamps.data(), job.stamps, stamps.size() * 8, cudaMemcpyDeviceToHost), "stamps");
  unsigned long long first = ~0ull;
  for (int i = 0; i < ctas; ++i) first = std::min(first, stamps[3 * i]);
  std::vector<double> ends, firsts;  // after the first CTA's start; first chunk after the CTA's own start
  for (int i = 0; i < ctas; ++i) {
    ends.push_back((stamps[3 * i + 2] - first) * 1e-3);
    firsts.push_back((stamps[3 * i + 1] - stamps[3 * i]) * 1e-3);
  }
  std::sort(ends.begin(), ends.end());
  std::sort(firsts.begin(), firsts.end());
  const double us = ms[ms.size() / 2] * 1e3;
  return {us, bytes / (us * 1e-6) / 1e9, firsts[firsts.size() / 2], ends[ends.size() / 10], ends[ends.size() / 2],
          ends.back()};
}

}  // namespace

int main(int argc, char** argv) {
  int64_t keys = 32768;
  std::vector<int> splits_list = {16, 32, 64};
  std::string only;
  for (int n = 1; n < argc; ++n) {
    if (!std::strcmp(argv[n], "--only") && n + 1 < argc) only = argv[++n];
    if (!std::strcmp(argv[n], "--keys") && n + 1 < argc) keys = std::atoll(argv[++n]);
    if (!std::strcmp(argv[n], "--splits") && n + 1 < argc) {
      splits_list.clear();
      for (char* t = std::strtok(argv[++n], ","); t; t = std::strtok(nullptr, ",")) splits_list.push_back(std::atoi(t));
    }
  }
  const size_t operand_bytes = size_t(keys) * kKeyStride;
  unsigned char *k = nullptr, *v = nullptr, *copy_dst = nullptr;
  check(cudaMalloc(&k, operand_bytes), "malloc k");
  check(cudaMalloc(&v, operand_bytes), "malloc v");
  check(cudaMemset(k, 1, operand_bytes), "memset");
  check(cudaMemset(v, 2, operand_bytes), "memset");
  unsigned long long* stamps = nullptr;
  unsigned* checksum = nullptr;
  check(cudaMalloc(&stamps, 3 * 8 * 4096), "malloc stamps");
  check(cudaMalloc(&checksum, 4), "malloc checksum");

  // The copy bar: a large device-to-device copy (read + write bytes per second).
  const size_t copy_bytes = size_t(1) << 30;
  check(cudaMalloc(&copy_dst, 2 * copy_bytes), "malloc copy");
  {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    std::vector<float> ms;
    for (int it = 0; it < 10; ++it) {
      cudaEventRecord(a);
      cudaMemcpyAsync(copy_dst, copy_dst + copy_bytes, copy_bytes, cudaMemcpyDeviceToDevice);
      cudaEventRecord(b);
      cudaEventSynchronize(b);
      float t = 0;
      cudaEventElapsedTime(&t, a, b);
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    std::printf("{\"mechanism\": \"copy\", \"gbps\": %.0f}\n", 2.0 * copy_bytes / (ms[5] * 1e-3) / 1e9);
  }

  void* encode_fn = nullptr;
  cudaDriverEntryPointQueryResult status;
  check(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &encode_fn, 12000, cudaEnableDefault, &status),
        "cuTensorMapEncodeTiled entry point");
  auto encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(encode_fn);
  const CUtensorMap k_map = make_map(encode, k, keys), v_map = make_map(encode, v, keys);

  const double bytes = 2.0 * double(operand_bytes);  // K and V, every head
  auto report = [&](const char* mechanism, int stages, int splits, int smem, const Result& r) {
    std::printf(
        "{\"mechanism\": \"%s\", \"stages\": %d, \"keys\": %lld, \"splits\": %d, \"ctas\": %d, \"smem_kb\": %d, "
        "\"us\": %.1f, \"gbps\": %.0f, \"first_chunk_us_p50\": %.1f, \"end_us_p10\": %.1f, \"end_us_p50\": %.1f, "
        "\"end_us_max\": %.1f}\n",
        mechanism, stages, static_cast<long long>(keys), splits, kHeads * splits, smem / 1024, r.us, r.gbps,
        r.first_p50, r.end_p10, r.end_p50, r.end_max);
    std::fflush(stdout);
  };
  auto wanted = [&](const char* mechanism, int stages) {
    return only.empty() || only == std::string(mechanism) + ":" + std::to_string(stages);
  };
  // Runs `kernel` (a cp.async ring or a producer-thread ring) once per split count.
  auto measure = [&](const char* mechanism, int stages, int smem, auto kernel) {
    if (!wanted(mechanism, stages)) return;
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "smem attribute");
    for (int splits : splits_list) {
      if (keys % (int64_t(splits) * kChunkKeys * 4) != 0 || kHeads * splits > 4096) continue;
      const Job job{k, v, static_cast<int>(keys / splits), splits, stamps, checksum};
      const int ctas = kHeads * splits;
      auto launch = [&] {
        if constexpr (std::is_same_v<decltype(kernel), void (*)(Job)>) {
          kernel<<<ctas, kThreads, smem>>>(job);
        } else {
          kernel<<<ctas, kThreads, smem>>>(job, k_map, v_map);
        }
      };
      report(mechanism, stages, splits, smem, time_it(launch, job, ctas, bytes));
    }
  };
  measure("cp.async", 2, 4 * 2 * 2 * kChunkBytes, cp_async_kernel<2>);
  measure("bulk", 8, 8 * 2 * kChunkBytes, bulk_kernel<8, false>);
  measure("bulk", 16, 16 * 2 * kChunkBytes, bulk_kernel<16, false>);
  measure("tensor", 8, 8 * 2 * kChunkBytes, bulk_kernel<8, true>);
  measure("tensor", 16, 16 * 2 * kChunkBytes, bulk_kernel<16, true>);
  measure("cp.async", 4, 4 * 4 * 2 * kChunkBytes, cp_async_kernel<4>);  // last: it faults (top of the file)
  return 0;
}
