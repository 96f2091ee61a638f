// flashsdpa demo: a realistic serving workload, timed and checked against the float64 reference.
//
//   prefill  one varlen batch of five prompts of mixed lengths, Hq 32 / Hkv 8, head dim 128, bf16,
//            through layers that alternate full causal attention and a causal sliding window with
//            attention sinks (the gpt-oss pattern);
//   kv write the prompts' keys and values written into a paged cache in one paged_kv_write call;
//   decode   32 steps of attention_kvcache over that cache: each step appends one token per
//            sequence, rotating q and the new key with rotary embeddings.
//
// Checking a 4096-token prefill against a float64 reference in full would take minutes, so each
// sequence is checked through exact sub-problems: a block of query rows [r0, r1) together with
// the keys those rows can see is the same attention problem as long as bottom-right alignment
// lines the rows up with the same keys (see prefill_row_block). Decode steps are checked in full.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli_flags.h"
#include "commands.h"
#include "core/dtype.h"
#include "core/validate.h"
#include "reference/reference.h"
#include "tensors.h"
#include "verify.h"

namespace flashsdpa::cli {
namespace {

constexpr DType kDType = DType::kBFloat16;
constexpr int64_t kHeadsQ = 32;
constexpr int64_t kHeadsKv = 8;
constexpr int64_t kHeadDim = 128;
const std::vector<int64_t> kPromptLengths = {17, 300, 1000, 2500, 4096};

struct LayerSpec {
  int64_t window_left;  // -1: full causal
  bool sinks;
};
constexpr int64_t kWindow = 512;
const std::vector<LayerSpec> kLayers = {{-1, false}, {kWindow, true}, {-1, false}, {kWindow, true}};

constexpr int64_t kDecodeSteps = 32;
constexpr int64_t kPageSize = 16;
constexpr float kRotaryTheta = 10000.0f;

// Rows checked per sequence and prefill layer: the last kSuffixRows, plus kSampledRows spread
// over the rest. Sequences no longer than both together are checked whole.
constexpr int64_t kSuffixRows = 8;
constexpr int64_t kSampledRows = 8;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Runs independent jobs on `threads` workers; rethrows the first failure.
void run_parallel(const std::vector<std::function<void()>>& jobs, int threads) {
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  const auto worker = [&] {
    for (size_t i = next++; i < jobs.size(); i = next++) {
      try {
        jobs[i]();
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < std::min<int>(threads, static_cast<int>(jobs.size())); ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& thread : pool) thread.join();
  if (failure) std::rethrow_exception(failure);
}

TensorRef strided(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                  std::initializer_list<int64_t> strides) {
  return TensorRef::strided(data, dtype, shape, strides);
}

const void* element(const Tensor& t, int64_t index) { return t.host() + index * dtype_size(t.dtype()); }

// ---------------------------------------------------------------------------------------------
// Prefill

struct PrefillLayer {
  int index = 0;
  LayerSpec spec{};
  std::vector<int32_t> cu_seqlens;
  Tensor q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, sinks;
  double seconds = 0, flops = 0;
  std::optional<int64_t> scratch;
};

// Result of one row block, in the reference's order (row, head, dim).
struct RowBlockResult {
  std::vector<double> got_out, ref64_out, lowp_out;
  std::vector<double> got_lse, ref64_lse, lowp_lse;
};

// Query rows [r0, r1) of sequence b, checked as their own problem. Row i sees keys up to
// i + diag (causal, diag = Sk - Sq) and from i + diag - window_left. A sub-problem of m = r1 - r0
// rows over keys [ks, ke) puts its row i' on key i' + (ke - ks) - m; with ke = r1 + diag that is
// key r0 + i' + diag - ks, the original alignment shifted by ks, so masks (and ALiBi distances)
// are unchanged. Keys past ke are exactly the ones causal masking hides from these rows, and
// keys before ks = r0 + diag - window_left are outside every row's window.
RowBlockResult prefill_row_block(const PrefillLayer& layer, int64_t b, int64_t r0, int64_t r1) {
  const int64_t q_row0 = layer.cu_seqlens[b];
  const int64_t sq = layer.cu_seqlens[b + 1] - q_row0;
  const int64_t sk = sq;  // self-attention prefill: the prompt's own keys
  const int64_t diag = sk - sq;
  const int64_t m = r1 - r0;
  const int64_t key_end = r1 + diag;
  const int64_t key_begin = layer.spec.window_left >= 0 ? std::max<int64_t>(0, r0 + diag - layer.spec.window_left) : 0;
  const int64_t keys = key_end - key_begin;
  const int64_t q_row_stride = kHeadsQ * kHeadDim, kv_row_stride = kHeadsKv * kHeadDim;

  std::vector<uint16_t> scratch_out(static_cast<size_t>(m * kHeadsQ * kHeadDim));
  AttnParams sub;
  sub.q = strided(element(layer.q, (q_row0 + r0) * q_row_stride), kDType, {1, m, kHeadsQ, kHeadDim},
                  {m * q_row_stride, q_row_stride, kHeadDim, 1});
  sub.k = strided(element(layer.k, (q_row0 + key_begin) * kv_row_stride), kDType, {1, keys, kHeadsKv, kHeadDim},
                  {keys * kv_row_stride, kv_row_stride, kHeadDim, 1});
  sub.v = strided(element(layer.v, (q_row0 + key_begin) * kv_row_stride), kDType, {1, keys, kHeadsKv, kHeadDim},
                  {keys * kv_row_stride, kv_row_stride, kHeadDim, 1});
  sub.out = TensorRef::contiguous(scratch_out.data(), kDType, {1, m, kHeadsQ, kHeadDim});
  sub.causal = true;
  sub.window_left = layer.spec.window_left;
  sub.sinks = layer.sinks.host_ref();
  const core::Problem problem = core::prepare_forward(sub, core::ValidateOptions{});

  const reference::ForwardResult ref64 = reference::forward(problem, reference::Precision::kFloat64);
  const reference::ForwardResult lowp = reference::forward(problem, reference::Precision::kInputDType);
  RowBlockResult result;
  result.ref64_out = ref64.out;
  result.lowp_out = lowp.out;
  result.ref64_lse = ref64.lse;
  result.lowp_lse = lowp.lse;
  const int64_t total_q = layer.cu_seqlens.back();
  for (int64_t i = 0; i < m; ++i) {
    const int64_t row = q_row0 + r0 + i;
    for (int64_t h = 0; h < kHeadsQ; ++h) {
      for (int64_t d = 0; d < kHeadDim; ++d) {
        result.got_out.push_back(layer.out.host_value((row * kHeadsQ + h) * kHeadDim + d));
      }
      result.got_lse.push_back(layer.lse.host_value(h * total_q + row));
    }
  }
  return result;
}

// Row blocks checked for one sequence: [start, end) pairs.
std::vector<std::pair<int64_t, int64_t>> checked_row_blocks(int64_t sq, uint64_t seed) {
  std::vector<std::pair<int64_t, int64_t>> blocks;
  if (sq <= kSuffixRows + kSampledRows) {
    if (sq > 0) blocks.emplace_back(0, sq);
    return blocks;
  }
  const int64_t suffix_start = sq - kSuffixRows;
  std::vector<int64_t> rows(static_cast<size_t>(suffix_start));
  std::iota(rows.begin(), rows.end(), 0);
  Rng rng(seed);
  for (int64_t i = 0; i < kSampledRows; ++i) std::swap(rows[i], rows[i + rng.below(suffix_start - i)]);
  rows.resize(kSampledRows);
  rows[0] = 0;  // the first row: one key only (plus the sink), the sharpest softmax
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  for (int64_t row : rows) blocks.emplace_back(row, row + 1);
  blocks.emplace_back(suffix_start, sq);
  return blocks;
}

PrefillLayer make_prefill_layer(int index, const LayerSpec& spec, Backend backend) {
  PrefillLayer layer;
  layer.index = index;
  layer.spec = spec;
  layer.cu_seqlens.push_back(0);
  for (int64_t length : kPromptLengths) layer.cu_seqlens.push_back(layer.cu_seqlens.back() + static_cast<int32_t>(length));
  const int64_t tokens = layer.cu_seqlens.back();
  const int64_t batch = static_cast<int64_t>(kPromptLengths.size());
  Rng rng(0xdec0de00u + static_cast<uint64_t>(index));
  layer.q = Tensor(kDType, {tokens, kHeadsQ, kHeadDim}, backend);
  layer.k = Tensor(kDType, {tokens, kHeadsKv, kHeadDim}, backend);
  layer.v = Tensor(kDType, {tokens, kHeadsKv, kHeadDim}, backend);
  layer.out = Tensor(kDType, {tokens, kHeadsQ, kHeadDim}, backend);
  layer.lse = Tensor(DType::kFloat32, {kHeadsQ, tokens}, backend);
  layer.cu_seqlens_q = Tensor(DType::kInt32, {batch + 1}, backend);
  layer.cu_seqlens_k = Tensor(DType::kInt32, {batch + 1}, backend);
  layer.q.fill_normal(rng);
  layer.k.fill_normal(rng);
  layer.v.fill_normal(rng);
  // NaN everywhere first: a row the kernel forgot to write cannot pass the check.
  layer.out.fill_value(std::numeric_limits<float>::quiet_NaN());
  layer.lse.fill_value(std::numeric_limits<float>::quiet_NaN());
  layer.cu_seqlens_q.fill_int32(layer.cu_seqlens);
  layer.cu_seqlens_k.fill_int32(layer.cu_seqlens);
  if (spec.sinks) {
    layer.sinks = Tensor(DType::kFloat32, {kHeadsQ}, backend);
    layer.sinks.fill_uniform(rng, -1.0f, 3.0f);
  }
  return layer;
}

AttnParams prefill_params(const PrefillLayer& layer) {
  AttnParams p;
  p.q = layer.q.ref();
  p.k = layer.k.ref();
  p.v = layer.v.ref();
  p.out = layer.out.ref();
  p.lse = layer.lse.ref();
  p.cu_seqlens_q = layer.cu_seqlens_q.ref();
  p.cu_seqlens_k = layer.cu_seqlens_k.ref();
  p.max_seqlen_q = p.max_seqlen_k = *std::max_element(kPromptLengths.begin(), kPromptLengths.end());
  p.causal = true;
  p.window_left = layer.spec.window_left;
  p.sinks = layer.sinks.ref();
  return p;
}

std::string layer_mask_name(const LayerSpec& spec) {
  if (spec.window_left < 0) return spec.sinks ? "causal + sinks" : "causal";
  return "causal, window " + std::to_string(spec.window_left) + (spec.sinks ? " + sinks" : "");
}

// ---------------------------------------------------------------------------------------------
// Paged cache and decode

struct PagedCache {
  int64_t num_blocks = 0, max_blocks_per_seq = 0;
  std::vector<int32_t> block_table;  // [batch, max_blocks_per_seq]
  Tensor k, v, table;
};

PagedCache make_paged_cache(Backend backend) {
  PagedCache cache;
  const int64_t batch = static_cast<int64_t>(kPromptLengths.size());
  std::vector<int64_t> pages;
  for (int64_t length : kPromptLengths) {
    pages.push_back((length + kDecodeSteps + kPageSize - 1) / kPageSize);
    cache.num_blocks += pages.back();
    cache.max_blocks_per_seq = std::max(cache.max_blocks_per_seq, pages.back());
  }
  // Pages handed out in shuffled order, as an allocator leaves them after a while of serving.
  std::vector<int32_t> free_pages(static_cast<size_t>(cache.num_blocks));
  std::iota(free_pages.begin(), free_pages.end(), 0);
  Rng rng(0x9a9ed);
  for (int64_t i = cache.num_blocks - 1; i > 0; --i) std::swap(free_pages[i], free_pages[rng.below(i + 1)]);
  cache.block_table.assign(static_cast<size_t>(batch * cache.max_blocks_per_seq), 0);
  size_t next = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t slot = 0; slot < pages[b]; ++slot) {
      cache.block_table[b * cache.max_blocks_per_seq + slot] = free_pages[next++];
    }
  }
  cache.k = Tensor(kDType, {cache.num_blocks, kPageSize, kHeadsKv, kHeadDim}, backend);
  cache.v = Tensor(kDType, {cache.num_blocks, kPageSize, kHeadsKv, kHeadDim}, backend);
  cache.k.fill_value(0.0f);
  cache.v.fill_value(0.0f);
  cache.table = Tensor(DType::kInt32, {batch, cache.max_blocks_per_seq}, backend);
  cache.table.fill_int32(cache.block_table);
  return cache;
}

// cos/sin tables [positions, head_dim / 2] for rotary over the whole head (GPT-NeoX layout).
void fill_rotary_tables(Tensor& cos_table, Tensor& sin_table, int64_t positions) {
  const int64_t half = kHeadDim / 2;
  for (int64_t pos = 0; pos < positions; ++pos) {
    for (int64_t t = 0; t < half; ++t) {
      const double inv_freq = std::pow(static_cast<double>(kRotaryTheta), -2.0 * t / kHeadDim);
      const double angle = static_cast<double>(pos) * inv_freq;
      core::store_from_float(cos_table.host(), pos * half + t, kDType, static_cast<float>(std::cos(angle)));
      core::store_from_float(sin_table.host(), pos * half + t, kDType, static_cast<float>(std::sin(angle)));
    }
  }
  cos_table.upload();
  sin_table.upload();
}

struct Outcome {
  std::string what;
  Verdict verdict;
};

void print_worst(const std::vector<Outcome>& outcomes) {
  const Outcome* worst = nullptr;
  double worst_margin = -1;
  for (const Outcome& o : outcomes) {
    const double margin = o.verdict.bound > 0 ? o.verdict.max_error / o.verdict.bound : 0;
    if (margin > worst_margin) {
      worst_margin = margin;
      worst = &o;
    }
  }
  if (worst != nullptr) {
    std::printf("           closest to its bound: %s, max|err| %.2e vs bound %.2e\n", worst->what.c_str(),
                worst->verdict.max_error, worst->verdict.bound);
  }
}

// State shared by the stages of one demo run.
struct DemoRun {
  Backend backend = Backend::kCpu;
  ExecContext ctx;
  int check_threads = 1;
  double check_seconds = 0;
  std::vector<Outcome> prefill, kv_write, decode;
  std::vector<std::string> skipped;  // stages this backend cannot serve, with the selector's reason
};

// Runs the prefill layers; returns the last one, whose K/V seed the decode cache.
PrefillLayer run_prefill(DemoRun& run) {
  const int64_t batch = static_cast<int64_t>(kPromptLengths.size());
  std::string lengths;
  for (int64_t length : kPromptLengths) lengths += (lengths.empty() ? "" : ", ") + std::to_string(length);
  std::printf("Prefill: one varlen batch of %lld prompts (%s = %lld tokens)\n", static_cast<long long>(batch),
              lengths.c_str(),
              static_cast<long long>(std::accumulate(kPromptLengths.begin(), kPromptLengths.end(), int64_t{0})));
  int64_t materialized = 0;
  for (int64_t length : kPromptLengths) materialized += materialized_score_bytes(kHeadsQ, length, length);

  PrefillLayer last;
  std::optional<int64_t> peak_scratch;
  double total_seconds = 0, total_flops = 0;
  bool header_printed = false, scratch_column = false;
  for (size_t li = 0; li < kLayers.size(); ++li) {
    PrefillLayer layer = make_prefill_layer(static_cast<int>(li), kLayers[li], run.backend);
    const AttnParams params = prefill_params(layer);
    const Selection selection = explain(params, Op::kForward, run.ctx);
    if (!selection.supported) {
      std::printf("  %-5zu  %-26s skipped: %s\n", li + 1, layer_mask_name(layer.spec).c_str(),
                  selection.reason.c_str());
      run.skipped.push_back("prefill layer " + std::to_string(li + 1) + ": " + selection.reason);
      if (li + 1 == kLayers.size()) last = std::move(layer);
      continue;
    }
    // A GPU's first launch of a kernel loads its module: keep that out of the timing.
    if (run.backend == Backend::kCuda) attention_forward(params, run.ctx);
    const auto start = Clock::now();
    attention_forward(params, run.ctx);
    synchronize(run.backend);
    layer.seconds = seconds_since(start);
    if (run.backend == Backend::kCpu) layer.scratch = cpu_last_scratch_bytes();
    if (layer.scratch) peak_scratch = std::max(peak_scratch.value_or(0), *layer.scratch);
    for (int64_t length : kPromptLengths) {
      layer.flops += forward_flops(attended_pairs(length, 0, length, layer.spec.window_left, 0), kHeadsQ, kHeadDim,
                                   kHeadDim);
    }
    total_seconds += layer.seconds;
    total_flops += layer.flops;
    if (!header_printed) {
      header_printed = true;
      scratch_column = layer.scratch.has_value();
      std::printf("  %-5s  %-26s %9s  %7s  %8s", "layer", "mask", "time", "GFLOP", "GFLOP/s");
      std::printf(scratch_column ? "  %9s\n" : "\n", "scratch");
    }
    std::printf("  %-5zu  %-26s %7.3f s  %7.1f  %8.1f", li + 1, layer_mask_name(layer.spec).c_str(), layer.seconds,
                layer.flops / 1e9, layer.flops / 1e9 / layer.seconds);
    if (scratch_column) {
      std::printf("  %9s", layer.scratch ? format_bytes(static_cast<double>(*layer.scratch)).c_str() : "-");
    }
    std::printf("    (%s)\n", selection.tier.c_str());
    std::fflush(stdout);

    // Checked now: the next layer brings new tensors.
    const auto check_start = Clock::now();
    layer.out.download();
    layer.lse.download();
    std::vector<std::vector<std::pair<int64_t, int64_t>>> blocks(static_cast<size_t>(batch));
    std::vector<std::vector<RowBlockResult>> results(static_cast<size_t>(batch));
    std::vector<std::function<void()>> jobs;
    for (int64_t b = 0; b < batch; ++b) {
      blocks[b] = checked_row_blocks(kPromptLengths[b], 0x5a3b1e00u + li * 16 + static_cast<uint64_t>(b));
      results[b].resize(blocks[b].size());
      for (size_t n = 0; n < blocks[b].size(); ++n) {
        jobs.emplace_back([&, b, n] {
          results[b][n] = prefill_row_block(layer, b, blocks[b][n].first, blocks[b][n].second);
        });
      }
    }
    run_parallel(jobs, run.check_threads);
    for (int64_t b = 0; b < batch; ++b) {
      Comparison out, lse;
      for (const RowBlockResult& r : results[b]) {
        out.append(r.got_out, r.ref64_out, r.lowp_out);
        lse.append(r.got_lse, r.ref64_lse, r.lowp_lse);
      }
      run.prefill.push_back(
          {"layer " + std::to_string(li + 1) + ", prompt of " + std::to_string(kPromptLengths[b]) + " tokens",
           combine(out.judge(2.0), lse.judge(2.0))});
    }
    run.check_seconds += seconds_since(check_start);
    if (li + 1 == kLayers.size()) last = std::move(layer);
  }
  if (total_seconds > 0) {
    std::printf("  all    %-26s %7.3f s  %7.1f  %8.1f\n", "", total_seconds, total_flops / 1e9,
                total_flops / 1e9 / total_seconds);
  }
  std::printf("  memory: materialised attention would hold %s of fp32 scores per layer (Sq x Sk per head);\n",
              format_bytes(static_cast<double>(materialized)).c_str());
  if (peak_scratch) {
    std::printf("          this run's scratch peaked at %s\n", format_bytes(static_cast<double>(*peak_scratch)).c_str());
  } else {
    std::printf("          flash attention keeps only O(tokens) state (LSE and per-tile buffers)\n");
  }
  return last;
}

// Writes the prompt's K/V into the paged cache with one paged_kv_write call. When the backend
// cannot, the cache is filled on the host (by the reference's exact copy) so decoding still runs.
void run_kv_write(DemoRun& run, const PrefillLayer& last, PagedCache& cache) {
  const int64_t batch = static_cast<int64_t>(kPromptLengths.size());
  Tensor zero_lengths(DType::kInt32, {batch}, run.backend);
  zero_lengths.fill_int32(std::vector<int32_t>(static_cast<size_t>(batch), 0));

  std::vector<uint8_t> expected_k(static_cast<size_t>(cache.k.bytes()), 0);
  std::vector<uint8_t> expected_v(static_cast<size_t>(cache.v.bytes()), 0);
  KvWriteParams host_write;
  host_write.k_cache = TensorRef::contiguous(expected_k.data(), kDType, {cache.num_blocks, kPageSize, kHeadsKv, kHeadDim});
  host_write.v_cache = TensorRef::contiguous(expected_v.data(), kDType, {cache.num_blocks, kPageSize, kHeadsKv, kHeadDim});
  host_write.k_new = last.k.host_ref();
  host_write.v_new = last.v.host_ref();
  host_write.block_table = cache.table.host_ref();
  host_write.cache_seqlens = zero_lengths.host_ref();
  host_write.cu_seqlens_new = last.cu_seqlens_k.host_ref();
  reference::paged_kv_write(core::prepare_kv_write(host_write, core::ValidateOptions{}));

  KvWriteParams write;
  write.k_cache = cache.k.ref();
  write.v_cache = cache.v.ref();
  write.k_new = last.k.ref();
  write.v_new = last.v.ref();
  write.block_table = cache.table.ref();
  write.cache_seqlens = zero_lengths.ref();
  write.cu_seqlens_new = last.cu_seqlens_k.ref();
  std::printf("\nKV write: the last layer's %lld prompt tokens into a paged cache (page %lld, %lld pages,\n"
              "          shuffled block table) with one paged_kv_write call: ",
              static_cast<long long>(last.cu_seqlens.back()), static_cast<long long>(kPageSize),
              static_cast<long long>(cache.num_blocks));
  try {
    const auto start = Clock::now();
    paged_kv_write(write, run.ctx);
    synchronize(run.backend);
    std::printf("%.2f ms\n", seconds_since(start) * 1e3);
  } catch (const Error& e) {
    std::printf("skipped: %s\n          (the cache is filled on the host instead)\n", e.what());
    run.skipped.push_back(std::string("paged_kv_write: ") + e.what());
    cache.k.restore(expected_k);
    cache.v.restore(expected_v);
    return;
  }
  const auto check_start = Clock::now();
  Outcome outcome{"paged_kv_write", Verdict{}};
  outcome.verdict.pass = cache.k.snapshot() == expected_k && cache.v.snapshot() == expected_v;
  outcome.verdict.elements = cache.k.numel() + cache.v.numel();
  if (!outcome.verdict.pass) outcome.verdict.message = "the paged caches differ from the reference's copy";
  run.kv_write.push_back(outcome);
  run.check_seconds += seconds_since(check_start);
}

constexpr int64_t kGroup = kHeadsQ / kHeadsKv;

void run_decode(DemoRun& run, PagedCache& cache) {
  const int64_t batch = static_cast<int64_t>(kPromptLengths.size());
  const Backend backend = run.backend;
  const int64_t max_prompt = *std::max_element(kPromptLengths.begin(), kPromptLengths.end());
  const int64_t rotary_positions = max_prompt + kDecodeSteps;
  Tensor rotary_cos(kDType, {rotary_positions, kHeadDim / 2}, backend);
  Tensor rotary_sin(kDType, {rotary_positions, kHeadDim / 2}, backend);
  fill_rotary_tables(rotary_cos, rotary_sin, rotary_positions);
  Tensor q(kDType, {batch, 1, kHeadsQ, kHeadDim}, backend);
  Tensor k_new(kDType, {batch, 1, kHeadsKv, kHeadDim}, backend);
  Tensor v_new(kDType, {batch, 1, kHeadsKv, kHeadDim}, backend);
  Tensor out(kDType, {batch, 1, kHeadsQ, kHeadDim}, backend);
  Tensor lse(DType::kFloat32, {batch, kHeadsQ, 1}, backend);
  Tensor cache_seqlens(DType::kInt32, {batch}, backend);
  std::vector<int32_t> lengths_now(kPromptLengths.begin(), kPromptLengths.end());
  cache_seqlens.fill_int32(lengths_now);

  AttnParams decode;
  decode.q = q.ref();
  decode.k = cache.k.ref();
  decode.v = cache.v.ref();
  decode.out = out.ref();
  decode.lse = lse.ref();
  decode.block_table = cache.table.ref();
  decode.cache_seqlens = cache_seqlens.ref();
  decode.k_new = k_new.ref();
  decode.v_new = v_new.ref();
  decode.rotary_cos = rotary_cos.ref();
  decode.rotary_sin = rotary_sin.ref();
  decode.rotary_interleaved = false;
  decode.causal = true;

  std::printf("\nDecode: %lld steps x %lld sequences with attention_kvcache on the paged cache: each step appends one\n"
              "        token per sequence (k, v) and rotates q and k with rotary embeddings (NeoX, theta %.0f)\n",
              static_cast<long long>(kDecodeSteps), static_cast<long long>(batch), kRotaryTheta);
  const Selection selection = explain(decode, Op::kKvCache, run.ctx);
  if (!selection.supported) {
    std::printf("  skipped: %s\n", selection.reason.c_str());
    run.skipped.push_back("decode: " + selection.reason);
    return;
  }

  // The reference keeps its own two caches (float64 and bf16 runs), starting from the written
  // prompt and appending each step's tokens itself, so the library's appends are checked too.
  std::vector<uint8_t> ref64_k = cache.k.snapshot(), ref64_v = cache.v.snapshot();
  std::vector<uint8_t> lowp_k = ref64_k, lowp_v = ref64_v;
  // It attends with query heads r, r + G, r + 2G, ... (G = Hq / Hkv): one per KV head, so it
  // still appends every KV head, at 1/G of the cost. r rotates with the step, so every query head
  // is checked every G steps.
  const auto reference_problem = [&](uint8_t* k_cache, uint8_t* v_cache, int64_t r) {
    const int64_t q_row = kHeadsQ * kHeadDim;
    AttnParams p;
    p.q = strided(element(q, r * kHeadDim), kDType, {batch, 1, kHeadsKv, kHeadDim},
                  {q_row, q_row, kGroup * kHeadDim, 1});
    p.out = strided(element(out, r * kHeadDim), kDType, {batch, 1, kHeadsKv, kHeadDim},
                    {q_row, q_row, kGroup * kHeadDim, 1});
    p.k = TensorRef::contiguous(k_cache, kDType, {cache.num_blocks, kPageSize, kHeadsKv, kHeadDim});
    p.v = TensorRef::contiguous(v_cache, kDType, {cache.num_blocks, kPageSize, kHeadsKv, kHeadDim});
    p.block_table = cache.table.host_ref();
    p.cache_seqlens = cache_seqlens.host_ref();
    p.k_new = k_new.host_ref();
    p.v_new = v_new.host_ref();
    p.rotary_cos = rotary_cos.host_ref();
    p.rotary_sin = rotary_sin.host_ref();
    p.rotary_interleaved = decode.rotary_interleaved;
    p.causal = decode.causal;
    return core::prepare_kvcache(p, core::ValidateOptions{});
  };

  Rng rng(0xdec0de);
  double seconds = 0, flops = 0, kv_bytes_read = 0;
  std::optional<int64_t> scratch;
  for (int64_t step = 0; step < kDecodeSteps; ++step) {
    q.fill_normal(rng);
    k_new.fill_normal(rng);
    v_new.fill_normal(rng);
    out.fill_value(std::numeric_limits<float>::quiet_NaN());
    lse.fill_value(std::numeric_limits<float>::quiet_NaN());
    cache_seqlens.fill_int32(lengths_now);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t keys = lengths_now[b] + 1;
      flops += forward_flops(keys, kHeadsQ, kHeadDim, kHeadDim);
      kv_bytes_read += static_cast<double>(keys * kHeadsKv * 2 * kHeadDim * dtype_size(kDType));
    }

    const auto start = Clock::now();
    attention_kvcache(decode, run.ctx);
    synchronize(backend);
    seconds += seconds_since(start);
    if (backend == Backend::kCpu) {
      if (const auto bytes = cpu_last_scratch_bytes()) scratch = std::max(scratch.value_or(0), *bytes);
    }

    const auto check_start = Clock::now();
    out.download();
    lse.download();
    const int64_t r = step % kGroup;
    reference::ForwardResult ref64, lowp;
    run_parallel({[&] {
                    ref64 = reference::kvcache(reference_problem(ref64_k.data(), ref64_v.data(), r),
                                               reference::Precision::kFloat64);
                  },
                  [&] {
                    lowp = reference::kvcache(reference_problem(lowp_k.data(), lowp_v.data(), r),
                                              reference::Precision::kInputDType);
                  }},
                 run.check_threads);
    std::vector<double> got_out, got_lse;
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t g = 0; g < kHeadsKv; ++g) {
        const int64_t h = g * kGroup + r;
        for (int64_t d = 0; d < kHeadDim; ++d) got_out.push_back(out.host_value((b * kHeadsQ + h) * kHeadDim + d));
        got_lse.push_back(lse.host_value(b * kHeadsQ + h));
      }
    }
    Comparison out_cmp, lse_cmp;
    out_cmp.append(got_out, ref64.out, lowp.out);
    lse_cmp.append(got_lse, ref64.lse, lowp.lse);
    run.decode.push_back({"decode step " + std::to_string(step + 1), combine(out_cmp.judge(2.0), lse_cmp.judge(2.0))});
    run.check_seconds += seconds_since(check_start);

    for (int32_t& length : lengths_now) ++length;
  }

  const double tokens = static_cast<double>(batch * kDecodeSteps);
  std::printf("  context %lld..%lld keys   %.3f s total   %.2f ms/step   %.0f tokens/s\n",
              static_cast<long long>(*std::min_element(kPromptLengths.begin(), kPromptLengths.end()) + 1),
              static_cast<long long>(max_prompt + kDecodeSteps), seconds, seconds * 1e3 / kDecodeSteps,
              tokens / seconds);
  std::printf("  %.1f GFLOP/s   KV read %.1f GB/s", flops / 1e9 / seconds, kv_bytes_read / 1e9 / seconds);
  if (scratch) std::printf("   scratch %s", format_bytes(static_cast<double>(*scratch)).c_str());
  std::printf("    (%s)\n", selection.tier.c_str());
}

// Prints what was checked and the verdict; returns the exit status.
int report(const DemoRun& run, Clock::time_point demo_start) {
  std::printf("\nChecks against the float64 reference (SPEC §6: max|x - ref64| <= 2 max|ref_bf16 - ref64| + 1e-6,\n"
              "for out and lse):\n");
  std::printf("  prefill  %zu results (layers x prompts): per prompt, the last %lld query rows and %lld sampled\n"
              "           rows with all %lld heads, each computed as an exact sub-problem over the keys those\n"
              "           rows see (same bottom-right alignment); prompts of <= %lld tokens in full\n",
              run.prefill.size(), static_cast<long long>(kSuffixRows), static_cast<long long>(kSampledRows),
              static_cast<long long>(kHeadsQ), static_cast<long long>(kSuffixRows + kSampledRows));
  print_worst(run.prefill);
  std::printf("  kv write %zu result: the whole paged cache, bit for bit\n", run.kv_write.size());
  std::printf("  decode   %zu results: every step, all sequences, %lld of the %lld query heads (one per KV head,\n"
              "           rotating: each head every %lld steps); the reference appends to its own copy of the cache\n",
              run.decode.size(), static_cast<long long>(kHeadsKv), static_cast<long long>(kHeadsQ),
              static_cast<long long>(kGroup));
  print_worst(run.decode);
  std::printf("  reference checks took %.1f s; the demo %.1f s in all\n\n", run.check_seconds, seconds_since(demo_start));

  std::vector<const Outcome*> failures;
  size_t total = 0;
  for (const auto* group : {&run.prefill, &run.kv_write, &run.decode}) {
    for (const Outcome& o : *group) {
      ++total;
      if (!o.verdict.pass) failures.push_back(&o);
    }
  }
  if (!run.skipped.empty()) {
    std::printf("%zu stage(s) skipped, not supported by the %s backend:\n", run.skipped.size(),
                backend_name(run.backend));
    for (const std::string& why : run.skipped) std::printf("  %s\n", why.c_str());
  }
  if (failures.empty()) {
    std::printf("all %zu results match the float64 reference\n", total);
    return 0;
  }
  for (const Outcome* o : failures) std::printf("MISMATCH %s: %s\n", o->what.c_str(), o->verdict.message.c_str());
  std::printf("%zu of %zu results do not match the float64 reference\n", failures.size(), total);
  return 1;
}

}  // namespace

int run_demo(const std::vector<std::string>& args) {
  std::string backend_flag = "auto";
  int64_t threads = 0;
  FlagSet flags("demo", "flashsdpa demo [--backend cpu|cuda|auto] [--threads N]",
                "Runs a realistic workload (a varlen prefill batch through full-causal and sliding-window\n"
                "+ sinks layers, then paged-KV decoding with rotary), reports time, throughput and memory,\n"
                "and checks every result against the float64 reference. Exit status 1 on any mismatch;\n"
                "stages the backend cannot serve are skipped and listed.");
  flags.add_choice("backend", &backend_flag, {"cpu", "cuda", "auto"},
                   "auto: CUDA when built with it and a GPU is present, else CPU");
  flags.add_int("threads", &threads, 0, "CPU worker threads (and reference-check threads); 0 uses every hardware thread");
  if (!flags.parse(args)) return 0;

  const auto demo_start = Clock::now();
  DemoRun run;
  run.backend = resolve_backend(parse_backend(backend_flag));
  run.ctx.backend = run.backend;
  run.ctx.num_threads = static_cast<int>(threads);
  run.check_threads = threads > 0 ? static_cast<int>(threads)
                                  : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const std::string where =
      run.backend == Backend::kCpu ? std::to_string(run.check_threads) + " threads" : std::string("GPU");
  std::printf("flashsdpa %s demo: backend %s (%s), bf16, Hq %lld / Hkv %lld (GQA), head dim %lld\n\n", version(),
              backend_name(run.backend), where.c_str(), static_cast<long long>(kHeadsQ),
              static_cast<long long>(kHeadsKv), static_cast<long long>(kHeadDim));

  PrefillLayer last = run_prefill(run);
  PagedCache cache = make_paged_cache(run.backend);
  run_kv_write(run, last, cache);
  run_decode(run, cache);
  return report(run, demo_start);
}

}  // namespace flashsdpa::cli
