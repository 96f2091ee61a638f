// What the CUDA forward tiers serve (see tiers.h). Kept free of CUDA types so the selector can
// call it from plain C++.
#include "cuda/tiers.h"

#include <algorithm>
#include <cstdint>
#include "core/text.h"

namespace flashsdpa::cuda {

namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxGridDim = 65535;  // batch and query heads are grid dimensions y and z

const char* layout_words(const core::Problem& p) {
  switch (p.kv_layout) {
    case core::KvLayout::kBatched: return p.seqused_k ? "batched K/V with seqused_k" : "batched K/V";
    case core::KvLayout::kVarlen: return "varlen K/V";
    case core::KvLayout::kPaged: return "paged K/V through block_table";
    case core::KvLayout::kDenseCache: return "dense KV cache";
  }
  return "K/V";
}

// Shape limits shared by both tiers; "" when the problem fits.
std::string shape_problem(const core::Problem& p) {
  core::Text os;
  if (p.head_dim_qk < 1 || p.head_dim_qk > kMaxHeadDim || p.head_dim_v < 1 || p.head_dim_v > kMaxHeadDim) {
    os << "head dims must be in 1..256 on the GPU; got Dqk = " << p.head_dim_qk << ", Dv = " << p.head_dim_v;
  } else if (p.batch > kMaxGridDim) {
    os << "batch must be <= " << kMaxGridDim << " on the GPU; got " << p.batch;
  } else if (p.heads_q > kMaxGridDim) {
    os << "query heads must be <= " << kMaxGridDim << " on the GPU; got " << p.heads_q;
  } else if (p.seqlen_new > 0 || p.rotary_dim > 0) {
    os << "KV append and rotary are not part of the prefill forward";
  }
  return os.str();
}

std::string features(const core::Problem& p) {
  core::Text os;
  os << layout_words(p) << (p.q_layout == core::QLayout::kVarlen ? ", varlen q" : "");
  if (p.group > 1) os << ", GQA " << p.heads_q << "/" << p.heads_kv << " without K/V expansion";
  if (p.window_left >= 0 || p.window_right >= 0)
    os << (p.causal ? ", causal" : ", window") << " (whole key tiles skipped, boundary tiles masked)";
  if (p.softcap > 0) os << ", softcap";
  if (p.alibi_slopes) os << ", ALiBi";
  if (p.sinks) os << ", sinks";
  if (p.lse) os << ", LSE";
  return os.str();
}

}  // namespace

int padded_head_dim(const core::Problem& p) {
  const int64_t d = std::max(p.head_dim_qk, p.head_dim_v);
  if (d <= 64) return 64;
  if (d <= 128) return 128;
  if (d <= 256) return 256;
  return 0;
}

bool mma_tier_supports(const core::Problem& p, std::string* why) {
  std::string problem;
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) {
    problem = std::string("it needs fp16 or bf16; got ") + dtype_name(p.dtype);
  } else {
    problem = shape_problem(p);
  }
  if (!problem.empty()) {
    if (why) *why = problem;
    return false;
  }
  if (why) {
    core::Text os;
    os << "cuda-mma-sm80 serves this " << dtype_name(p.dtype)
       << " forward: mma.sync m16n8k16 tensor cores with fp32 accumulation, head dims Dqk = " << p.head_dim_qk
       << ", Dv = " << p.head_dim_v << " run in the " << padded_head_dim(p) << "-wide tile; " << features(p);
    *why = os.str();
  }
  return true;
}

bool all_rows_16_byte_aligned(const core::Problem& p) {
  const int64_t per16 = 16 / dtype_size(p.dtype);
  if (p.head_dim_qk % per16 != 0 || p.head_dim_v % per16 != 0) return false;
  for (const core::Operand* op : {&p.q, &p.k, &p.v, &p.out}) {
    if (reinterpret_cast<uintptr_t>(op->ptr) % 16 != 0) return false;
    if (op->batch_stride % per16 != 0 || op->row_stride % per16 != 0 || op->head_stride % per16 != 0) return false;
  }
  return true;
}

bool wgmma_tier_supports(const core::Problem& p, std::string* why) {
  std::string problem;
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) {
    problem = std::string("it needs fp16 or bf16; got ") + dtype_name(p.dtype);
  } else {
    problem = shape_problem(p);
  }
  if (problem.empty() && p.kv_layout == core::KvLayout::kPaged) {
    problem = "paged K/V is served by cuda-mma-sm80 (its per-key block_table lookup is not part of the wgmma tile loads)";
  }
  if (problem.empty() && !all_rows_16_byte_aligned(p)) {
    core::Text os;
    os << "it needs 16-byte aligned rows (q/k/v/out pointers and strides, head dims multiples of 8); got Dqk = "
       << p.head_dim_qk << ", Dv = " << p.head_dim_v;
    problem = os.str();
  }
  if (problem.empty() && !wgmma_kernels_loaded()) {
    problem = "this build has no sm_90a code (FLASHSDPA_CUDA_GENCODE lacks -gencode=arch=compute_90a,code=sm_90a)";
  }
  if (!problem.empty()) {
    if (why) *why = problem;
    return false;
  }
  if (why) {
    core::Text os;
    os << "cuda-wgmma-sm90 serves this " << dtype_name(p.dtype)
       << " forward: Hopper wgmma.mma_async with fp32 accumulation, 128-row query blocks of two warpgroups, head dims Dqk = "
       << p.head_dim_qk << ", Dv = " << p.head_dim_v << " run in the " << padded_head_dim(p) << "-wide tile; "
       << features(p);
    *why = os.str();
  }
  return true;
}

bool fp32_tier_supports(const core::Problem& p, std::string* why) {
  std::string problem;
  if (p.dtype != DType::kFloat32) {
    problem = std::string("it needs fp32; got ") + dtype_name(p.dtype);
  } else {
    problem = shape_problem(p);
  }
  if (!problem.empty()) {
    if (why) *why = problem;
    return false;
  }
  if (why) {
    core::Text os;
    os << "cuda-fp32 serves this fp32 forward exactly (FFMA, no TF32), head dims Dqk = " << p.head_dim_qk
       << ", Dv = " << p.head_dim_v << " run in the " << padded_head_dim(p) << "-wide tile; " << features(p);
    *why = os.str();
  }
  return true;
}

bool backward_tier_supports(const core::Problem& p, std::string* why) {
  std::string problem = shape_problem(p);
  if (problem.empty() && p.kv_layout == core::KvLayout::kPaged) problem = "a backward over paged K/V is not supported";
  if (!problem.empty()) {
    if (why) *why = problem;
    return false;
  }
  if (why) {
    core::Text os;
    os << "cuda-bwd serves this " << dtype_name(p.dtype)
       << " backward: fp32 SIMT arithmetic (no tensor cores yet), dk/dv per 16-key block over the query heads of "
          "its group, dq per 16-row query block, P recomputed from the forward's LSE, deterministic (no atomics); "
          "head dims Dqk = "
       << p.head_dim_qk << ", Dv = " << p.head_dim_v << "; " << features(p);
    *why = os.str();
  }
  return true;
}

}  // namespace flashsdpa::cuda
