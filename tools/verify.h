// Comparison against the float64 reference (SPEC §6) and the accounting the tool reports next to
// timings: exact FLOP counts under masks, the memory materialised attention would need, and the
// CPU backend's scratch high-water mark.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/mask.h"
#include "cpu/cpu_backend.h"

namespace flashsdpa::cli {

// The outcome of one SPEC §6 comparison, with the numbers behind it for display.
struct Verdict {
  bool pass = true;
  double max_error = 0.0;  // max |got - ref64| over finite reference elements
  double bound = 0.0;      // factor * max |lowp - ref64| + 1e-6
  int64_t elements = 0;
  std::string message;     // reference::check_close's explanation when it fails
};

// Accumulates (got, ref64, lowp) triples of one result, so a result checked through several
// sub-problems is judged once, with one bound, as the rule asks.
struct Comparison {
  std::vector<double> got, ref64, lowp;
  void append(const std::vector<double>& got_part, const std::vector<double>& ref64_part,
              const std::vector<double>& lowp_part);
  Verdict judge(double factor) const;
};

// Combines the verdicts of several tensors of one result (out and lse): fails if any fails, and
// reports the one closest to (or furthest past) its bound.
Verdict combine(const Verdict& a, const Verdict& b);

// Query-key pairs a sequence attends under a mask (core::Mask, the library's one definition).
int64_t attended_pairs(int64_t seqlen_q, int64_t key_begin, int64_t key_end, int64_t window_left,
                       int64_t window_right);

// Forward: two matmuls, QK^T (2 Dqk per pair) and PV (2 Dv per pair).
inline double forward_flops(int64_t pairs, int64_t heads_q, int64_t head_dim_qk, int64_t head_dim_v) {
  return 2.0 * static_cast<double>(pairs) * static_cast<double>(heads_q) *
         static_cast<double>(head_dim_qk + head_dim_v);
}
// Backward: QK^T recomputed, dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q.
inline double backward_flops(int64_t pairs, int64_t heads_q, int64_t head_dim_qk, int64_t head_dim_v) {
  return 2.0 * static_cast<double>(pairs) * static_cast<double>(heads_q) *
         static_cast<double>(3 * head_dim_qk + 2 * head_dim_v);
}

// What eager attention allocates for one sequence: the fp32 score matrix of every head.
inline int64_t materialized_score_bytes(int64_t heads_q, int64_t seqlen_q, int64_t seqlen_k) {
  return heads_q * seqlen_q * seqlen_k * static_cast<int64_t>(sizeof(float));
}

std::string format_bytes(double bytes);

}  // namespace flashsdpa::cli

// ---------------------------------------------------------------------------------------------
// The CPU backend's scratch high-water mark of its last call, when the backend reports one.
// cpu::last_scratch_bytes() is optional in cpu_backend.h; the lookup below finds it when it is
// declared and otherwise falls back to an overload that says "not reported", so the tool builds
// either way. Both candidates enter by using-directives from namespaces that, like cpu, sit
// directly in flashsdpa: unqualified lookup then sees them in one scope and overload resolution
// prefers the real function over the template.
namespace flashsdpa {
namespace cli_scratch_fallback {
struct NotReported {};
template <typename... Ignored>
NotReported last_scratch_bytes(Ignored...) {
  return {};
}
}  // namespace cli_scratch_fallback

namespace cli_scratch_lookup {
using namespace ::flashsdpa::cpu;
using namespace ::flashsdpa::cli_scratch_fallback;
inline auto query() { return last_scratch_bytes(); }
}  // namespace cli_scratch_lookup

namespace cli {
inline std::optional<int64_t> scratch_or_none(cli_scratch_fallback::NotReported) { return std::nullopt; }
template <typename Bytes>
std::optional<int64_t> scratch_or_none(Bytes bytes) {
  return static_cast<int64_t>(bytes);
}
inline std::optional<int64_t> cpu_last_scratch_bytes() { return scratch_or_none(cli_scratch_lookup::query()); }
}  // namespace cli
}  // namespace flashsdpa
