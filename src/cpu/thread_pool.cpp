#include "cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace flashsdpa::cpu {
namespace {

thread_local bool t_inside_pool_worker = false;

class ThreadPool {
 public:
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  int run(int64_t count, int workers, const std::function<void(int64_t, int)>& body) {
    std::lock_guard<std::mutex> job_lock(job_mutex_);  // one job at a time
    grow_to(workers - 1);
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      body_ = &body;
      count_ = count;
      next_.store(0, std::memory_order_relaxed);
      helpers_wanted_ = workers - 1;
      helpers_running_ = workers - 1;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();

    {
      // The caller is worker 0 now: a job it starts from inside a body must run inline, as on
      // the helpers, or it would wait on job_mutex_, which this job holds.
      const bool was_inside = t_inside_pool_worker;
      t_inside_pool_worker = true;
      drain(0);
      t_inside_pool_worker = was_inside;
    }

    std::unique_lock<std::mutex> lock(state_mutex_);
    done_.wait(lock, [&] { return helpers_running_ == 0; });
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return workers;
  }

 private:
  // Spawns helper threads until there are at least n. A new helper starts from the current
  // generation, so the first job it sees is the one it was spawned for.
  void grow_to(int n) {
    uint64_t generation;
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      generation = generation_;
    }
    while (static_cast<int>(threads_.size()) < n) {
      const int helper_index = static_cast<int>(threads_.size());
      threads_.emplace_back([this, helper_index, generation] { helper_loop(helper_index, generation); });
    }
  }

  void helper_loop(int helper_index, uint64_t seen_generation) {
    t_inside_pool_worker = true;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(state_mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen_generation; });
        if (stopping_) return;
        seen_generation = generation_;
        if (helper_index >= helpers_wanted_) continue;  // not part of this job
      }
      drain(helper_index + 1);
      {
        std::lock_guard<std::mutex> lock(state_mutex_);
        if (--helpers_running_ == 0) done_.notify_one();
      }
    }
  }

  // Pulls indices until the job is exhausted (or has failed).
  void drain(int worker) {
    for (;;) {
      const int64_t index = next_.fetch_add(1, std::memory_order_relaxed);
      if (index >= count_) return;
      try {
        (*body_)(index, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lock(state_mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(count_, std::memory_order_relaxed);  // stop handing out work
        return;
      }
    }
  }

  std::mutex job_mutex_;
  std::mutex state_mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
  uint64_t generation_ = 0;

  const std::function<void(int64_t, int)>* body_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int64_t> next_{0};
  int helpers_wanted_ = 0;
  int helpers_running_ = 0;
  std::exception_ptr error_;
};

ThreadPool& global_pool() {
  static ThreadPool* pool = new ThreadPool();  // never destroyed: workers may outlive statics
  return *pool;
}

}  // namespace

int resolve_num_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

int workers_for(int64_t count, int num_threads) {
  if (count <= 0) return 0;
  if (t_inside_pool_worker) return 1;
  return static_cast<int>(std::min<int64_t>(resolve_num_threads(num_threads), count));
}

int parallel_for(int64_t count, int num_threads, const std::function<void(int64_t, int)>& body) {
  const int workers = workers_for(count, num_threads);
  if (workers <= 1) {
    for (int64_t i = 0; i < count; ++i) body(i, 0);
    return workers;
  }
  return global_pool().run(count, workers, body);
}

}  // namespace flashsdpa::cpu
