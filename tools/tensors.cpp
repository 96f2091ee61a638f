#include "tensors.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "cli_flags.h"
#include "core/dtype.h"

#if defined(FLASHSDPA_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace flashsdpa::cli {
namespace {

#if defined(FLASHSDPA_WITH_CUDA)
void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw RuntimeError(std::string(what) + " failed: " + cudaGetErrorString(status));
  }
}
#else
[[noreturn]] void no_cuda() { throw RuntimeError("this flashsdpa was built without the CUDA backend"); }
#endif

}  // namespace

Tensor::Tensor(DType dtype, std::vector<int64_t> shape, Backend placement)
    : dtype_(dtype), shape_(std::move(shape)), placement_(placement) {
  numel_ = 1;
  for (int64_t extent : shape_) numel_ *= extent;
  // Not value-initialised: pages a workload never touches (explain) are never faulted in.
  host_.reset(new uint8_t[static_cast<size_t>(std::max<int64_t>(bytes(), 1))]);
  if (placement_ == Backend::kCuda) {
#if defined(FLASHSDPA_WITH_CUDA)
    cuda_check(cudaMalloc(&device_, static_cast<size_t>(std::max<int64_t>(bytes(), 1))), "cudaMalloc");
#else
    no_cuda();
#endif
  }
}

Tensor::Tensor(Tensor&& other) noexcept { *this = std::move(other); }

Tensor& Tensor::operator=(Tensor&& other) noexcept {
  if (this != &other) {
    release();
    dtype_ = other.dtype_;
    shape_ = std::move(other.shape_);
    numel_ = other.numel_;
    placement_ = other.placement_;
    host_ = std::move(other.host_);
    device_ = std::exchange(other.device_, nullptr);
    other.numel_ = 0;
    other.shape_.clear();
  }
  return *this;
}

Tensor::~Tensor() { release(); }

void Tensor::release() {
#if defined(FLASHSDPA_WITH_CUDA)
  if (device_ != nullptr) cudaFree(device_);
#endif
  device_ = nullptr;
}

static TensorRef make_ref(const void* data, DType dtype, const std::vector<int64_t>& shape) {
  TensorRef ref;
  ref.data = data;
  ref.dtype = dtype;
  ref.rank = static_cast<int32_t>(shape.size());
  int64_t stride = 1;
  for (int d = ref.rank - 1; d >= 0; --d) {
    ref.shape[d] = shape[d];
    ref.stride[d] = stride;
    stride *= shape[d];
  }
  return ref;
}

TensorRef Tensor::ref() const {
  if (shape_.empty()) return TensorRef{};
  return make_ref(placement_ == Backend::kCuda ? device_ : host_.get(), dtype_, shape_);
}

TensorRef Tensor::host_ref() const {
  if (shape_.empty()) return TensorRef{};
  return make_ref(host_.get(), dtype_, shape_);
}

void Tensor::fill_normal(Rng& rng, float stddev) {
  for (int64_t i = 0; i < numel_; ++i) core::store_from_float(host_.get(), i, dtype_, stddev * rng.normal());
  upload();
}

void Tensor::fill_uniform(Rng& rng, float lo, float hi) {
  for (int64_t i = 0; i < numel_; ++i) {
    core::store_from_float(host_.get(), i, dtype_, lo + (hi - lo) * rng.uniform());
  }
  upload();
}

void Tensor::fill_value(float value) {
  for (int64_t i = 0; i < numel_; ++i) core::store_from_float(host_.get(), i, dtype_, value);
  upload();
}

void Tensor::fill_int32(const std::vector<int32_t>& values) {
  std::memcpy(host_.get(), values.data(), std::min<size_t>(values.size(), numel_) * sizeof(int32_t));
  upload();
}

double Tensor::host_value(int64_t index) const {
  if (dtype_ == DType::kInt32) return reinterpret_cast<const int32_t*>(host_.get())[index];
  return core::load_as_float(host_.get(), index, dtype_);
}

std::vector<double> Tensor::host_values() const {
  std::vector<double> values(static_cast<size_t>(numel_));
  for (int64_t i = 0; i < numel_; ++i) values[i] = host_value(i);
  return values;
}

void Tensor::upload() {
  if (placement_ != Backend::kCuda || bytes() == 0) return;
#if defined(FLASHSDPA_WITH_CUDA)
  cuda_check(cudaMemcpy(device_, host_.get(), bytes(), cudaMemcpyHostToDevice), "cudaMemcpy to device");
#endif
}

void Tensor::download() {
  if (placement_ != Backend::kCuda || bytes() == 0) return;
#if defined(FLASHSDPA_WITH_CUDA)
  cuda_check(cudaMemcpy(host_.get(), device_, bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
#endif
}

std::vector<uint8_t> Tensor::snapshot() {
  download();
  return std::vector<uint8_t>(host_.get(), host_.get() + bytes());
}

void Tensor::restore(const std::vector<uint8_t>& bytes_in) {
  std::memcpy(host_.get(), bytes_in.data(), std::min<size_t>(bytes_in.size(), bytes()));
  upload();
}

Backend resolve_backend(Backend requested) {
  if (requested != Backend::kAuto) return requested;
  return cuda_available() ? Backend::kCuda : Backend::kCpu;
}

void synchronize(Backend backend) {
  if (backend != Backend::kCuda) return;
#if defined(FLASHSDPA_WITH_CUDA)
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
#endif
}

DType parse_dtype(const std::string& name) {
  if (name == "fp16") return DType::kFloat16;
  if (name == "bf16") return DType::kBFloat16;
  if (name == "fp32") return DType::kFloat32;
  throw UsageError("unknown dtype '" + name + "' (expected fp16, bf16 or fp32)");
}

Backend parse_backend(const std::string& name) {
  if (name == "cpu") return Backend::kCpu;
  if (name == "cuda") return Backend::kCuda;
  if (name == "auto") return Backend::kAuto;
  throw UsageError("unknown backend '" + name + "' (expected cpu, cuda or auto)");
}

const char* short_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "fp16";
    case DType::kBFloat16: return "bf16";
    case DType::kFloat32: return "fp32";
    case DType::kInt32: return "int32";
  }
  return "?";
}

}  // namespace flashsdpa::cli
