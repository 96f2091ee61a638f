// Tensors for the tool's workloads. Every tensor has a host copy (filled, read back and handed to
// the float64 reference) and, for the CUDA backend, a device copy the library reads and writes.
// The library is always given the copy that lives where the chosen backend expects it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flashsdpa/flashsdpa.h"

namespace flashsdpa::cli {

// A small, fast, deterministic generator (splitmix64): workloads are reproducible run to run.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
  // Approximately standard normal (Irwin–Hall of four uniforms): cheap enough to fill hundreds of
  // millions of elements, with the bell shape real activations have.
  float normal() { return (uniform() + uniform() + uniform() + uniform() - 2.0f) * 1.7320508f; }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }

 private:
  uint64_t state_;
};

class Tensor {
 public:
  Tensor() = default;
  // Allocates a contiguous tensor; the host copy is left uninitialised until filled.
  Tensor(DType dtype, std::vector<int64_t> shape, Backend placement);
  Tensor(Tensor&&) noexcept;
  Tensor& operator=(Tensor&&) noexcept;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  ~Tensor();

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const { return numel_; }
  int64_t bytes() const { return numel_ * dtype_size(dtype_); }
  bool empty() const { return numel_ == 0 && shape_.empty(); }

  // The copy the library works on: device memory for Backend::kCuda, host memory otherwise.
  TensorRef ref() const;
  // The host copy, as a contiguous TensorRef (for the reference).
  TensorRef host_ref() const;

  uint8_t* host() { return host_.get(); }
  const uint8_t* host() const { return host_.get(); }
  template <typename T>
  T* host_as() { return reinterpret_cast<T*>(host_.get()); }
  template <typename T>
  const T* host_as() const { return reinterpret_cast<const T*>(host_.get()); }

  void fill_normal(Rng& rng, float stddev = 1.0f);
  void fill_uniform(Rng& rng, float lo, float hi);
  void fill_value(float value);  // float dtypes
  void fill_int32(const std::vector<int32_t>& values);

  // Host element as double (float dtypes and int32).
  double host_value(int64_t index) const;
  // The whole host copy as doubles, in storage order.
  std::vector<double> host_values() const;

  // Copies between the host copy and the device copy; no-ops on the CPU backend.
  void upload();
  void download();
  // A host snapshot of the library's copy (device copy downloaded first on CUDA).
  std::vector<uint8_t> snapshot();
  void restore(const std::vector<uint8_t>& bytes);  // sets both copies

 private:
  void release();

  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  Backend placement_ = Backend::kCpu;
  std::unique_ptr<uint8_t[]> host_;
  void* device_ = nullptr;
};

// Backend::kAuto resolved the way the library resolves it, so the tool places tensors where the
// chosen backend reads them.
Backend resolve_backend(Backend requested);
// Waits for the device (CUDA) so wall-clock timings cover the kernels; a no-op on the CPU backend.
void synchronize(Backend backend);

DType parse_dtype(const std::string& name);
Backend parse_backend(const std::string& name);
const char* short_dtype_name(DType dtype);

}  // namespace flashsdpa::cli
