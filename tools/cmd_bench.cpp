// flashsdpa bench: times one configuration. With --json it prints exactly one JSON object line;
// its keys are a stable interface (comparison scripts parse them): the configuration echoed,
// median_ms, min_ms, mean_ms, flops, gflops, scratch_bytes, materialized_scores_bytes.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_flags.h"
#include "commands.h"
#include "core/validate.h"
#include "reference/reference.h"
#include "verify.h"
#include "workload.h"

namespace flashsdpa::cli {
namespace {

// One flat JSON object, keys in insertion order.
class JsonLine {
 public:
  void add(const std::string& key, const std::string& value) { field(key) << '"' << value << '"'; }
  void add(const std::string& key, const char* value) { add(key, std::string(value)); }
  void add(const std::string& key, bool value) { field(key) << (value ? "true" : "false"); }
  void add(const std::string& key, int64_t value) { field(key) << value; }
  void add(const std::string& key, double value) {
    if (std::isfinite(value)) {
      char text[32];
      std::snprintf(text, sizeof(text), "%.6g", value);
      field(key) << text;
    } else {
      field(key) << "null";
    }
  }
  void add_null(const std::string& key) { field(key) << "null"; }
  std::string str() const { return "{" + body_.str() + "}"; }

 private:
  std::ostringstream& field(const std::string& key) {
    if (!first_) body_ << ", ";
    first_ = false;
    body_ << '"' << key << "\": ";
    return body_;
  }
  std::ostringstream body_;
  bool first_ = true;
};

// SPEC §6 check of the whole problem against the reference; the reference runs in plain loops,
// so this is meant for modest shapes.
Verdict check_workload(Workload& w) {
  w.out.download();
  w.lse.download();
  const AttnParams host = w.params(/*host=*/true);
  const core::ValidateOptions options;
  if (w.op == Op::kBackward) {
    w.dq.download();
    w.dk.download();
    w.dv.download();
    if (!w.dsinks.empty()) w.dsinks.download();
    const core::BwdProblem problem = core::prepare_backward(w.backward_params(true), options);
    const reference::BackwardResult ref64 = reference::backward(problem, reference::Precision::kFloat64);
    const reference::BackwardResult lowp = reference::backward(problem, reference::Precision::kInputDType);
    Verdict verdict;
    const std::pair<const Tensor*, std::pair<const std::vector<double>*, const std::vector<double>*>> grads[] = {
        {&w.dq, {&ref64.dq, &lowp.dq}}, {&w.dk, {&ref64.dk, &lowp.dk}}, {&w.dv, {&ref64.dv, &lowp.dv}},
        {&w.dsinks, {&ref64.dsinks, &lowp.dsinks}}};
    for (const auto& [tensor, refs] : grads) {
      if (tensor->empty()) continue;
      Comparison c;
      c.append(tensor->host_values(), *refs.first, *refs.second);
      verdict = combine(verdict, c.judge(3.0));
    }
    return verdict;
  }
  const core::Problem problem =
      w.op == Op::kKvCache ? core::prepare_kvcache(host, options) : core::prepare_forward(host, options);
  const auto run_reference = [&](reference::Precision precision) {
    return w.op == Op::kKvCache ? reference::kvcache(problem, precision) : reference::forward(problem, precision);
  };
  const reference::ForwardResult ref64 = run_reference(reference::Precision::kFloat64);
  const reference::ForwardResult lowp = run_reference(reference::Precision::kInputDType);
  Comparison out;
  out.append(w.out.host_values(), ref64.out, lowp.out);
  // The library's lse is [B, Hq, Sq]; the reference's is by query row, then head.
  const ShapeConfig& c = w.config;
  std::vector<double> got_lse(ref64.lse.size());
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads_q; ++h)
      for (int64_t i = 0; i < c.seqlen_q; ++i)
        got_lse[(b * c.seqlen_q + i) * c.heads_q + h] = w.lse.host_value((b * c.heads_q + h) * c.seqlen_q + i);
  Comparison lse;
  lse.append(got_lse, ref64.lse, lowp.lse);
  return combine(out.judge(2.0), lse.judge(2.0));
}

}  // namespace

int run_bench(const std::vector<std::string>& args) {
  ShapeConfig config;
  int64_t iters = 10, warmup = 2;
  bool json = false, check = false;
  FlagSet flags("bench", "flashsdpa bench [flags]",
                "Times one attention call: the median of --iters runs after --warmup untimed ones.\n"
                "Inputs are deterministic random values; FLOPs are counted exactly under the mask.");
  flags.add_choice("op", &config.op, {"forward", "kvcache", "backward"},
                   "forward; kvcache (q attends a cache of seqlen-k keys); backward (dq, dk, dv)");
  add_shape_flags(flags, &config);
  flags.add_int("iters", &iters, 1, "timed iterations");
  flags.add_int("warmup", &warmup, 0, "untimed iterations first");
  flags.add_switch("json", &json, "print one JSON object line instead of the table");
  flags.add_switch("check", &check, "also check the result against the float64 reference (slow for big shapes)");
  if (!flags.parse(args)) return 0;

  const Backend backend = resolve_backend(parse_backend(config.backend));
  Workload w = make_workload(config, backend, /*fill=*/true);
  const Selection selection = explain(w.params(), w.op, w.context());
  if (!selection.supported) {
    std::fprintf(stderr, "flashsdpa bench: not supported: %s\n", selection.reason.c_str());
    return 1;
  }

  for (int64_t i = 0; i < warmup; ++i) w.run();
  synchronize(backend);
  std::vector<double> ms;
  std::optional<int64_t> scratch;
  for (int64_t i = 0; i < iters; ++i) {
    const auto start = std::chrono::steady_clock::now();
    w.run();
    synchronize(backend);
    const auto stop = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
    // The CPU backend reports the scratch of its forward and KV-cache calls.
    if (backend == Backend::kCpu && w.op != Op::kBackward) {
      if (const auto bytes = cpu_last_scratch_bytes()) scratch = std::max(scratch.value_or(0), *bytes);
    }
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  const double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  double mean = 0;
  for (double t : ms) mean += t / static_cast<double>(n);
  const double flops = w.flops();
  const double gflops = median > 0 ? flops / (median * 1e6) : 0.0;

  std::optional<Verdict> verdict;
  if (check) verdict = check_workload(w);

  if (json) {
    JsonLine line;
    line.add("op", config.op);
    line.add("backend", backend_name(selection.backend));
    line.add("tier", selection.tier);
    line.add("dtype", config.dtype);
    line.add("batch", config.batch);
    line.add("hq", config.heads_q);
    line.add("hkv", config.heads_kv);
    line.add("seqlen_q", config.seqlen_q);
    line.add("seqlen_k", config.keys());
    line.add("head_dim", config.head_dim);
    line.add("head_dim_v", config.value_dim());
    line.add("causal", config.causal);
    line.add("window_left", config.window_left);
    line.add("window_right", config.window_right);
    line.add("softcap", config.softcap);
    line.add("sinks", config.sinks);
    line.add("alibi", config.alibi);
    line.add("paged_block", config.paged_block);
    line.add("threads", config.threads > 0 ? config.threads
                                           : static_cast<int64_t>(std::thread::hardware_concurrency()));
    line.add("iters", iters);
    line.add("warmup", warmup);
    line.add("median_ms", median);
    line.add("min_ms", sorted.front());
    line.add("mean_ms", mean);
    line.add("flops", flops);
    line.add("gflops", gflops);
    if (scratch) line.add("scratch_bytes", *scratch);
    else line.add_null("scratch_bytes");
    line.add("materialized_scores_bytes", w.materialized_bytes());
    if (verdict) {
      line.add("check", verdict->pass ? "pass" : "fail");
      line.add("max_error", verdict->max_error);
      line.add("error_bound", verdict->bound);
    }
    std::printf("%s\n", line.str().c_str());
  } else {
    std::printf("flashsdpa bench: %s\n", config.describe().c_str());
    std::printf("  backend    %s, tier %s\n", backend_name(selection.backend), selection.tier.c_str());
    std::printf("  why        %s\n", selection.reason.c_str());
    std::printf("  time       median %.3f ms, min %.3f ms, mean %.3f ms  (%lld timed runs after %lld warm-up)\n",
                median, sorted.front(), mean, static_cast<long long>(iters), static_cast<long long>(warmup));
    std::printf("  compute    %.4g GFLOP per call (exact, under the mask) -> %.1f GFLOP/s\n", flops / 1e9, gflops);
    std::printf("  memory     scratch %s; materialised fp32 scores would need %s\n",
                scratch ? format_bytes(static_cast<double>(*scratch)).c_str() : "not reported by this backend",
                format_bytes(static_cast<double>(w.materialized_bytes())).c_str());
    if (verdict) {
      std::printf("  check      %s: max |x - ref64| = %.3g, bound %.3g (SPEC §6, %lld elements)\n",
                  verdict->pass ? "pass" : "FAIL", verdict->max_error, verdict->bound,
                  static_cast<long long>(verdict->elements));
      if (!verdict->pass) std::printf("             %s\n", verdict->message.c_str());
    }
  }
  return verdict && !verdict->pass ? 1 : 0;
}

}  // namespace flashsdpa::cli
