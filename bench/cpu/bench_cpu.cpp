// CPU forward throughput (GFLOP/s) over the grid the performance target is stated on: head dim
// 64 / 128, 2k / 4k tokens, causal or not, fp32 / bf16, at 1 and 2 threads; a decode case; and a
// 32k-token run that reports the backend's peak scratch bytes (memory must grow with tokens,
// never with tokens squared).
//
// FLOPs are counted exactly: allowed (query, key) pairs x 2 x (Dqk + Dv), so causal runs are not
// credited for the masked half.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <cstdint>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mask.h"
#include "cpu/cpu_backend.h"
#include "cpu/tile_math.h"
#include "flashsdpa/flashsdpa.h"

namespace {

using flashsdpa::DType;

struct Shape {
  int64_t batch = 1, heads_q = 2, heads_kv = 2, seqlen_q = 2048, seqlen_k = 2048, head_dim = 128;
  bool causal = false;
  DType dtype = DType::kFloat32;
};

// Allowed (i, j) pairs of one (sequence, head), from the one mask definition.
int64_t allowed_pairs(const Shape& s) {
  const flashsdpa::core::Mask mask =
      flashsdpa::core::Mask::make(s.seqlen_q, 0, s.seqlen_k, -1, s.causal ? 0 : -1);
  int64_t pairs = 0;
  for (int64_t i = 0; i < s.seqlen_q; ++i) pairs += std::max<int64_t>(0, mask.row_end(i) - mask.row_begin(i));
  return pairs;
}

double flops(const Shape& s) {
  return static_cast<double>(allowed_pairs(s)) * static_cast<double>(s.batch * s.heads_q) * 2.0 *
         static_cast<double>(2 * s.head_dim);
}

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

class Tensor {
 public:
  Tensor(DType dtype, std::vector<int64_t> shape, std::mt19937& rng) : dtype_(dtype), shape_(std::move(shape)) {
    int64_t n = 1;
    for (int64_t d : shape_) n *= d;
    bytes_.resize(static_cast<size_t>(n * (dtype == DType::kFloat32 ? 4 : 2)));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t i = 0; i < n; ++i) flashsdpa::core::store_from_float(bytes_.data(), i, dtype, normal(rng));
  }
  flashsdpa::TensorRef ref() const {
    flashsdpa::TensorRef t;
    t.data = bytes_.data();
    t.dtype = dtype_;
    t.rank = static_cast<int32_t>(shape_.size());
    int64_t stride = 1;
    for (int d = t.rank - 1; d >= 0; --d) {
      t.shape[d] = shape_[d];
      t.stride[d] = stride;
      stride *= shape_[d];
    }
    return t;
  }

 private:
  DType dtype_;
  std::vector<int64_t> shape_;
  std::vector<uint8_t> bytes_;
};

void run_forward(benchmark::State& state, const Shape& s, int threads) {
  std::mt19937 rng(1);
  const Tensor q(s.dtype, {s.batch, s.seqlen_q, s.heads_q, s.head_dim}, rng);
  const Tensor k(s.dtype, {s.batch, s.seqlen_k, s.heads_kv, s.head_dim}, rng);
  const Tensor v(s.dtype, {s.batch, s.seqlen_k, s.heads_kv, s.head_dim}, rng);
  const Tensor out(s.dtype, {s.batch, s.seqlen_q, s.heads_q, s.head_dim}, rng);
  flashsdpa::AttnParams params;
  params.q = q.ref();
  params.k = k.ref();
  params.v = v.ref();
  params.out = out.ref();
  params.causal = s.causal;
  flashsdpa::ExecContext ctx;
  ctx.backend = flashsdpa::Backend::kCpu;
  ctx.num_threads = threads;

  const double cpu_start = process_cpu_seconds();
  for (auto _ : state) flashsdpa::attention_forward(params, ctx);
  const double cpu_seconds = process_cpu_seconds() - cpu_start;

  const double work = flops(s);
  // Per busy core: FLOPs over the CPU time all threads spent. On a shared machine this is the
  // steadier per-core figure; the wall-clock rate is what a caller sees.
  if (cpu_seconds > 0)
    state.counters["GFLOP/s/core_cpu"] = work * 1e-9 * static_cast<double>(state.iterations()) / cpu_seconds;
  state.counters["GFLOP/s"] =
      benchmark::Counter(work * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s/thread"] =
      benchmark::Counter(work * 1e-9 / threads, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["scratch_bytes"] = static_cast<double>(flashsdpa::cpu::last_scratch_bytes());
  state.SetLabel(flashsdpa::cpu::isa_name(flashsdpa::cpu::tile_ops().isa));
}

// Args: seqlen, head_dim, causal, dtype (0 fp32, 1 bf16), threads
void BM_Forward(benchmark::State& state) {
  Shape s;
  s.seqlen_q = s.seqlen_k = state.range(0);
  s.head_dim = state.range(1);
  s.causal = state.range(2) != 0;
  s.dtype = state.range(3) == 0 ? DType::kFloat32 : DType::kBFloat16;
  run_forward(state, s, static_cast<int>(state.range(4)));
}
BENCHMARK(BM_Forward)
    ->ArgNames({"seqlen", "hd", "causal", "bf16", "threads"})
    ->ArgsProduct({{2048, 4096}, {64, 128}, {0, 1}, {0, 1}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(0.5)
    ->UseRealTime();

// The same grid point under each instruction set this CPU runs (hd 128, 2k, fp32, 1 thread).
void BM_ForwardIsa(benchmark::State& state) {
  const auto cap = static_cast<flashsdpa::cpu::Isa>(state.range(0));
  if (flashsdpa::cpu::tile_ops_for(cap) == nullptr) {
    state.SkipWithError("instruction set not supported here");
    return;
  }
  const flashsdpa::cpu::Isa previous = flashsdpa::cpu::set_isa_cap(cap);
  Shape s;
  s.seqlen_q = s.seqlen_k = 2048;
  s.head_dim = 128;
  s.dtype = state.range(1) == 0 ? DType::kFloat32 : DType::kBFloat16;
  run_forward(state, s, 1);
  flashsdpa::cpu::set_isa_cap(previous);
}
BENCHMARK(BM_ForwardIsa)
    ->ArgNames({"isa", "bf16"})
    ->ArgsProduct({{0, 1, 2}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Decoding: one query row, GQA 8:1, a 4k cache (split-KV keeps the threads busy).
void BM_Decode(benchmark::State& state) {
  Shape s;
  s.batch = 1;
  s.heads_q = 32;
  s.heads_kv = 4;
  s.seqlen_q = 1;
  s.seqlen_k = state.range(0);
  s.dtype = DType::kBFloat16;
  run_forward(state, s, static_cast<int>(state.range(1)));
}
BENCHMARK(BM_Decode)
    ->ArgNames({"cache", "threads"})
    ->ArgsProduct({{4096, 32768}, {1, 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// 32k tokens, causal, bf16: scratch must stay O(tokens). A 32k x 32k fp32 score matrix would
// be 4 GiB; the counters report what the backend used and the process's peak resident size.
void BM_Memory32k(benchmark::State& state) {
  Shape s;
  s.heads_q = s.heads_kv = 1;
  s.seqlen_q = s.seqlen_k = 32768;
  s.head_dim = 64;
  s.causal = true;
  s.dtype = DType::kBFloat16;
  run_forward(state, s, static_cast<int>(state.range(0)));
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  state.counters["peak_rss_bytes"] = static_cast<double>(usage.ru_maxrss) * 1024.0;
  state.counters["score_matrix_bytes"] = 32768.0 * 32768.0 * 4.0;
}
BENCHMARK(BM_Memory32k)->ArgNames({"threads"})->Arg(2)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
