// Device-side helpers of the GPU tests: mirror an AttnCase's guarded host buffers into device
// memory byte for byte (guards and stride gaps included), run the public API on the CUDA
// backend, copy everything back and check it with the same SPEC §6 rule as the CPU tests.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "../test_util.h"
#include "cuda/cuda_backend.h"
#include "cuda/tiers.h"

namespace flashsdpa::test {

inline bool gpu_present() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

#define FLASHSDPA_SKIP_WITHOUT_GPU() \
  if (!::flashsdpa::test::gpu_present()) GTEST_SKIP() << "no CUDA device on this machine"

inline std::string cuda_failure(cudaError_t status, const char* what) {
  return status == cudaSuccess ? "" : std::string(what) + ": " + cudaGetErrorString(status);
}

// Device copies of a set of host tensors, guards included.
class DeviceMirror {
 public:
  explicit DeviceMirror(std::vector<std::pair<std::string, HostTensor*>> tensors) : tensors_(std::move(tensors)) {
    for (auto& named : tensors_) {
      const auto& bytes = named.second->guarded_bytes();
      void* dev = nullptr;
      if (error_.empty()) error_ = cuda_failure(cudaMalloc(&dev, bytes.size()), "cudaMalloc");
      if (error_.empty()) error_ = cuda_failure(cudaMemcpy(dev, bytes.data(), bytes.size(), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
      device_.push_back(static_cast<unsigned char*>(dev));
    }
  }
  ~DeviceMirror() {
    for (unsigned char* dev : device_) cudaFree(dev);
  }
  DeviceMirror(const DeviceMirror&) = delete;
  DeviceMirror& operator=(const DeviceMirror&) = delete;

  const std::string& error() const { return error_; }

  // The device view of a mirrored tensor (undefined tensors stay "not given").
  TensorRef ref(const HostTensor& t) const {
    for (size_t n = 0; n < tensors_.size(); ++n)
      if (tensors_[n].second == &t && device_[n] != nullptr) return t.view_at(device_[n] + HostTensor::kGuardBytes);
    return TensorRef{};
  }

  // Device bytes back into the host tensors, guards included.
  std::string copy_back() {
    for (size_t n = 0; n < tensors_.size(); ++n) {
      auto& bytes = tensors_[n].second->guarded_bytes();
      const std::string e = cuda_failure(cudaMemcpy(bytes.data(), device_[n], bytes.size(), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
      if (!e.empty()) return e;
    }
    return "";
  }

 private:
  std::vector<std::pair<std::string, HostTensor*>> tensors_;
  std::vector<unsigned char*> device_;
  std::string error_;
};

// c.params() with every tensor replaced by its device mirror.
inline AttnParams device_params(const AttnCase& c, const DeviceMirror& dev) {
  AttnParams p = c.params();
  p.q = dev.ref(c.q);
  p.k = dev.ref(c.k);
  p.v = dev.ref(c.v);
  p.out = dev.ref(c.out);
  p.lse = dev.ref(c.lse);
  p.cu_seqlens_q = dev.ref(c.cu_seqlens_q);
  p.cu_seqlens_k = dev.ref(c.cu_seqlens_k);
  p.seqused_k = dev.ref(c.seqused_k);
  p.block_table = dev.ref(c.block_table);
  p.cache_seqlens = dev.ref(c.cache_seqlens);
  p.cache_batch_idx = dev.ref(c.cache_batch_idx);
  p.cache_leftpad = dev.ref(c.cache_leftpad);
  p.k_new = dev.ref(c.k_new);
  p.v_new = dev.ref(c.v_new);
  p.rotary_cos = dev.ref(c.rotary_cos);
  p.rotary_sin = dev.ref(c.rotary_sin);
  p.alibi_slopes = dev.ref(c.alibi_slopes);
  p.sinks = dev.ref(c.sinks);
  return p;
}

inline ExecContext cuda_context(bool check = false) {
  ExecContext ctx;
  ctx.backend = Backend::kCuda;
  ctx.check = check;
  return ctx;
}

// The reference's Problem for the host tensors. Index values are not validated, so cases with
// deliberately bad index tensors compare against the clamped geometry of core/sequence.h, which
// is what every backend must compute for them.
inline core::Problem unchecked_problem(const AttnCase& c) {
  core::ValidateOptions options;
  options.check_index_values = false;
  return core::prepare_forward(c.params(), options);
}

// Poisons out/lse, runs attention_forward on the GPU, and checks out and lse against the
// reference, that every element was written, that no guard byte or input changed, and (when
// expected_tier is given) that the selector names that tier.
inline std::string check_forward_cuda(AttnCase& c, const std::string& expected_tier = "") {
  c.out.poison();
  if (c.lse.defined()) c.lse.poison();
  std::vector<std::pair<std::string, HostTensor*>> inputs;
  for (auto& named : c.tensors())
    if (named.first != "out" && named.first != "lse") inputs.push_back(named);
  const Snapshot before(inputs);

  DeviceMirror dev(c.tensors());
  if (!dev.error().empty()) return dev.error();
  const AttnParams params = device_params(c, dev);
  const ExecContext ctx = cuda_context();
  if (!expected_tier.empty()) {
    const Selection sel = explain(params, Op::kForward, ctx);
    if (sel.tier != expected_tier) return "explain chose " + sel.tier + " (expected " + expected_tier + "): " + sel.reason;
  }
  std::string failure = run_and_catch([&] { attention_forward(params, ctx); });
  if (!failure.empty()) return failure;
  failure = cuda_failure(cudaDeviceSynchronize(), "kernel");
  if (!failure.empty()) return failure;
  failure = dev.copy_back();
  if (!failure.empty()) return failure;

  const core::Problem p = unchecked_problem(c);
  const auto ref64 = reference::forward(p, reference::Precision::kFloat64);
  const auto lowp = reference::forward(p, reference::Precision::kInputDType);
  failure = prefixed("out", reference::check_close(c.out.values(), ref64.out, lowp.out, 2.0));
  if (failure.empty() && c.lse.defined())
    failure = prefixed("lse", reference::check_close(dense_lse(c), ref64.lse, lowp.lse, 2.0));
  if (failure.empty()) failure = check_all_guards(c);
  if (failure.empty()) failure = before.changed();
  return failure;
}

// The tier the selector must name for a case: fp32 runs exact SIMT; fp16/bf16 queries of at most
// 16 rows (the longest the unchecked device path can assume) are decoding; longer ones prefill on
// the tier FLASHSDPA_CUDA_FORWARD_TIER forces, else cuda-wgmma-sm90 on compute capability 9.0 for
// what it serves, else cuda-mma-sm80.
inline std::string tier_for(AttnCase& c) {
  const core::Problem p = unchecked_problem(c);
  if (p.dtype == DType::kFloat32) return "cuda-fp32";
  if (p.seqlen_q <= 16) return "cuda-decode";
  const char* forced = std::getenv("FLASHSDPA_CUDA_FORWARD_TIER");
  if (forced != nullptr && *forced != '\0') return forced;
  return cuda::device_capability() == 90 && cuda::wgmma_tier_supports(p, nullptr) ? "cuda-wgmma-sm90" : "cuda-mma-sm80";
}

}  // namespace flashsdpa::test
