// Prefill benchmark of the CUDA forward tiers through the public API: CUDA-event timings,
// median over iterations, one JSON object per line.
//
//   flashsdpa_gpu_bench                     the grid of issue 4 (hd 64/128/256 x seqlen 1k/4k/16k,
//                                           16k tokens per batch, H = 2048 / hd, causal or not,
//                                           bf16, fp16, fp32)
//   flashsdpa_gpu_bench --one DT HD S B H C [SK] [--trace FILE]
//                                           one point (DT bf16|fp16|fp32, C 0|1; SK keys per
//                                           sequence, default S); --trace writes one more call's
//                                           timeline of the persistent fp32 kernel's pieces to FILE
//                                           (block item tile_begin tile_end start issued landed loop
//                                           v_issued end, ns)
//   flashsdpa_gpu_bench --grid DT            the prefill grid of one dtype
//   flashsdpa_gpu_bench --sweep             candidate tensor-core tile shapes (bench/gpu/tile_sweep*.cu),
//                                           bf16, hd 64/128/256, 1k/4k/16k, causal or not; causal
//                                           also times block orders (tile_sweep.cuh)
//   flashsdpa_gpu_bench --sweep-fp32        the same for the exact fp32 tier's shapes
//                                           (bench/gpu/tile_sweep_fp32_d*.cu)
//   flashsdpa_gpu_bench --sweep-fp32-tc     the 3xTF32 tensor-core prototype against cuda-fp32 (hd 128)
//   flashsdpa_gpu_bench --memory            peak extra device memory at 128k tokens
//   flashsdpa_gpu_bench --backward          the backward (dq, dk, dv) over a small grid
//                                           (bench/gpu/bench_backward.py adds torch's backends)
//                                           (B 1, H 8, hd 64, causal, window 128, sinks)
//
// Inputs are a counter hash (bench_input_value) that bench_prefill.py reproduces bit for bit in
// torch, so torch's backends are timed on the very same values.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/validate.h"
#include "cuda/launch.h"
#include "flashsdpa/flashsdpa.h"
#include "tile_sweep.h"

namespace {

using flashsdpa::DType;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

// Unit-variance uniform values from a 32-bit integer hash of (seed, index); torch reproduces it
// with int64 arithmetic (no product exceeds 2^59).
float bench_input_value(uint64_t seed, uint64_t index) {
  uint64_t x = (index * 2654435761ull + seed * 40503ull) & 0xffffffffull;
  x ^= x >> 16;
  x = (x * 0x45d9f3bull) & 0xffffffffull;
  x ^= x >> 16;
  x = (x * 0x45d9f3bull) & 0xffffffffull;
  x ^= x >> 16;
  const double u = static_cast<double>(x) / 4294967296.0;
  return static_cast<float>((u - 0.5) * std::sqrt(12.0));
}

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { check(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
};

DType parse_dtype(const std::string& s) {
  if (s == "bf16") return DType::kBFloat16;
  if (s == "fp16") return DType::kFloat16;
  return DType::kFloat32;
}

void fill(DeviceBuffer& buf, DType dtype, int64_t count, uint64_t seed) {
  const int64_t esize = flashsdpa::dtype_size(dtype);
  std::vector<unsigned char> host(static_cast<size_t>(count * esize));
  for (int64_t n = 0; n < count; ++n) flashsdpa::core::store_from_float(host.data(), n, dtype, bench_input_value(seed, n));
  check(cudaMemcpy(buf.ptr, host.data(), host.size(), cudaMemcpyHostToDevice), "cudaMemcpy");
}

// Multiply-adds of allowed (i, j) pairs, bottom-right aligned causal: query row i sees keys
// j <= i + sk - sq (sq == sk: S(S+1)/2).
double flop_count(int64_t b, int64_t h, int64_t sq, int64_t sk, int64_t d, bool causal) {
  double pairs = static_cast<double>(sq) * sk;
  if (causal) {
    pairs = 0;
    for (int64_t i = 0; i < sq; ++i) pairs += static_cast<double>(std::clamp<int64_t>(i + sk - sq + 1, 0, sk));
  }
  return 4.0 * b * h * pairs * d;
}
double flop_count(int64_t b, int64_t h, int64_t s, int64_t d, bool causal) { return flop_count(b, h, s, s, d, causal); }

struct Point {
  std::string dtype;
  int64_t hd, seqlen, batch, heads;
  bool causal;
  int64_t seqlen_k = 0;  // 0: seqlen
  const char* trace_file = nullptr;
};

// One more call with the fp32 timeline on (cuda::Fp32Debug), its records written to `path`.
void write_fp32_trace(const char* path, const flashsdpa::AttnParams& p, const flashsdpa::ExecContext& ctx) {
  const int capacity = 1 << 16;
  const size_t bytes = sizeof(unsigned long long) * (1 + size_t(flashsdpa::cuda::kFp32TraceWords) * capacity);
  DeviceBuffer buffer(bytes);
  check(cudaMemset(buffer.ptr, 0, bytes), "trace memset");
  flashsdpa::cuda::fp32_set_debug({static_cast<unsigned long long*>(buffer.ptr), capacity});
  flashsdpa::attention_forward(p, ctx);
  check(cudaDeviceSynchronize(), "traced call");
  flashsdpa::cuda::fp32_set_debug({});
  std::vector<unsigned long long> words(bytes / sizeof(unsigned long long));
  check(cudaMemcpy(words.data(), buffer.ptr, bytes, cudaMemcpyDeviceToHost), "trace copy");
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) {
    std::fprintf(stderr, "cannot write %s\n", path);
    std::exit(1);
  }
  const unsigned long long records = std::min<unsigned long long>(words[0], capacity);
  for (unsigned long long n = 0; n < records; ++n) {
    const unsigned long long* r = words.data() + 1 + flashsdpa::cuda::kFp32TraceWords * n;
    std::fprintf(f, "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu\n", r[0] >> 32, r[0] & 0xffffffffull,
                 r[1] >> 32, r[1] & 0xffffffffull, r[2], r[3], r[4], r[5], r[6], r[7]);
  }
  std::fclose(f);
}

void run_point(const Point& pt, int iters) {
  using namespace flashsdpa;
  const DType dtype = parse_dtype(pt.dtype);
  const int64_t esize = dtype_size(dtype);
  const int64_t sk = pt.seqlen_k > 0 ? pt.seqlen_k : pt.seqlen;
  const int64_t n = pt.batch * pt.seqlen * pt.heads * pt.hd, nk = pt.batch * sk * pt.heads * pt.hd;
  DeviceBuffer q(n * esize), k(nk * esize), v(nk * esize), out(n * esize);
  DeviceBuffer lse(pt.batch * pt.heads * pt.seqlen * 4);
  fill(q, dtype, n, 1);
  fill(k, dtype, nk, 2);
  fill(v, dtype, nk, 3);

  AttnParams p;
  p.q = TensorRef::contiguous(q.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  p.k = TensorRef::contiguous(k.ptr, dtype, {pt.batch, sk, pt.heads, pt.hd});
  p.v = TensorRef::contiguous(v.ptr, dtype, {pt.batch, sk, pt.heads, pt.hd});
  p.out = TensorRef::contiguous(out.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  p.lse = TensorRef::contiguous(lse.ptr, DType::kFloat32, {pt.batch, pt.heads, pt.seqlen});
  p.causal = pt.causal;
  ExecContext ctx;
  ctx.backend = Backend::kCuda;
  const Selection sel = explain(p, Op::kForward, ctx);

  for (int w = 0; w < 3; ++w) attention_forward(p, ctx);
  check(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<float> ms;
  for (int it = 0; it < iters; ++it) {
    check(cudaEventRecord(start), "cudaEventRecord");
    attention_forward(p, ctx);
    check(cudaEventRecord(stop), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float t = 0;
    check(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  check(cudaGetLastError(), "timed runs");
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double tflops = flop_count(pt.batch, pt.heads, pt.seqlen, sk, pt.hd, pt.causal) / (median * 1e-3) / 1e12;
  std::string keys;
  if (sk != pt.seqlen) keys = ", \"seqlen_k\": " + std::to_string(sk);
  std::printf(
      "{\"dtype\": \"%s\", \"hd\": %lld, \"seqlen\": %lld%s, \"batch\": %lld, \"heads\": %lld, \"causal\": %s, "
      "\"ms\": %.4f, \"ms_min\": %.4f, \"tflops\": %.2f, \"tier\": \"%s\"}\n",
      pt.dtype.c_str(), static_cast<long long>(pt.hd), static_cast<long long>(pt.seqlen), keys.c_str(),
      static_cast<long long>(pt.batch), static_cast<long long>(pt.heads), pt.causal ? "true" : "false", median,
      ms.front(), tflops, sel.tier.c_str());
  if (pt.trace_file != nullptr) write_fp32_trace(pt.trace_file, p, ctx);
  std::fflush(stdout);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

// Times the candidate tile shapes of bench/gpu/tile_sweep_d*.cu (bf16) or tile_sweep_fp32_d*.cu
// (fp32) on one validated problem each.
void run_sweep(DType dtype, bool tensor_core_fp32 = false) {
  using namespace flashsdpa;
  const int64_t esize = dtype_size(dtype);
  for (int64_t hd : {64, 128, 256}) {
    for (int64_t seqlen : {1024, 4096, 16384}) {
      for (bool causal : {false, true}) {
        const int64_t b = 16384 / seqlen, h = 2048 / hd, n = b * seqlen * h * hd;
        DeviceBuffer q(n * esize), k(n * esize), v(n * esize), out(n * esize);
        fill(q, dtype, n, 1);
        fill(k, dtype, n, 2);
        fill(v, dtype, n, 3);
        AttnParams p;
        p.q = TensorRef::contiguous(q.ptr, dtype, {b, seqlen, h, hd});
        p.k = TensorRef::contiguous(k.ptr, dtype, {b, seqlen, h, hd});
        p.v = TensorRef::contiguous(v.ptr, dtype, {b, seqlen, h, hd});
        p.out = TensorRef::contiguous(out.ptr, dtype, {b, seqlen, h, hd});
        p.causal = causal;
        core::ValidateOptions options;
        options.check_index_values = false;
        const core::Problem problem = core::prepare_forward(p, options);
        const double flop = flop_count(b, h, seqlen, hd, causal);
        if (tensor_core_fp32) {
          bench::sweep_fp32_tc(problem, flop, 5);
        } else if (dtype == DType::kFloat32) {
          if (hd == 64) bench::sweep_fp32_d64(problem, flop, 5);
          if (hd == 128) bench::sweep_fp32_d128(problem, flop, 5);
          if (hd == 256) bench::sweep_fp32_d256(problem, flop, 5);
        } else {
          if (hd == 64) bench::sweep_d64(problem, flop, 10);
          if (hd == 128) bench::sweep_d128(problem, flop, 10);
          if (hd == 256) bench::sweep_d256(problem, flop, 10);
        }
      }
    }
  }
}

// 128k tokens, B 1, H 8, hd 64, causal, window 128, sinks: device memory in use during the call
// beyond the operands themselves (cudaMemGetInfo before the call vs. the minimum free during it).
void run_memory() {
  using namespace flashsdpa;
  const int64_t s = 131072, h = 8, d = 64;
  const DType dtype = DType::kBFloat16;
  const int64_t n = s * h * d;
  DeviceBuffer q(n * 2), k(n * 2), v(n * 2), out(n * 2), lse(h * s * 4), sinks(h * 4);
  fill(q, dtype, n, 1);
  fill(k, dtype, n, 2);
  fill(v, dtype, n, 3);
  fill(sinks, DType::kFloat32, h, 4);
  AttnParams p;
  p.q = TensorRef::contiguous(q.ptr, dtype, {1, s, h, d});
  p.k = TensorRef::contiguous(k.ptr, dtype, {1, s, h, d});
  p.v = TensorRef::contiguous(v.ptr, dtype, {1, s, h, d});
  p.out = TensorRef::contiguous(out.ptr, dtype, {1, s, h, d});
  p.lse = TensorRef::contiguous(lse.ptr, DType::kFloat32, {1, h, s});
  p.sinks = TensorRef::contiguous(sinks.ptr, DType::kFloat32, {h});
  p.causal = true;
  p.window_left = 128;
  ExecContext ctx;
  ctx.backend = Backend::kCuda;
  attention_forward(p, ctx);  // first call: module load
  check(cudaDeviceSynchronize(), "warm-up");
  size_t free_before = 0, total = 0;
  check(cudaMemGetInfo(&free_before, &total), "cudaMemGetInfo");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  check(cudaEventRecord(start), "cudaEventRecord");
  attention_forward(p, ctx);
  check(cudaEventRecord(stop), "cudaEventRecord");
  size_t free_during = 0;
  check(cudaMemGetInfo(&free_during, &total), "cudaMemGetInfo");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  const double operand_mb = (4.0 * n * 2 + h * s * 4.0 + h * 4.0) / 1048576.0;
  std::printf(
      "{\"memory\": true, \"tokens\": %lld, \"heads\": %lld, \"hd\": %lld, \"causal\": true, \"window_left\": 128, "
      "\"sinks\": true, \"operands_mib\": %.1f, \"extra_device_bytes\": %lld, \"ms\": %.4f}\n",
      static_cast<long long>(s), static_cast<long long>(h), static_cast<long long>(d), operand_mb,
      static_cast<long long>(free_before) - static_cast<long long>(free_during), ms);
}

// The backward: dq, dk, dv of one point, after a forward that wrote out and lse. TFLOP/s with
// FlashAttention-2's count for the backward, 2.5x the forward's (five products instead of two),
// whatever the tier computes (cuda-bwd recomputes S and dP in its dQ pass: 1.4x that count).
void run_backward_point(const Point& pt, int iters) {
  using namespace flashsdpa;
  const DType dtype = parse_dtype(pt.dtype);
  const int64_t esize = dtype_size(dtype);
  const int64_t n = pt.batch * pt.seqlen * pt.heads * pt.hd;
  DeviceBuffer q(n * esize), k(n * esize), v(n * esize), out(n * esize), dout(n * esize);
  DeviceBuffer dq(n * esize), dk(n * esize), dv(n * esize), lse(pt.batch * pt.heads * pt.seqlen * 4);
  fill(q, dtype, n, 1);
  fill(k, dtype, n, 2);
  fill(v, dtype, n, 3);
  fill(dout, dtype, n, 4);
  AttnBwdParams bp;
  bp.fwd.q = TensorRef::contiguous(q.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  bp.fwd.k = TensorRef::contiguous(k.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  bp.fwd.v = TensorRef::contiguous(v.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  bp.fwd.out = TensorRef::contiguous(out.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  bp.fwd.lse = TensorRef::contiguous(lse.ptr, DType::kFloat32, {pt.batch, pt.heads, pt.seqlen});
  bp.fwd.causal = pt.causal;
  bp.dout = TensorRef::contiguous(dout.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  bp.dq = TensorRef::contiguous(dq.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  bp.dk = TensorRef::contiguous(dk.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  bp.dv = TensorRef::contiguous(dv.ptr, dtype, {pt.batch, pt.seqlen, pt.heads, pt.hd});
  ExecContext ctx;
  ctx.backend = Backend::kCuda;
  attention_forward(bp.fwd, ctx);
  const Selection sel = explain(bp.fwd, Op::kBackward, ctx);
  attention_backward(bp, ctx);  // warm-up
  check(cudaDeviceSynchronize(), "warm-up");
  const double median = bench::median_ms([&] { attention_backward(bp, ctx); }, 0, iters);
  const double tflops = 2.5 * flop_count(pt.batch, pt.heads, pt.seqlen, pt.hd, pt.causal) / (median * 1e-3) / 1e12;
  std::printf(
      "{\"op\": \"backward\", \"dtype\": \"%s\", \"hd\": %lld, \"seqlen\": %lld, \"batch\": %lld, \"heads\": %lld, "
      "\"causal\": %s, \"ms\": %.4f, \"tflops\": %.3f, \"tier\": \"%s\"}\n",
      pt.dtype.c_str(), static_cast<long long>(pt.hd), static_cast<long long>(pt.seqlen),
      static_cast<long long>(pt.batch), static_cast<long long>(pt.heads), pt.causal ? "true" : "false", median, tflops,
      sel.tier.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (!flashsdpa::cuda_available()) {
    std::fprintf(stderr, "no CUDA device (or flashsdpa built without CUDA)\n");
    return 1;
  }
  if (argc > 1 && std::strcmp(argv[1], "--sweep") == 0) {
    run_sweep(flashsdpa::DType::kBFloat16);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--sweep-fp32") == 0) {
    run_sweep(flashsdpa::DType::kFloat32);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--sweep-fp32-tc") == 0) {
    run_sweep(flashsdpa::DType::kFloat32, true);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--memory") == 0) {
    run_memory();
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--backward") == 0) {
    for (const char* dtype : {"bf16", "fp32"}) {
      for (int64_t hd : {64, 128}) {
        for (int64_t seqlen : {1024, 4096}) {
          for (bool causal : {false, true}) run_backward_point({dtype, hd, seqlen, 16384 / seqlen, 2048 / hd, causal}, 3);
        }
      }
    }
    return 0;
  }
  if (argc >= 8 && std::strcmp(argv[1], "--one") == 0) {
    Point pt{argv[2], std::atoll(argv[3]), std::atoll(argv[4]), std::atoll(argv[5]), std::atoll(argv[6]),
             std::atoi(argv[7]) != 0};
    for (int n = 8; n < argc; ++n) {
      if (std::strcmp(argv[n], "--trace") == 0 && n + 1 < argc) {
        pt.trace_file = argv[++n];
      } else {
        pt.seqlen_k = std::atoll(argv[n]);
      }
    }
    run_point(pt, pt.dtype == "fp32" ? 5 : 20);
    return 0;
  }
  // --grid DT: the grid of one dtype only (e.g. fp32 with FLASHSDPA_CUDA_FORWARD_TIER=cuda-fp32 to
  // time the other fp32 tier in the same job).
  const bool one_dtype = argc == 3 && std::strcmp(argv[1], "--grid") == 0;
  for (const char* dtype : {"bf16", "fp16", "fp32"}) {
    if (one_dtype && std::strcmp(argv[2], dtype) != 0) continue;
    for (int64_t hd : {64, 128, 256}) {
      for (int64_t seqlen : {1024, 4096, 16384}) {
        for (bool causal : {false, true}) {
          const Point pt{dtype, hd, seqlen, 16384 / seqlen, 2048 / hd, causal};
          run_point(pt, std::strcmp(dtype, "fp32") == 0 ? 5 : 20);
        }
      }
    }
  }
  return 0;
}
