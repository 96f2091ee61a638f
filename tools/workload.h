// One attention configuration described by command-line flags, and the tensors and parameters
// that realise it: what `flashsdpa bench` times and `flashsdpa explain` asks about.
#pragma once

#include <cstdint>
#include <string>

#include "cli_flags.h"
#include "flashsdpa/flashsdpa.h"
#include "tensors.h"

namespace flashsdpa::cli {

struct ShapeConfig {
  std::string op = "forward";  // forward | kvcache | backward
  int64_t batch = 1;
  int64_t heads_q = 32;
  int64_t heads_kv = 8;
  int64_t seqlen_q = 1024;
  int64_t seqlen_k = -1;    // -1: same as seqlen_q
  int64_t head_dim = 128;
  int64_t head_dim_v = -1;  // -1: same as head_dim
  std::string dtype = "bf16";
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  bool sinks = false;
  bool alibi = false;
  int64_t paged_block = 0;  // 0: contiguous K/V; N: paged K/V with N tokens per block
  int64_t threads = 0;
  std::string backend = "auto";

  // Derived after parsing.
  int64_t keys() const { return seqlen_k < 0 ? seqlen_q : seqlen_k; }
  int64_t value_dim() const { return head_dim_v < 0 ? head_dim : head_dim_v; }
  // causal is window_right = 0 (SPEC §2).
  int64_t effective_window_right() const { return causal ? 0 : window_right; }
  Op parsed_op() const;
  // "forward bf16 batch 2 Sq 1024 Sk 1024 Hq 32/Hkv 8 D 128 causal ..."
  std::string describe() const;
};

// Registers the shape flags shared by bench and explain.
void add_shape_flags(FlagSet& flags, ShapeConfig* config);

// Tensors and parameters of one configuration. Tensors live where `backend` reads them.
struct Workload {
  ShapeConfig config;
  Backend backend = Backend::kCpu;
  Op op = Op::kForward;

  Tensor q, k, v, out, lse;
  Tensor block_table, seqused_k, cache_seqlens;
  Tensor sinks, alibi_slopes;
  Tensor dout, dq, dk, dv, dsinks;

  // The library's view (device memory on CUDA) and the host view (for the reference).
  AttnParams params(bool host = false) const;
  AttnBwdParams backward_params(bool host = false) const;
  ExecContext context() const;

  // Runs the configured op once.
  void run() const;

  // Exact FLOPs of one call under the configured mask, and the bytes materialised attention
  // would allocate for its scores.
  double flops() const;
  int64_t materialized_bytes() const;
};

// Allocates the tensors; with `fill`, gives them deterministic random contents (explain does not
// need any). Backward workloads run the forward once so out and lse are real.
Workload make_workload(const ShapeConfig& config, Backend backend, bool fill);

}  // namespace flashsdpa::cli
