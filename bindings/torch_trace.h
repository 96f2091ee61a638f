// FLASHSDPA_TRACE: per-(op, dtype, head dims, lengths, features, tier) call counts, so a user can
// see which tier each part of a workload hit. Off unless FLASHSDPA_TRACE=1 at load time or
// trace_set_enabled(true); when off, recording costs one relaxed atomic load.
#pragma once

#include <string>

#include "flashsdpa/flashsdpa.h"

namespace flashsdpa::torch_binding {

bool trace_enabled();
void trace_set_enabled(bool enabled);
void trace_reset();

// Records one successful call. `op_name` is the torch op ("fwd", "fwd_kvcache", ...).
void trace_record(const char* op_name, const AttnParams& params, Op op, const ExecContext& ctx);
void trace_record_kv_write(const KvWriteParams& params, const ExecContext& ctx);

// The summary printed at exit: one line per distinct combination, most frequent first.
// Empty when nothing was recorded.
std::string trace_report();

}  // namespace flashsdpa::torch_binding
