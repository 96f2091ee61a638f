// The CUDA backend's entry points: device queries, and the forward dispatch from a selected tier
// to the kernel launch of the right tile shape.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/problem.h"
#include "cuda/cuda_backend.h"
#include "cuda/decode_tier.h"
#include "cuda/device_utils.cuh"
#include "cuda/forward_wgmma.h"
#include "cuda/launch.h"
#include "cuda/tiers.h"

namespace flashsdpa::cuda {

namespace {

bool aligned(const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// True when every row of every operand starts on a 16-byte boundary and the head dims are whole
// 16-byte chunks, so tiles move with cp.async and 16-byte stores; otherwise element loads.
bool rows_are_16_byte_aligned(const core::Problem& p) {
  const int64_t per16 = 16 / dtype_size(p.dtype);
  if (p.head_dim_qk % per16 != 0 || p.head_dim_v % per16 != 0) return false;
  for (const core::Operand* op : {&p.q, &p.k, &p.v, &p.out}) {
    if (!aligned(op->ptr, 16)) return false;
    if (op->batch_stride % per16 != 0 || op->row_stride % per16 != 0 || op->head_stride % per16 != 0) return false;
  }
  return true;
}

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

[[noreturn]] void no_tier(const char* what) {
  throw Error(std::string(what) + ": no CUDA tier serves this yet");
}

}  // namespace

bool built() { return true; }

bool device_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not sticky, clear it
    return false;
  }
  return count > 0;
}

int device_capability() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return major * 10 + minor;
}

void forward(const core::Problem& p, core::Tier tier, void* stream) {
  std::string why;
  switch (tier) {
    case core::Tier::kCudaMma: {
      if (!mma_tier_supports(p, &why)) throw Error("cuda-mma-sm80 cannot serve this call: " + why);
      MmaArgs args;
      args.p = p;
      args.score_scale_log2 = p.scale * kLog2e;
      args.vector_io = rows_are_16_byte_aligned(p);
      args.has_score_mod = p.softcap > 0.0f || p.alibi_slopes != nullptr;
      args.reverse_tiles = p.window_right >= 0;
      switch (padded_head_dim(p)) {
        case 64: launch_mma_forward_d64(args, as_stream(stream)); break;
        case 128: launch_mma_forward_d128(args, as_stream(stream)); break;
        default: launch_mma_forward_d256(args, as_stream(stream)); break;
      }
      return;
    }
    case core::Tier::kCudaWgmma:
      if (!wgmma_tier_supports(p, &why)) throw Error("cuda-wgmma-sm90 cannot serve this call: " + why);
      launch_wgmma_forward(p, as_stream(stream));
      return;
    case core::Tier::kCudaFp32:
      if (!fp32_tier_supports(p, &why)) throw Error("cuda-fp32 cannot serve this call: " + why);
      launch_fp32_forward(p, rows_are_16_byte_aligned(p), as_stream(stream));
      return;
    case core::Tier::kCudaDecode:
      decode_forward(p, stream);  // short queries, paged continuous batching (decode_tier.h)
      return;
    default:
      no_tier("forward");
  }
}

void backward(const core::BwdProblem&, core::Tier, void*) { no_tier("attention_backward"); }

void copy_index_to_host(const int32_t* src, int64_t count, int32_t* dst, void* stream) {
  if (count <= 0) return;
  check_cuda(cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                             as_stream(stream)),
             "cudaMemcpyAsync(index tensor)");
  check_cuda(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize(index tensor)");
}

}  // namespace flashsdpa::cuda
