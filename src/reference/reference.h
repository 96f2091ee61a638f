// The float64 reference of SPEC §2–4: a plain, unfused implementation that materialises one row
// of scores at a time. Clarity over speed; every mask, modifier, sequence geometry and rotary
// definition comes from src/core so the reference cannot drift from the backends.
//
// Two precisions share one code path:
//   kFloat64     inputs read exactly, all arithmetic in double (the "ref64" of SPEC §6).
//   kInputDType  "ref_lowp": inputs read in their dtype, fp32 arithmetic, and scores,
//                probabilities and outputs rounded to the input dtype after each step, the way a
//                plain framework implementation in that dtype behaves. fp32 inputs give plain
//                fp32 math.
//
// Results are dense, independent of the strides of the problem:
//   query-side rows r: b * seqlen_q + i (batched q) or the packed row (varlen q)
//   key-side rows:     b * seqlen_k + j (batched), the packed row (varlen),
//                      block * block_size + slot (paged), cache_row * cache_capacity + j (dense cache)
#pragma once

#include <string>
#include <vector>

#include "core/problem.h"

namespace flashsdpa::reference {

enum class Precision { kFloat64, kInputDType };

struct ForwardResult {
  std::vector<double> out;  // out[((r * Hq) + h) * Dv + d]
  std::vector<double> lse;  // lse[r * Hq + h]; -inf for rows that see no key and no sink
};

// p must be validated (core::prepare_forward).
ForwardResult forward(const core::Problem& p, Precision prec);

// flash_attn_with_kvcache: performs the append (rotary on k_new, then written into the caches p
// points at — callers pass copies) and attends with rotary applied to q.
ForwardResult kvcache(const core::Problem& p, Precision prec);

struct BackwardResult {
  std::vector<double> dq;      // dq[(r * Hq + h) * Dqk + d]
  std::vector<double> dk, dv;  // by key-side row and kv head: dk[(row * Hkv + hk) * Dqk + d]
  std::vector<double> dsinks;  // [Hq]; empty when the forward has no sinks
  // The scale of fp32 rounding in dsinks[h] = -sum_i P_sink_i (dout_i . out_i): the sum of the
  // magnitudes of its products, sum_i P_sink_i sum_d |dout_id out_id|.
  // A reduction over a whole head leaves one element per head, too few for max|lowp - ref64| to
  // estimate the rounding level; the magnitude gives it directly.
  std::vector<double> dsinks_magnitude;
};

// Recomputes the forward itself (p.fwd.out / p.fwd.lse are not read); reads p.dout.
BackwardResult backward(const core::BwdProblem& p, Precision prec);

// Exact copy of the new tokens into their paged slots; slots whose block is out of range are
// skipped (they read and write nothing, as in the backends).
void paged_kv_write(const core::KvWriteProblem& p);

// Number of dense rows of the results above.
int64_t query_rows(const core::Problem& p);
int64_t key_rows(const core::Problem& p);

// The SPEC §6 rule. Returns "" when max|got - ref64| <= factor * max|lowp - ref64| + 1e-6 over
// the finite elements, and every non-finite ref64 element is matched exactly in got (NaN by NaN,
// inf by the same inf). A non-finite got where ref64 is finite fails. Otherwise a message naming
// the worst index and its values.
std::string check_close(const std::vector<double>& got, const std::vector<double>& ref64,
                        const std::vector<double>& lowp, double factor);

}  // namespace flashsdpa::reference
