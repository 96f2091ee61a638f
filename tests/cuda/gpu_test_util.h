// Device-side helpers of the GPU tests: mirror an AttnCase's guarded host buffers into device
// memory byte for byte (guards and stride gaps included), run the public API on the CUDA
// backend, copy everything back and check it with the same SPEC §6 rule as the CPU tests.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "../test_util.h"
#include "cuda/cuda_backend.h"
#include "cuda/decode_tier.h"
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

// c.bwd_params() with every tensor replaced by its device mirror.
inline AttnBwdParams device_bwd_params(const AttnCase& c, const DeviceMirror& dev, bool deterministic = false) {
  AttnBwdParams p;
  p.fwd = device_params(c, dev);
  p.dout = dev.ref(c.dout);
  p.dq = dev.ref(c.dq);
  p.dk = dev.ref(c.dk);
  p.dv = dev.ref(c.dv);
  p.dsinks = dev.ref(c.dsinks);
  p.deterministic = deterministic;
  return p;
}

inline ExecContext cuda_context(bool check = false) {
  ExecContext ctx;
  ctx.backend = Backend::kCuda;
  ctx.check = check;
  return ctx;
}

// Runs `call` (given the device view of c's tensors) on device mirrors of c's tensors, waits
// for the kernels and copies every tensor back, guards included; "" or what failed.
inline std::string run_on_gpu(AttnCase& c, const std::function<void(const AttnParams&)>& call) {
  DeviceMirror dev(c.tensors());
  if (!dev.error().empty()) return dev.error();
  const AttnParams params = device_params(c, dev);
  std::string failure = run_and_catch([&] { call(params); });
  if (failure.empty()) failure = cuda_failure(cudaDeviceSynchronize(), "kernel");
  if (failure.empty()) failure = dev.copy_back();
  return failure;
}

// run_on_gpu for attention_backward: mirrors of c's tensors (out and lse from an earlier forward,
// poisoned gradients), the backward, and everything copied back; when expected_tier is given,
// the selector must name that tier.
inline std::string run_backward_on_gpu(AttnCase& c, bool deterministic, const std::string& expected_tier) {
  DeviceMirror dev(c.tensors());
  if (!dev.error().empty()) return dev.error();
  const AttnBwdParams params = device_bwd_params(c, dev, deterministic);
  std::string failure = run_and_catch([&] {
    const ExecContext ctx = cuda_context();
    if (!expected_tier.empty()) {
      const Selection sel = explain(params.fwd, Op::kBackward, ctx);
      if (sel.tier != expected_tier) throw Error("explain chose " + sel.tier + " (expected " + expected_tier + "): " + sel.reason);
    }
    attention_backward(params, ctx);
  });
  if (failure.empty()) failure = cuda_failure(cudaDeviceSynchronize(), "kernel");
  if (failure.empty()) failure = dev.copy_back();
  return failure;
}

// The reference's options for GPU cases: index values are not validated, so cases with
// deliberately bad index tensors compare against the clamped geometry of core/sequence.h, which
// is what every backend must compute for them.
inline core::ValidateOptions unchecked_host() {
  core::ValidateOptions options;
  options.check_index_values = false;
  return options;
}

inline core::Problem unchecked_problem(const AttnCase& c) { return core::prepare_forward(c.params(), unchecked_host()); }

// check_forward_run (test_util.h) for attention_forward on the GPU; when expected_tier is given,
// the selector must also name that tier.
inline std::string check_forward_cuda(AttnCase& c, const std::string& expected_tier = "") {
  return check_forward_run(c, unchecked_host(), [&] {
    return run_on_gpu(c, [&](const AttnParams& params) {
      const ExecContext ctx = cuda_context();
      if (!expected_tier.empty()) {
        const Selection sel = explain(params, Op::kForward, ctx);
        if (sel.tier != expected_tier) throw Error("explain chose " + sel.tier + " (expected " + expected_tier + "): " + sel.reason);
      }
      attention_forward(params, ctx);
    });
  });
}

// check_backward_run (test_util.h) on the GPU: the CUDA forward writes out and lse, then
// attention_backward on the tier the selector names (which must be cuda-bwd).
inline std::string check_backward_cuda(AttnCase& c, bool deterministic = false) {
  return check_backward_run(
      c, unchecked_host(),
      [&] {
        return run_on_gpu(c, [&](const AttnParams& params) {
          AttnParams forward = params;
          forward.exact_fp32 = true;  // its out and lse feed the backward
          attention_forward(forward, cuda_context());
        });
      },
      [&] { return run_backward_on_gpu(c, deterministic, "cuda-bwd"); });
}

// The tier the selector must name for a case: queries of at most 16 rows (the longest the
// unchecked device path can assume) are decoding (fp32 where cuda-decode's fp32 kernel fits the
// device: decode_fp32_fits); everything else runs on the prefill tier of
// its dtype that FLASHSDPA_CUDA_FORWARD_TIER forces (a comma-separated list), else on compute
// capability 9.0 the Hopper tier for what it serves (cuda-wgmma-sm90, or cuda-3xtf32-sm90 then
// cuda-dmma-sm90 for fp32), else cuda-mma-sm80 (fp16/bf16) or cuda-fp32.
inline std::string tier_for(AttnCase& c) {
  const core::Problem p = unchecked_problem(c);
  const bool fp32 = p.dtype == DType::kFloat32;
  if (p.seqlen_q <= 16 && (!fp32 || cuda::decode_fp32_fits(std::max(p.head_dim_qk, p.head_dim_v))))
    return "cuda-decode";
  const char* forced = std::getenv("FLASHSDPA_CUDA_FORWARD_TIER");
  const core::Tier forced_tier = core::forced_prefill_tier(forced != nullptr ? forced : "", fp32, nullptr);
  if (forced_tier != core::Tier::kNone) return core::tier_name(forced_tier);
  const bool hopper = cuda::device_capability() == 90;
  if (fp32) {
    if (hopper && cuda::tf32x3_tier_supports(p, nullptr)) return "cuda-3xtf32-sm90";
    return hopper && cuda::dmma_tier_supports(p, nullptr) ? "cuda-dmma-sm90" : "cuda-fp32";
  }
  return hopper && cuda::wgmma_tier_supports(p, nullptr) ? "cuda-wgmma-sm90" : "cuda-mma-sm80";
}

}  // namespace flashsdpa::test
