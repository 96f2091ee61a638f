// The CUDA backend when the library is built without nvcc: it reports itself absent and every
// entry point refuses with a clear error. core::select_tier never picks a CUDA tier here.
#include "cuda/cuda_backend.h"

namespace flashsdpa::cuda {

namespace {
[[noreturn]] void not_built() {
  throw Error("backend: CUDA was requested but this flashsdpa was built without the CUDA backend",
              ErrorKind::kNotSupported);
}
}  // namespace

bool built() { return false; }
bool device_available() { return false; }
int device_capability() { return 0; }
int shared_memory_optin() { return 0; }
void forward(const core::Problem&, core::Tier, void*) { not_built(); }
void kvcache(const core::Problem&, core::Tier, void*) { not_built(); }
void backward(const core::BwdProblem&, core::Tier, void*) { not_built(); }
void paged_kv_write(const core::KvWriteProblem&, void*) { not_built(); }
bool is_device_pointer(const void*) { return false; }
void copy_index_to_host(const int32_t*, int64_t, int32_t*, void*) { not_built(); }

}  // namespace flashsdpa::cuda
