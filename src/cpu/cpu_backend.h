// The CPU backend: tiled online softmax over (batch, head, query tile) work items on a thread
// pool, O(tokens) memory. Takes validated problems only (core/validate.h).
#pragma once

#include <cstddef>

#include "core/problem.h"

namespace flashsdpa::cpu {

// num_threads <= 0: all hardware threads.
void forward(const core::Problem& p, int num_threads);
// KV append (rotary on k_new, write into the cache), then forward with rotary on q.
void kvcache(const core::Problem& p, int num_threads);
void backward(const core::BwdProblem& p, int num_threads);
void paged_kv_write(const core::KvWriteProblem& p, int num_threads);

// Bytes of scratch the last forward() / kvcache() call used across all its threads (per-thread
// tiles plus split-KV partials): O(tokens), never O(Sq x Sk).
size_t last_scratch_bytes();

}  // namespace flashsdpa::cpu
