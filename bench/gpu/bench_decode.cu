// Decode benchmark of cuda-decode: bytes of K and V read per second by attention_kvcache over a
// full cache (no append), dense or paged, timed with CUDA events (median over repetitions of a
// loop of calls on one stream), eagerly and replayed from a CUDA graph of 10 calls. One JSON
// object per line on stdout; bench_decode.py merges them with torch's backends on identically
// shaped inputs.
//
//   flashsdpa_decode_bench B,S,HQ,HKV,HD,LAYOUT,PAGE [...]   LAYOUT dense|paged, PAGE 0 for dense
//   flashsdpa_decode_bench --copy                           device-to-device copy bandwidth
// Options: --splits N forces num_splits (default 0: the heuristic); --trace prints a timeline
// summary of one call per shape (cuda::DecodeDebug: when CTAs start, get their first chunk, end;
// prologue_cycles: warp 0's prologue steps in SM cycles, decode_tier.h), alone and in the steady
// state of a CUDA graph (trace_steady);
// --variant NAME runs a kernel variant under measurement (cuda::decode_variant_name: auto, the
// shipped choice and default, pair and wide); --page-order sequential|random hands paged caches their
// blocks in order, in a random permutation (the default), or permuted within each group of 64
// blocks (local: the same page-sized jumps, a small address range at a time); --floor also times,
// per shape, what any kernel reading the same bytes needs (below); --floor-blocks times the same
// bytes read in whole blocks of K rows then V rows, as cuDNN's kernel steps (block_floor_kernel,
// dense caches); --scratch arena|pool says where split-KV partials come from (arena_allocator);
// --lengths tensor|int gives the cache lengths as an int32 tensor on the device (the default) or as
// one int for every sequence; --fp32 decode|fp32 runs fp32 caches on cuda-decode's fp32 kernel or on
// cuda-fp32 (the exact fp32 forward over the cache). Options apply to the shapes after them.
//
// The floor of a shape (--floor), in the same CUDA-graph timing: a plain streaming read of the same
// K and V bytes (16-byte evict-first loads, several grid sizes, the fastest kept) and a
// device-to-device copy moving the same bytes (half read, half written). Small calls pay a fixed
// cost (launch, the first loads' latency, the tail) that a bandwidth bar set by a 2 GiB copy does
// not see; the floor says how much of a shape's gap to that bar any kernel would pay.
//
// The tier is called below the public API (core::prepare_kvcache + cuda::kvcache), validated
// once per shape: what is timed is the launch sequence of a decode step (attention kernel, and
// the combine when the heuristic splits the keys). Paged caches hand out blocks in a random
// permutation, as a serving engine's allocator does after a while.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/select.h"
#include "core/validate.h"
#include "cuda/cuda_backend.h"
#include "cuda/decode_tier.h"
#include "cuda/device_utils.cuh"
#include "flashsdpa/flashsdpa.h"

namespace {

using flashsdpa::DType;
using flashsdpa::TensorRef;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

// Uniform values in [-1, 1) from a hash of the index: never zeros, never the same pattern twice.
__global__ void fill_kernel(__nv_bfloat16* data, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed * 40503u ^ static_cast<uint32_t>(i >> 32);
    x ^= x >> 16;
    x *= 0x45d9f3bu;
    x ^= x >> 16;
    data[i] = __float2bfloat16(static_cast<float>(x) * (2.0f / 4294967296.0f) - 1.0f);
  }
}

// A streaming read of two arrays of 16-byte words (K and V), folded into one word so that nothing
// is skipped; `sink` is written only on an impossible value. Each thread keeps kFloorLoads loads of each
// array in flight.
constexpr int kFloorLoads = 4;
__global__ void read_floor_kernel(const uint4* k, const uint4* v, size_t words, unsigned* sink) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  unsigned acc = 0;
  for (; i + (kFloorLoads - 1) * stride < words; i += kFloorLoads * stride) {
    uint4 a[kFloorLoads], b[kFloorLoads];
#pragma unroll
    for (int n = 0; n < kFloorLoads; ++n) a[n] = __ldcs(k + i + n * stride), b[n] = __ldcs(v + i + n * stride);
#pragma unroll
    for (int n = 0; n < kFloorLoads; ++n) acc ^= a[n].x ^ a[n].w ^ b[n].y ^ b[n].z;
  }
  for (; i < words; i += stride) {
    const uint4 a = __ldcs(k + i), b = __ldcs(v + i);
    acc ^= a.x ^ a.w ^ b.y ^ b.z;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// The streaming read of a cache in decode's order: CTA (sequence b, kv head h, split y) reads head
// h's 16-byte pieces of keys [y * S / splits, (y + 1) * S / splits) of sequence b, as the decode
// kernel's CTAs do (each key row of a K or V array holds every head: a head's pieces are hd * 2
// bytes out of every Hkv * hd * 2). Paged caches (table != nullptr): key j of sequence b is row
// j % page of block table[b * blocks_per_seq + j / page], the benchmark's page placement, so the
// floor pays what the placement costs and nothing of the kernel's paging code. kLoads rows of K
// and of V in flight per thread.
template <int kLoads>
__global__ void head_floor_kernel(const uint4* k, const uint4* v, int64_t seqlen, int hkv, int pieces, int splits,
                                  const int32_t* table, int page, int64_t blocks_per_seq, unsigned* sink) {
  const int y = static_cast<int>(blockIdx.x % splits);
  const int64_t bh = blockIdx.x / splits, h = bh % hkv, b = bh / hkv;
  const int64_t begin = seqlen * y / splits, end = seqlen * (y + 1) / splits;
  const int rows_per_step = blockDim.x / pieces, piece = threadIdx.x % pieces;
  unsigned acc = 0;
  for (int64_t j = begin + threadIdx.x / pieces; j < end; j += int64_t(rows_per_step) * kLoads) {
    uint4 a[kLoads], c[kLoads];
#pragma unroll
    for (int n = 0; n < kLoads; ++n) {
      const int64_t key = min(j + int64_t(n) * rows_per_step, end - 1);  // clamped: re-reads the last row
      const int64_t row = table == nullptr ? b * seqlen + key
                                           : int64_t(table[b * blocks_per_seq + key / page]) * page + key % page;
      const int64_t word = (row * hkv + h) * pieces + piece;
      a[n] = __ldcs(k + word), c[n] = __ldcs(v + word);
    }
#pragma unroll
    for (int n = 0; n < kLoads; ++n) acc ^= a[n].x ^ a[n].w ^ c[n].y ^ c[n].z;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// The same bytes read in steps of whole blocks, as cuDNN's decode kernel moves them (docs/perf-log.md,
// CUDA decode, run 23): CTA (sequence b, kv head h) copies kBlockRows key rows of K, then the same
// rows of V, into shared memory by cp.async (16 bytes each, every thread's share of a block issued
// together), kStages blocks deep, the CTA stepping from block to block together; nothing is
// computed. Dense caches only (--floor-blocks).
template <int kBlockRows, int kStages>
__global__ void block_floor_kernel(const uint4* k, const uint4* v, int64_t seqlen, int hkv, int pieces,
                                   unsigned* sink) {
  extern __shared__ uint4 stages[];  // kStages x {K, V} x kBlockRows x pieces
  const int64_t h = blockIdx.x % hkv, b = blockIdx.x / hkv;
  const int blocks = static_cast<int>((seqlen + kBlockRows - 1) / kBlockRows);
  const int per_operand = kBlockRows * pieces;
  // Thread t copies piece t % pieces of rows t / pieces, + rows_per_pass, ... of each block: its
  // addresses are a base and a row step worked out once (as a production kernel's would be).
  const int rows_per_pass = blockDim.x / pieces, my_row = threadIdx.x / pieces;
  const int64_t row_words = int64_t(hkv) * pieces;
  const uint4* k_base = k + (b * seqlen * hkv + h) * pieces + threadIdx.x % pieces;
  const uint4* v_base = v + (b * seqlen * hkv + h) * pieces + threadIdx.x % pieces;
  auto issue = [&](int j) {
    uint4* dst = stages + size_t(j % kStages) * 2 * per_operand + threadIdx.x;
    const int64_t key0 = int64_t(j) * kBlockRows + my_row;
    // The block's K rows, then its V rows; keys past the end clamped (the last row read again).
    for (int r = 0; r < kBlockRows; r += rows_per_pass)
      flashsdpa::cuda::cp_async_16(flashsdpa::cuda::smem_address(dst + r * pieces),
                                   k_base + min(key0 + r, seqlen - 1) * row_words, 16);
    for (int r = 0; r < kBlockRows; r += rows_per_pass)
      flashsdpa::cuda::cp_async_16(flashsdpa::cuda::smem_address(dst + per_operand + r * pieces),
                                   v_base + min(key0 + r, seqlen - 1) * row_words, 16);
  };
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < blocks) issue(j);
    flashsdpa::cuda::cp_async_commit();
  }
  unsigned acc = 0;
  for (int j = 0; j < blocks; ++j) {
    if (j + kStages - 1 < blocks) issue(j + kStages - 1);
    flashsdpa::cuda::cp_async_commit();
    flashsdpa::cuda::cp_async_wait<kStages - 1>();
    __syncthreads();
    acc ^= stages[size_t(j % kStages) * 2 * per_operand + threadIdx.x].x;
    __syncthreads();  // the stage is refilled by the next step's copies
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : bytes(n) { check(cudaMalloc(&ptr, std::max<size_t>(n, 16)), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

void fill(DeviceBuffer& buffer, uint32_t seed) {
  fill_kernel<<<1024, 256>>>(static_cast<__nv_bfloat16*>(buffer.ptr), buffer.bytes / 2, seed);
  check(cudaGetLastError(), "fill_kernel");
}

// fp32 buffers (--fp32): each float the widened bf16 of fill's sequence, so values stay in [-1, 1).
__global__ void widen_kernel(float* data, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    data[i] = __uint_as_float(uint32_t(reinterpret_cast<const uint16_t*>(data)[2 * i + 1]) << 16);
}
void fill_elements(DeviceBuffer& buffer, uint32_t seed, bool fp32) {
  fill(buffer, seed);
  if (!fp32) return;
  widen_kernel<<<1024, 256>>>(static_cast<float*>(buffer.ptr), buffer.bytes / 4);
  check(cudaGetLastError(), "widen_kernel");
}

// Median of `reps` timings of a loop of `iters` calls, per call, in microseconds.
template <typename F>
double time_us(F&& call, cudaStream_t stream, int reps = 15) {
  for (int n = 0; n < 3; ++n) call();
  check(cudaStreamSynchronize(stream), "warm-up");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  auto loop = [&](int iters) {
    check(cudaEventRecord(start, stream), "cudaEventRecord");
    for (int n = 0; n < iters; ++n) call();
    check(cudaEventRecord(stop, stream), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    return 1000.0 * ms / iters;
  };
  const double once = loop(1);
  const int iters = static_cast<int>(std::clamp(2000.0 / std::max(once, 1.0), 3.0, 50.0));  // ~2 ms per loop
  std::vector<double> samples;
  for (int r = 0; r < reps; ++r) samples.push_back(loop(iters));
  std::sort(samples.begin(), samples.end());
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return samples[samples.size() / 2];
}

// The same per-call time with `calls` calls captured into one CUDA graph and the graph replayed:
// launch gaps and host work leave the measurement, as in a serving engine that replays decode
// steps from graphs. Returns a negative value when the calls cannot be captured.
template <typename F>
double time_graph_us(F&& call, cudaStream_t stream, int calls) {
  for (int n = 0; n < 3; ++n) call();
  check(cudaStreamSynchronize(stream), "warm-up");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return -1.0;
  bool captured = true;
  try {
    for (int n = 0; n < calls; ++n) call();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "graph capture: %s\n", e.what());
    captured = false;
  }
  captured = cudaStreamEndCapture(stream, &graph) == cudaSuccess && captured;
  captured = captured && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  double us = -1.0;
  if (captured) us = time_us([&] { check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch"); }, stream) / calls;
  cudaGetLastError();  // clear what a failed capture left behind; the eager number stands alone then
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  return us;
}

// Split-KV scratch from one preallocated buffer (--scratch arena, the default), as a serving engine
// or torch's caching allocator hands it out: the calls of a stream use it in turn. --scratch pool:
// the library's own stream-ordered pool, whose allocations become memory nodes in a CUDA graph.
flashsdpa::ScratchAllocator arena_allocator() {
  static DeviceBuffer arena(size_t(256) << 20);
  flashsdpa::ScratchAllocator allocator;
  allocator.allocate = [](size_t bytes, void*, void*) -> void* { return bytes <= arena.bytes ? arena.ptr : nullptr; };
  allocator.release = [](void*, void*, void*) {};
  return allocator;
}

struct Shape {
  int64_t batch, seqlen, hq, hkv, hd, page;
  bool paged;
};

struct Options {
  int splits = 0;
  bool trace = false;
  int variant = 0;
  enum class PageOrder { kSequential, kRandom, kLocal } page_order = PageOrder::kRandom;
  bool floor = false;
  bool block_floor = false;
  bool arena_scratch = true;
  // How the call gives the cache lengths: an int32 tensor on the device (the serving form: the
  // kernel loads each sequence's length before its first copy), or one int for every sequence
  // (cache_seqlen, as flash_attn_with_kvcache(cache_seqlens=int): known at launch, no load).
  bool lengths_on_device = true;
  // --fp32 decode|fp32: q, K/V and out in fp32, served by cuda-decode's fp32 kernel or by
  // cuda-fp32 (the exact fp32 forward over the cache); bf16 on cuda-decode otherwise.
  bool fp32 = false;
  flashsdpa::core::Tier fp32_tier = flashsdpa::core::Tier::kCudaDecode;
};

// A two-valued option: *flag = (value == yes) for `yes` or `no`; false, after a message, otherwise.
bool two_way(const std::string& value, const char* yes, const char* no, const char* what, bool* flag) {
  if (value != yes && value != no) {
    std::fprintf(stderr, "unknown %s '%s' (%s|%s)\n", what, value.c_str(), yes, no);
    return false;
  }
  *flag = value == yes;
  return true;
}

const char* page_order_name(Options::PageOrder order) {
  switch (order) {
    case Options::PageOrder::kSequential: return "sequential";
    case Options::PageOrder::kRandom: return "random";
    case Options::PageOrder::kLocal: return "local";
  }
  return "?";
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

// The prologue's steps in SM cycles after warp 0's start (decode_tier.h: kPrologueSteps), p50
// over the first `ctas` records, as a JSON array.
std::string prologue_cycles(const std::vector<unsigned long long>& rec, size_t ctas) {
  constexpr size_t kWords = flashsdpa::cuda::kDecodeTraceWords;
  std::string json = "[";
  for (int k = 0; k < flashsdpa::cuda::kPrologueSteps; ++k) {
    std::vector<double> v;
    for (size_t n = 0; n < ctas; ++n) v.push_back(double(rec[kWords * n + 11 + k]));
    json += (k ? ", " : "") + std::to_string(static_cast<long long>(percentile(v, 0.5)));
  }
  // The warps' loop-end spread inside a CTA (max - min, max - mean), p50 and max over CTAs.
  for (int k = 0; k < 2; ++k) {
    std::vector<double> v;
    for (size_t n = 0; n < ctas; ++n) v.push_back(double(rec[kWords * n + 11 + flashsdpa::cuda::kPrologueSteps + k]));
    json += (k ? ", " : "], \"warp_end_spread\": [") + std::to_string(static_cast<long long>(percentile(v, 0.5))) +
            ", " + std::to_string(static_cast<long long>(percentile(v, 1.0)));
  }
  return json + "]";
}

// The attention CTAs of a trace buffer (records up to the first empty one, in its first half)
// and the earliest start among them.
std::pair<size_t, unsigned long long> attention_records(const std::vector<unsigned long long>& rec, int capacity) {
  constexpr size_t kWords = flashsdpa::cuda::kDecodeTraceWords;
  size_t ctas = 0;
  unsigned long long t0 = ~0ull;
  for (; ctas < size_t(capacity / 2) && rec[kWords * ctas] != 0; ++ctas) t0 = std::min(t0, rec[kWords * ctas + 1]);
  return {ctas, t0};
}

// One traced call: CTA start / first chunk / loop end / end times relative to the first CTA's
// start (us), and the combine's span; after a CTA's own start: work / rows (its geometry and its
// rows' key bounds known), issued (first copies left), loaded (query rows in registers, stamped
// just before they are stored), query (query tile in shared memory); by rank: CTAs that started
// first on their SM, second, and later (after an earlier CTA there finished).
template <typename F>
void trace_call(F&& call, cudaStream_t stream, const char* label) {
  const int capacity = 1 << 16;
  constexpr size_t kWords = flashsdpa::cuda::kDecodeTraceWords;
  DeviceBuffer buffer(size_t(capacity) * kWords * 8);
  check(cudaMemset(buffer.ptr, 0, buffer.bytes), "trace memset");
  call();  // the previous call of the other cache set, untraced
  check(cudaStreamSynchronize(stream), "trace warm-up");
  const flashsdpa::cuda::DecodeDebug saved = flashsdpa::cuda::decode_debug();
  flashsdpa::cuda::DecodeDebug debug = saved;
  debug.trace = static_cast<unsigned long long*>(buffer.ptr);
  debug.trace_capacity = capacity;
  flashsdpa::cuda::decode_set_debug(debug);
  call();
  check(cudaStreamSynchronize(stream), "traced call");
  flashsdpa::cuda::decode_set_debug(saved);
  std::vector<unsigned long long> rec(size_t(capacity) * kWords);
  check(cudaMemcpy(rec.data(), buffer.ptr, buffer.bytes, cudaMemcpyDeviceToHost), "trace copy");
  const auto [ctas, t0] = attention_records(rec, capacity);
  if (ctas == 0) return;
  std::vector<double> start, first, loop, end, dur, issued, query, work, rows, loaded, merged;
  std::vector<int> per_sm(1024, 0);
  // Rank of each CTA on its SM by start time: rank 0 starts on an idle SM with cold caches, a
  // rank past the SM's resident CTAs starts after another CTA finished there (warm caches).
  std::vector<std::pair<unsigned long long, size_t>> by_sm;
  for (size_t n = 0; n < ctas; ++n) by_sm.push_back({(rec[kWords * n] << 40) | (rec[kWords * n + 1] - t0), n});
  std::sort(by_sm.begin(), by_sm.end());
  std::vector<int> rank(ctas, 0);
  for (size_t m = 1; m < by_sm.size(); ++m)
    if ((by_sm[m].first >> 40) == (by_sm[m - 1].first >> 40)) rank[by_sm[m].second] = rank[by_sm[m - 1].second] + 1;
  std::vector<double> issued_rank[3], first_rank[3];
  for (size_t n = 0; n < ctas; ++n) {
    const unsigned long long* r = &rec[kWords * n];
    issued.push_back((r[5] - r[1]) * 1e-3);
    query.push_back((r[6] - r[1]) * 1e-3);
    work.push_back((r[7] - r[1]) * 1e-3);
    rows.push_back((r[8] - r[1]) * 1e-3);
    loaded.push_back((r[9] - r[1]) * 1e-3);
    merged.push_back((double(r[10]) - double(r[3])) * 1e-3);
    start.push_back((r[1] - t0) * 1e-3);
    if (r[2]) first.push_back((r[2] - r[1]) * 1e-3);
    const int k = std::min(rank[n], 2);
    issued_rank[k].push_back((r[5] - r[1]) * 1e-3);
    if (r[2]) first_rank[k].push_back((r[2] - r[1]) * 1e-3);
    loop.push_back((r[3] - t0) * 1e-3);
    end.push_back((r[4] - t0) * 1e-3);
    dur.push_back((r[4] - r[1]) * 1e-3);
    per_sm[std::min<unsigned long long>(r[0] - 1, 1023)]++;
  }
  int sms = 0, max_per_sm = 0;
  for (int c : per_sm) sms += c > 0, max_per_sm = std::max(max_per_sm, c);
  // Combine records follow the attention CTAs' (start, end pairs) until zeros.
  double combine_start = -1, combine_end = -1;
  for (size_t m = kWords * size_t(capacity / 2); m + 1 < rec.size() && rec[m] != 0; m += 2) {
    const double cs = (rec[m] - t0) * 1e-3, ce = (rec[m + 1] - t0) * 1e-3;
    combine_start = combine_start < 0 ? cs : std::min(combine_start, cs);
    combine_end = std::max(combine_end, ce);
  }
  std::printf("{\"trace\": \"%s\", \"ctas\": %zu, \"sms\": %d, \"max_ctas_per_sm\": %d, "
              "\"start_p50\": %.2f, \"start_max\": %.2f, \"first_chunk_p50\": %.2f, \"first_chunk_p90\": %.2f, "
              "\"loop_end_p10\": %.2f, \"loop_end_p50\": %.2f, \"loop_end_max\": %.2f, "
              "\"end_p10\": %.2f, \"end_p50\": %.2f, \"end_p90\": %.2f, \"end_max\": %.2f, "
              "\"dur_min\": %.2f, \"dur_p50\": %.2f, \"dur_max\": %.2f, \"combine_start\": %.2f, \"combine_end\": %.2f, "
              "\"work_p50\": %.2f, \"rows_p50\": %.2f, \"issued_p50\": %.2f, \"loaded_p50\": %.2f, \"query_p50\": %.2f, "
              "\"issued_by_rank\": [%.2f, %.2f, %.2f], \"first_by_rank\": [%.2f, %.2f, %.2f], "
              "\"ctas_by_rank\": [%zu, %zu, %zu], \"merged_p50\": %.2f, \"prologue_cycles\": %s}\n",
              label, ctas, sms, max_per_sm, percentile(start, 0.5), percentile(start, 1.0), percentile(first, 0.5),
              percentile(first, 0.9), percentile(loop, 0.1), percentile(loop, 0.5), percentile(loop, 1.0),
              percentile(end, 0.1), percentile(end, 0.5), percentile(end, 0.9), percentile(end, 1.0),
              percentile(dur, 0.0), percentile(dur, 0.5), percentile(dur, 1.0), combine_start, combine_end,
              percentile(work, 0.5), percentile(rows, 0.5), percentile(issued, 0.5), percentile(loaded, 0.5),
              percentile(query, 0.5), percentile(issued_rank[0], 0.5), percentile(issued_rank[1], 0.5),
              percentile(issued_rank[2], 0.5), percentile(first_rank[0], 0.5), percentile(first_rank[1], 0.5),
              percentile(first_rank[2], 0.5), issued_rank[0].size(), issued_rank[1].size(), issued_rank[2].size(),
              percentile(merged, 0.5), prologue_cycles(rec, ctas).c_str());
  std::fflush(stdout);
}

// The steady state: four calls captured in one CUDA graph (the last two traced), replayed; the
// fourth call's timeline from its first CTA's start, and the gap between the third call's last
// kernel ending and the fourth call's first CTA starting. The globaltimer of an H100 ticks every
// 256 ns here: single stamps are that coarse, percentiles over CTAs less so.
struct CallSpan {
  double att_start_min = 0, att_start_p50 = 0, att_end_max = 0, comb_start_min = -1, comb_end_max = -1;
  double work = 0, issued = 0, first = 0, loop_max = 0;
  double merged_p50 = 0, merged_max = 0, merge_p50 = 0, merge_max = 0, comb_dur_p50 = 0, comb_dur_max = 0;
};
CallSpan call_span(const std::vector<unsigned long long>& rec, int capacity, unsigned long long t0) {
  constexpr size_t kWords = flashsdpa::cuda::kDecodeTraceWords;
  CallSpan c;
  std::vector<double> start, end, work, issued, first, loop, merged, merge, comb_dur;
  const size_t ctas = attention_records(rec, capacity).first;
  for (size_t n = 0; n < ctas; ++n) {
    const unsigned long long* r = &rec[kWords * n];
    merged.push_back((double(r[10]) - double(r[3])) * 1e-3);
    merge.push_back((double(r[4]) - double(r[3])) * 1e-3);
    start.push_back((double(r[1]) - double(t0)) * 1e-3);
    end.push_back((double(r[4]) - double(t0)) * 1e-3);
    loop.push_back((double(r[3]) - double(t0)) * 1e-3);
    work.push_back((r[7] - r[1]) * 1e-3);
    issued.push_back((r[5] - r[1]) * 1e-3);
    if (r[2]) first.push_back((r[2] - r[1]) * 1e-3);
  }
  c.att_start_min = percentile(start, 0.0), c.att_start_p50 = percentile(start, 0.5);
  c.att_end_max = percentile(end, 1.0), c.loop_max = percentile(loop, 1.0);
  c.work = percentile(work, 0.5);
  c.issued = percentile(issued, 0.5), c.first = percentile(first, 0.5);
  c.merged_p50 = percentile(merged, 0.5), c.merged_max = percentile(merged, 1.0);
  c.merge_p50 = percentile(merge, 0.5), c.merge_max = percentile(merge, 1.0);
  for (size_t m = kWords * size_t(capacity / 2); m + 1 < rec.size() && rec[m] != 0; m += 2) {
    const double cs = (double(rec[m]) - double(t0)) * 1e-3, ce = (double(rec[m + 1]) - double(t0)) * 1e-3;
    comb_dur.push_back(ce - cs);
    c.comb_start_min = c.comb_start_min < 0 ? cs : std::min(c.comb_start_min, cs);
    c.comb_end_max = std::max(c.comb_end_max, ce);
  }
  c.comb_dur_p50 = percentile(comb_dur, 0.5), c.comb_dur_max = percentile(comb_dur, 1.0);
  return c;
}

template <typename F>
void trace_steady(F&& call, cudaStream_t stream, const char* label) {
  const int capacity = 1 << 16;
  constexpr size_t kWords = flashsdpa::cuda::kDecodeTraceWords;
  DeviceBuffer first_buf(size_t(capacity) * kWords * 8), second_buf(size_t(capacity) * kWords * 8);
  check(cudaMemset(first_buf.ptr, 0, first_buf.bytes), "trace memset");
  check(cudaMemset(second_buf.ptr, 0, second_buf.bytes), "trace memset");
  for (int n = 0; n < 3; ++n) call();
  check(cudaStreamSynchronize(stream), "warm-up");
  const flashsdpa::cuda::DecodeDebug saved = flashsdpa::cuda::decode_debug();
  flashsdpa::cuda::DecodeDebug debug = saved;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
  for (int n = 0; n < 4; ++n) {
    debug.trace = static_cast<unsigned long long*>(n == 2 ? first_buf.ptr : n == 3 ? second_buf.ptr : nullptr);
    debug.trace_capacity = debug.trace ? capacity : 0;
    flashsdpa::cuda::decode_set_debug(debug);
    call();
  }
  flashsdpa::cuda::decode_set_debug(saved);
  check(cudaStreamEndCapture(stream, &graph), "end capture");
  check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  for (int n = 0; n < 5; ++n) check(cudaGraphLaunch(exec, stream), "graph launch");
  check(cudaStreamSynchronize(stream), "steady trace");
  std::vector<unsigned long long> a(size_t(capacity) * kWords), b(size_t(capacity) * kWords);
  check(cudaMemcpy(a.data(), first_buf.ptr, first_buf.bytes, cudaMemcpyDeviceToHost), "trace copy");
  check(cudaMemcpy(b.data(), second_buf.ptr, second_buf.bytes, cudaMemcpyDeviceToHost), "trace copy");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  const unsigned long long t0 = attention_records(a, capacity).second;
  const CallSpan x = call_span(a, capacity, t0), y = call_span(b, capacity, t0);
  const double x_end = x.comb_end_max > 0 ? x.comb_end_max : x.att_end_max;
  std::printf("{\"steady\": \"%s\", \"period\": %.2f, \"gap\": %.2f, \"start_p50\": %.2f, \"work\": %.2f, "
              "\"issued\": %.2f, \"first\": %.2f, \"loop_max\": %.2f, "
              "\"att_end_max\": %.2f, \"comb_start\": %.2f, \"comb_end\": %.2f, \"merged\": [%.2f, %.2f], "
              "\"merge\": [%.2f, %.2f], \"comb_dur\": [%.2f, %.2f], \"prologue_cycles\": %s}\n",
              label, y.att_start_min - x.att_start_min, y.att_start_min - x_end, y.att_start_p50 - y.att_start_min, y.work,
              y.issued, y.first, y.loop_max - y.att_start_min, y.att_end_max - y.att_start_min,
              y.comb_start_min < 0 ? -1.0 : y.comb_start_min - y.att_start_min,
              y.comb_end_max < 0 ? -1.0 : y.comb_end_max - y.att_start_min, y.merged_p50, y.merged_max,
              y.merge_p50, y.merge_max, y.comb_dur_p50, y.comb_dur_max,
              prologue_cycles(b, attention_records(b, capacity).first).c_str());
  std::fflush(stdout);
}

bool parse_shape(const char* text, Shape* s) {
  char layout[16] = {0};
  long long b, sk, hq, hkv, hd, page;
  if (std::sscanf(text, "%lld,%lld,%lld,%lld,%lld,%15[a-z],%lld", &b, &sk, &hq, &hkv, &hd, layout, &page) != 7) return false;
  *s = Shape{b, sk, hq, hkv, hd, page, std::strcmp(layout, "paged") == 0};
  return s->paged ? page > 0 : true;
}

// One cache (K, V, block table) of a shape.
struct CacheSet {
  std::unique_ptr<DeviceBuffer> k, v, block_table;
};

// The floor of a shape (top of the file): the first `kv_bytes / 2` bytes of each set's K and V
// buffers (all of a dense cache), read by read_floor_kernel at 1, 2, 4 and 8 CTAs of 256 threads
// per SM, then copied K -> V (the last measurement: it overwrites V). Graph timing, sets alternated.
void run_floor(const Shape& s, std::vector<CacheSet>& caches, double kv_bytes, int element, cudaStream_t stream) {
  const size_t operand = static_cast<size_t>(kv_bytes / 2), words = operand / 16;
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "SM count");
  DeviceBuffer sink(4);
  const int sets = static_cast<int>(caches.size());
  double best_us = 1e30;
  int best_ctas = 0;
  for (int per_sm : {1, 2, 4, 8}) {
    int call = 0;
    const double us = time_graph_us(
        [&] {
          const CacheSet& c = caches[call++ % sets];
          read_floor_kernel<<<sms * per_sm, 256, 0, stream>>>(static_cast<const uint4*>(c.k->ptr),
                                                               static_cast<const uint4*>(c.v->ptr), words,
                                                               static_cast<unsigned*>(sink.ptr));
          check(cudaGetLastError(), "read_floor_kernel");
        },
        stream, 10);
    if (us > 0 && us < best_us) best_us = us, best_ctas = sms * per_sm;
  }
  // The same bytes read in decode's order (head_floor_kernel; paged caches through their block
  // table): one CTA per (sequence, kv head) as the unsplit decode grid, with 32 warps x 4 rows, 16
  // warps x 8 or 8 warps x 16 rows of K and V in flight per thread (128 KB per CTA each), then split
  // 8 and 32 ways (256 threads x 4 rows; the hardware then balances). Keys: "splits/threads".
  std::string head_reads;
  {
    const int64_t blocks_per_seq = s.paged ? (s.seqlen + s.page - 1) / s.page : 0;
    struct Config {
      int splits, threads, loads;
    };
    for (const Config& config : {Config{1, 1024, 4}, Config{1, 512, 8}, Config{1, 256, 16}, Config{8, 256, 4},
                                  Config{32, 256, 4}}) {
      int call = 0;
      auto kernel = config.loads == 4 ? head_floor_kernel<4> : config.loads == 8 ? head_floor_kernel<8> : head_floor_kernel<16>;
      const double us = time_graph_us(
          [&] {
            const CacheSet& c = caches[call++ % sets];
            kernel<<<static_cast<unsigned>(s.batch * s.hkv * config.splits), config.threads, 0, stream>>>(
                static_cast<const uint4*>(c.k->ptr), static_cast<const uint4*>(c.v->ptr), s.seqlen,
                static_cast<int>(s.hkv), static_cast<int>(s.hd * element / 16), config.splits,
                s.paged ? static_cast<const int32_t*>(c.block_table->ptr) : nullptr, static_cast<int>(s.page),
                blocks_per_seq, static_cast<unsigned*>(sink.ptr));
            check(cudaGetLastError(), "head_floor_kernel");
          },
          stream, 10);
      char cell[64];
      std::snprintf(cell, sizeof cell, "%s\"%d/%d\": %.2f", head_reads.empty() ? "" : ", ", config.splits,
                    config.threads, us);
      head_reads += cell;
    }
  }
  int call = 0;
  const double copy_us = time_graph_us(
      [&] {
        const CacheSet& c = caches[call++ % sets];
        check(cudaMemcpyAsync(c.v->ptr, c.k->ptr, operand, cudaMemcpyDeviceToDevice, stream), "floor copy");
      },
      stream, 10);
  std::printf("{\"floor\": true, \"batch\": %lld, \"seqlen_k\": %lld, \"hq\": %lld, \"hkv\": %lld, \"hd\": %lld, "
              "\"layout\": \"%s\", \"page_size\": %lld, \"bytes\": %.0f, \"read_us\": %.2f, \"read_gbps\": %.1f, "
              "\"read_ctas\": %d, \"copy_us\": %.2f, \"copy_gbps\": %.1f, \"head_read_us\": {%s}}\n",
              (long long)s.batch, (long long)s.seqlen, (long long)s.hq, (long long)s.hkv, (long long)s.hd,
              s.paged ? "paged" : "dense", (long long)(s.paged ? s.page : 0), kv_bytes, best_us,
              kv_bytes / best_us * 1e-3, best_ctas, copy_us, kv_bytes / copy_us * 1e-3, head_reads.c_str());
  std::fflush(stdout);
}

// --floor-blocks: block_floor_kernel at several block sizes, depths and CTA sizes on a dense cache,
// graph-timed as the floor (us per call keyed "rows x stages / threads").
void run_block_floor(const Shape& s, std::vector<CacheSet>& caches, cudaStream_t stream) {
  DeviceBuffer sink(4);
  const int sets = static_cast<int>(caches.size());
  struct Config {
    int rows, stages, threads;
    void (*kernel)(const uint4*, const uint4*, int64_t, int, int, unsigned*);
  };
  const Config configs[] = {{128, 2, 128, block_floor_kernel<128, 2>}, {128, 2, 256, block_floor_kernel<128, 2>},
                            {128, 3, 128, block_floor_kernel<128, 3>}, {64, 2, 128, block_floor_kernel<64, 2>},
                            {64, 4, 256, block_floor_kernel<64, 4>},   {32, 4, 128, block_floor_kernel<32, 4>},
                            {32, 8, 256, block_floor_kernel<32, 8>},   {16, 8, 128, block_floor_kernel<16, 8>}};
  std::string reads;
  for (const Config& config : configs) {
    const size_t smem = size_t(config.stages) * 2 * config.rows * s.hd * 2;
    check(cudaFuncSetAttribute(config.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "block floor smem");
    int call = 0;
    const double us = time_graph_us(
        [&] {
          const CacheSet& c = caches[call++ % sets];
          config.kernel<<<static_cast<unsigned>(s.batch * s.hkv), config.threads, smem, stream>>>(
              static_cast<const uint4*>(c.k->ptr), static_cast<const uint4*>(c.v->ptr), s.seqlen,
              static_cast<int>(s.hkv), static_cast<int>(s.hd / 8), static_cast<unsigned*>(sink.ptr));
          check(cudaGetLastError(), "block_floor_kernel");
        },
        stream, 10);
    char cell[64];
    std::snprintf(cell, sizeof cell, "%s\"%dx%d/%d\": %.2f", reads.empty() ? "" : ", ", config.rows, config.stages,
                  config.threads, us);
    reads += cell;
  }
  std::printf("{\"block_floor\": true, \"batch\": %lld, \"seqlen_k\": %lld, \"hq\": %lld, \"hkv\": %lld, "
              "\"hd\": %lld, \"block_read_us\": {%s}}\n",
              (long long)s.batch, (long long)s.seqlen, (long long)s.hq, (long long)s.hkv, (long long)s.hd, reads.c_str());
  std::fflush(stdout);
}

void run_shape(const Shape& s, const Options& opt, cudaStream_t stream) {
  const int splits = opt.splits;
  const int64_t blocks_per_seq = s.paged ? (s.seqlen + s.page - 1) / s.page : 0;
  const int64_t num_blocks = s.batch * blocks_per_seq;
  const int64_t cache_rows = s.paged ? num_blocks * s.page : s.batch * s.seqlen;
  const int element = opt.fp32 ? 4 : 2;
  const DType dtype = opt.fp32 ? DType::kFloat32 : DType::kBFloat16;
  const flashsdpa::core::Tier tier = opt.fp32 ? opt.fp32_tier : flashsdpa::core::Tier::kCudaDecode;
  const size_t cache_bytes = size_t(cache_rows) * s.hkv * s.hd * element;
  const double kv_bytes = 2.0 * s.batch * s.seqlen * s.hkv * s.hd * element;  // K and V actually read

  // Caches smaller than 1 GiB get a second copy, alternated call by call, so no call finds the
  // previous one's K/V in the 50 MB L2.
  const int sets = 2.0 * cache_bytes < (1u << 30) ? 2 : 1;
  std::vector<CacheSet> caches(sets);
  std::mt19937 rng(1234);
  for (int n = 0; n < sets; ++n) {
    caches[n].k = std::make_unique<DeviceBuffer>(cache_bytes);
    caches[n].v = std::make_unique<DeviceBuffer>(cache_bytes);
    fill_elements(*caches[n].k, 11 + n, opt.fp32);
    fill_elements(*caches[n].v, 23 + n, opt.fp32);
    if (s.paged) {
      std::vector<int32_t> table(static_cast<size_t>(num_blocks));
      std::iota(table.begin(), table.end(), 0);
      if (opt.page_order == Options::PageOrder::kRandom) std::shuffle(table.begin(), table.end(), rng);
      if (opt.page_order == Options::PageOrder::kLocal)
        for (size_t g = 0; g < table.size(); g += 64) std::shuffle(table.begin() + g, table.begin() + std::min(g + 64, table.size()), rng);
      caches[n].block_table = std::make_unique<DeviceBuffer>(table.size() * 4);
      check(cudaMemcpy(caches[n].block_table->ptr, table.data(), table.size() * 4, cudaMemcpyHostToDevice), "table");
    }
  }
  DeviceBuffer q(size_t(s.batch) * s.hq * s.hd * element), out(size_t(s.batch) * s.hq * s.hd * element);
  fill_elements(q, 5, opt.fp32);
  std::vector<int32_t> lengths(static_cast<size_t>(s.batch), static_cast<int32_t>(s.seqlen));
  DeviceBuffer seqlens(lengths.size() * 4);
  check(cudaMemcpy(seqlens.ptr, lengths.data(), lengths.size() * 4, cudaMemcpyHostToDevice), "cache_seqlens");

  std::vector<flashsdpa::core::Problem> problems;
  for (int n = 0; n < sets; ++n) {
    flashsdpa::AttnParams a;
    a.q = TensorRef::contiguous(q.ptr, dtype, {s.batch, 1, s.hq, s.hd});
    a.out = TensorRef::contiguous(out.ptr, dtype, {s.batch, 1, s.hq, s.hd});
    if (s.paged) {
      a.k = TensorRef::contiguous(caches[n].k->ptr, dtype, {num_blocks, s.page, s.hkv, s.hd});
      a.v = TensorRef::contiguous(caches[n].v->ptr, dtype, {num_blocks, s.page, s.hkv, s.hd});
      a.block_table = TensorRef::contiguous(caches[n].block_table->ptr, DType::kInt32, {s.batch, blocks_per_seq});
    } else {
      a.k = TensorRef::contiguous(caches[n].k->ptr, dtype, {s.batch, s.seqlen, s.hkv, s.hd});
      a.v = TensorRef::contiguous(caches[n].v->ptr, dtype, {s.batch, s.seqlen, s.hkv, s.hd});
    }
    if (opt.lengths_on_device) a.cache_seqlens = TensorRef::contiguous(seqlens.ptr, DType::kInt32, {s.batch});
    else a.cache_seqlen = s.seqlen;
    a.num_splits = splits;
    flashsdpa::core::ValidateOptions options;
    options.check_index_values = false;
    problems.push_back(flashsdpa::core::prepare_kvcache(a, options));
    if (opt.arena_scratch) problems.back().scratch = arena_allocator();
  }

  int call = 0;
  auto step = [&] { flashsdpa::cuda::kvcache(problems[call++ % sets], tier, stream); };
  const double us = time_us(step, stream);
  const double graph_us = time_graph_us(step, stream, 10);
  if (opt.trace) {
    char label[96];
    std::snprintf(label, sizeof label, "B%lld S%lld Hq%lld %s%lld splits %d %s%s", (long long)s.batch,
                  (long long)s.seqlen, (long long)s.hq, s.paged ? "paged " : "dense", (long long)(s.paged ? s.page : 0),
                  splits, flashsdpa::cuda::decode_variant_name(opt.variant), opt.lengths_on_device ? "" : " int");
    trace_call([&] { step(); }, stream, label);
    trace_steady([&] { step(); }, stream, label);
  }

  // Every output finite: a benchmark of a kernel that writes garbage is no benchmark.
  std::vector<uint16_t> host(size_t(s.batch) * s.hq * s.hd * element / 2);
  check(cudaMemcpy(host.data(), out.ptr, host.size() * 2, cudaMemcpyDeviceToHost), "out");
  int64_t bad = 0;
  // bf16 elements, or the upper halves of fp32 ones (little-endian): the same exponent field.
  for (size_t i = opt.fp32 ? 1 : 0; i < host.size(); i += opt.fp32 ? 2 : 1) bad += (host[i] & 0x7f80u) == 0x7f80u;

  std::printf("{\"batch\": %lld, \"seqlen_k\": %lld, \"hq\": %lld, \"hkv\": %lld, \"hd\": %lld, \"layout\": \"%s\", "
              "\"page_size\": %lld, \"page_order\": \"%s\", \"lengths\": \"%s\", \"num_splits\": %d, \"variant\": \"%s\", \"us\": %.2f, \"gbps\": %.1f, "
              "\"graph_us\": %.2f, \"graph_gbps\": %.1f, \"nonfinite_out\": %lld, \"dtype\": \"%s\", \"tier\": \"%s\"}\n",
              (long long)s.batch, (long long)s.seqlen, (long long)s.hq, (long long)s.hkv, (long long)s.hd,
              s.paged ? "paged" : "dense", (long long)(s.paged ? s.page : 0), page_order_name(opt.page_order),
              opt.lengths_on_device ? "tensor" : "int", splits,
              flashsdpa::cuda::decode_variant_name(opt.variant), us, kv_bytes / us * 1e-3, graph_us,
              graph_us > 0 ? kv_bytes / graph_us * 1e-3 : -1.0, (long long)bad, opt.fp32 ? "fp32" : "bf16",
              flashsdpa::core::tier_name(tier));
  std::fflush(stdout);
  if (opt.floor) run_floor(s, caches, kv_bytes, element, stream);  // a read of the same bytes: any element type
  if (opt.block_floor && !s.paged && !opt.fp32) run_block_floor(s, caches, stream);
}

void run_copy(cudaStream_t stream) {
  const size_t bytes = size_t(2) << 30;
  DeviceBuffer src(bytes), dst(bytes);
  fill(src, 3);
  const double us = time_us(
      [&] { check(cudaMemcpyAsync(dst.ptr, src.ptr, bytes, cudaMemcpyDeviceToDevice, stream), "copy"); }, stream, 9);
  std::printf("{\"copy_bytes\": %zu, \"us\": %.2f, \"copy_gbps\": %.1f}\n", bytes, us, 2.0 * bytes / us * 1e-3);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  Options opt;
  for (int n = 1; n < argc; ++n) {
    const std::string arg = argv[n];
    if (arg == "--copy") {
      run_copy(stream);
    } else if (arg == "--splits" && n + 1 < argc) {
      opt.splits = std::atoi(argv[++n]);
    } else if (arg == "--page-order" && n + 1 < argc) {
      const std::string order = argv[++n];
      if (order == "sequential") opt.page_order = Options::PageOrder::kSequential;
      else if (order == "random") opt.page_order = Options::PageOrder::kRandom;
      else if (order == "local") opt.page_order = Options::PageOrder::kLocal;
      else {
        std::fprintf(stderr, "unknown page order '%s' (sequential|random|local)\n", order.c_str());
        return 2;
      }
    } else if (arg == "--lengths" && n + 1 < argc) {
      if (!two_way(argv[++n], "tensor", "int", "lengths", &opt.lengths_on_device)) return 2;
    } else if (arg == "--fp32" && n + 1 < argc) {
      bool decode = true;
      if (!two_way(argv[++n], "decode", "fp32", "fp32 tier", &decode)) return 2;
      opt.fp32 = true;
      opt.fp32_tier = decode ? flashsdpa::core::Tier::kCudaDecode : flashsdpa::core::Tier::kCudaFp32;
    } else if (arg == "--floor") {
      opt.floor = true;
    } else if (arg == "--floor-blocks") {
      opt.block_floor = true;
    } else if (arg == "--trace") {
      opt.trace = true;
    } else if (arg == "--scratch" && n + 1 < argc) {
      if (!two_way(argv[++n], "arena", "pool", "scratch", &opt.arena_scratch)) return 2;
    } else if (arg == "--variant" && n + 1 < argc) {
      const std::string name = argv[++n];
      opt.variant = -1;
      for (int v = 0; v < flashsdpa::cuda::kDecodeVariants; ++v)
        if (name == flashsdpa::cuda::decode_variant_name(v)) opt.variant = v;
      if (opt.variant < 0) {
        std::fprintf(stderr, "unknown variant '%s'\n", name.c_str());
        return 2;
      }
      flashsdpa::cuda::DecodeDebug debug = flashsdpa::cuda::decode_debug();
      debug.variant = opt.variant;
      flashsdpa::cuda::decode_set_debug(debug);
    } else {
      Shape s;
      if (!parse_shape(argv[n], &s)) {
        std::fprintf(stderr, "bad shape '%s' (expected B,S,HQ,HKV,HD,dense|paged,PAGE)\n", argv[n]);
        return 2;
      }
      run_shape(s, opt, stream);
    }
  }
  return 0;
}
