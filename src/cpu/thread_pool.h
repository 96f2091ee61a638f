// A small persistent thread pool for the CPU backend.
//
// Work is a flat index space [0, count) that participating threads pull from one shared atomic
// counter, so uneven items (causal tiles, varlen sequences) balance themselves: callers order
// items most-expensive first and the pool hands them out in that order.
//
// One job runs at a time; concurrent callers queue on a mutex. A job started from inside a pool
// worker runs inline on that worker (no nested parallelism, no deadlock).
#pragma once

#include <cstdint>
#include <functional>

namespace flashsdpa::cpu {

// The thread count a request resolves to: requested > 0 as given, else all hardware threads.
int resolve_num_threads(int requested);

// Runs body(index, worker) for every index in [0, count) on up to num_threads threads (the calling
// thread included, as worker 0). Workers are numbered 0 .. used-1 so callers can index per-thread
// scratch; used = min(resolve_num_threads(num_threads), count). Returns `used`. An exception thrown
// by a body is rethrown here after all workers have stopped.
int parallel_for(int64_t count, int num_threads, const std::function<void(int64_t index, int worker)>& body);

// How many workers parallel_for(count, num_threads, ...) will use.
int workers_for(int64_t count, int num_threads);

}  // namespace flashsdpa::cpu
