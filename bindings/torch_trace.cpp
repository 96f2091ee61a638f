#include "torch_trace.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include "core/text.h"
#include <utility>
#include <vector>

namespace flashsdpa::torch_binding {
namespace {

bool env_trace_requested() {
  const char* value = std::getenv("FLASHSDPA_TRACE");
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0 &&
         std::strcmp(value, "off") != 0 && std::strcmp(value, "false") != 0;
}

std::atomic<bool>& enabled_flag() {
  static std::atomic<bool> flag{env_trace_requested()};
  return flag;
}

struct Counts {
  std::mutex mutex;
  std::map<std::string, int64_t> calls;  // formatted combination -> calls
};

Counts& counts() {
  static Counts instance;
  return instance;
}

// Key lengths are upper bounds for every layout but the batched one (varlen: the max_seqlen hint
// or the packed total; paged and caches: the capacity); the features column says which it is.
struct Lengths {
  int64_t sq = 0, sk = 0;
};

Lengths lengths_of(const AttnParams& p, Op op) {
  Lengths len;
  const bool varlen_q = p.q.rank == 3;
  len.sq = varlen_q ? (p.max_seqlen_q >= 0 ? p.max_seqlen_q : p.q.shape[0]) : p.q.shape[1];
  if (p.block_table.defined()) {
    len.sk = p.block_table.shape[1] * p.k.shape[1];
  } else if (op == Op::kKvCache) {
    len.sk = p.k.shape[1];
  } else if (p.k.rank == 3) {
    len.sk = p.max_seqlen_k >= 0 ? p.max_seqlen_k : p.k.shape[0];
  } else {
    len.sk = p.k.shape[1];
  }
  return len;
}

std::string features_of(const AttnParams& p, Op op) {
  std::vector<std::string> f;
  const int64_t heads_q = p.q.shape[p.q.rank - 2];
  const int64_t heads_kv = p.k.shape[p.k.rank - 2];
  if (op == Op::kKvCache) f.push_back(p.block_table.defined() ? "kvcache-paged" : "kvcache");
  else if (p.block_table.defined()) f.push_back("paged");
  if (p.cu_seqlens_q.defined() || p.cu_seqlens_k.defined()) f.push_back("varlen");
  if (p.seqused_k.defined()) f.push_back("seqused_k");
  if (p.k_new.defined()) f.push_back("append");
  if (p.rotary_cos.defined()) f.push_back(p.rotary_interleaved ? "rotary" : "rotary-neox");
  if (p.cache_leftpad.defined()) f.push_back("leftpad");
  if (p.causal) f.push_back("causal");
  if (p.window_left >= 0 || p.window_right >= 0) {
    f.push_back("window(" + std::to_string(p.window_left) + "," + std::to_string(p.window_right) + ")");
  }
  if (p.softcap > 0.0f) f.push_back("softcap");
  if (p.alibi_slopes.defined()) f.push_back("alibi");
  if (p.sinks.defined()) f.push_back("sinks");
  if (heads_kv > 0 && heads_q != heads_kv) f.push_back("gqa" + std::to_string(heads_q / heads_kv));
  if (f.empty()) return "-";
  std::string joined;
  for (const auto& item : f) joined += (joined.empty() ? "" : ",") + item;
  return joined;
}

void add(std::string key) {
  Counts& c = counts();
  std::lock_guard<std::mutex> lock(c.mutex);
  ++c.calls[std::move(key)];
}

}  // namespace

bool trace_enabled() { return enabled_flag().load(std::memory_order_relaxed); }
void trace_set_enabled(bool enabled) { enabled_flag().store(enabled, std::memory_order_relaxed); }

void trace_reset() {
  Counts& c = counts();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.calls.clear();
}

void trace_record(const char* op_name, const AttnParams& params, Op op, const ExecContext& ctx) {
  if (!trace_enabled()) return;
  // explain() re-validates without reading device-resident index values (ctx.check is off
  // unless the caller asked for it), so tracing never adds a host synchronisation.
  const Selection selection = explain(params, op, ctx);
  const Lengths len = lengths_of(params, op);
  core::Text key;
  key << op_name << ' ' << dtype_name(params.q.dtype) << " Dqk=" << params.q.shape[params.q.rank - 1]
      << " Dv=" << params.v.shape[params.v.rank - 1] << " Sq=" << len.sq << " Sk=" << len.sk << ' '
      << features_of(params, op) << " -> " << backend_name(selection.backend) << '/'
      << (selection.tier.empty() ? "?" : selection.tier);
  add(key.str());
}

void trace_record_kv_write(const KvWriteParams& params, const ExecContext& ctx) {
  if (!trace_enabled()) return;
  core::Text key;
  key << "paged_kv_write " << dtype_name(params.k_new.dtype)
      << " Dqk=" << params.k_new.shape[params.k_new.rank - 1]
      << " Dv=" << params.v_new.shape[params.v_new.rank - 1]
      << " block_size=" << params.k_cache.shape[1]
      << (params.cu_seqlens_new.defined() ? " varlen" : " batched") << " -> "
      << backend_name(ctx.backend);
  add(key.str());
}

std::string trace_report() {
  std::vector<std::pair<std::string, int64_t>> rows;
  int64_t total = 0;
  {
    Counts& c = counts();
    std::lock_guard<std::mutex> lock(c.mutex);
    for (const auto& entry : c.calls) {
      rows.emplace_back(entry.first, entry.second);
      total += entry.second;
    }
  }
  if (rows.empty()) return "";
  std::stable_sort(rows.begin(), rows.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  core::Text out;
  out << "[FLASHSDPA_TRACE] " << total << " call(s), " << rows.size()
      << " distinct op/shape/tier combination(s):\n";
  for (const auto& row : rows) {
    std::string calls = std::to_string(row.second);
    out << "  calls=" << calls << std::string(calls.size() < 7 ? 7 - calls.size() : 1, ' ')
        << row.first << '\n';
  }
  return out.str();
}

}  // namespace flashsdpa::torch_binding
