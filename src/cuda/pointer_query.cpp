// Where a pointer lives, so the selector never hands host memory to a kernel or device memory
// to the CPU backend.
#include <cuda_runtime.h>

#include "cuda/cuda_backend.h"

namespace flashsdpa::cuda {

bool is_device_pointer(const void* ptr) {
  if (ptr == nullptr) return false;
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, ptr) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error: an unknown pointer is plain host memory
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

}  // namespace flashsdpa::cuda
