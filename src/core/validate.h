// All validation lives here, shared by every backend and binding: the public AttnParams are
// checked against SPEC §1–5 and turned into the plain Problem the backends consume. Each check
// throws flashsdpa::Error naming the argument, the expected and the received value, before any
// output is touched.
#pragma once

#include <functional>

#include "core/problem.h"
#include "flashsdpa/flashsdpa.h"

namespace flashsdpa::core {

// Copies `count` int32 values from wherever an index tensor lives to the host (the CUDA
// backend passes a device copy; host tensors need none). Used only when index values are
// validated: always for host-resident tensors, in checked mode for device-resident ones.
using IndexFetcher = std::function<void(const int32_t* src, int64_t count, int32_t* dst)>;

struct ValidateOptions {
  bool check_index_values = true;  // read and check cu_seqlens, block_table, cache_seqlens, ...
  IndexFetcher fetch;              // null = host memory
};

Problem prepare_forward(const AttnParams& params, const ValidateOptions& options);
Problem prepare_kvcache(const AttnParams& params, const ValidateOptions& options);
BwdProblem prepare_backward(const AttnBwdParams& params, const ValidateOptions& options);
KvWriteProblem prepare_kv_write(const KvWriteParams& params, const ValidateOptions& options);

// True when FLASHSDPA_CHECK=1 is set in the environment.
bool env_check_enabled();

}  // namespace flashsdpa::core
