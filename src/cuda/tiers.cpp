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

// Shape limits shared by the forward tiers; "" when the problem fits. KV append and rotary only
// where the call is a KV-cache call (`kvcache`: cuda-fp32's fp32 KV cache).
std::string shape_problem(const core::Problem& p, bool kvcache = false) {
  core::Text os;
  if (p.head_dim_qk < 1 || p.head_dim_qk > kMaxHeadDim || p.head_dim_v < 1 || p.head_dim_v > kMaxHeadDim) {
    os << "head dims must be in 1..256 on the GPU; got Dqk = " << p.head_dim_qk << ", Dv = " << p.head_dim_v;
  } else if (p.batch > kMaxGridDim) {
    os << "batch must be <= " << kMaxGridDim << " on the GPU; got " << p.batch;
  } else if (p.heads_q > kMaxGridDim) {
    os << "query heads must be <= " << kMaxGridDim << " on the GPU; got " << p.heads_q;
  } else if (!kvcache && (p.seqlen_new > 0 || p.rotary_dim > 0)) {
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

// "" when the problem has one of the tier's dtypes (fp16/bf16, or fp32) and a shape it fits.
std::string dtype_and_shape_problem(const core::Problem& p, bool half_types) {
  if (half_types && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return std::string("it needs fp16 or bf16; got ") + dtype_name(p.dtype);
  if (!half_types && p.dtype != DType::kFloat32) return std::string("it needs fp32; got ") + dtype_name(p.dtype);
  return shape_problem(p);
}

// What both wgmma tiers need beyond dtype and shape: K/V linear in the key index, 16-byte aligned
// rows and the sm_90a build; `fallback` is the tier that serves the rest. "" when the call fits.
std::string wgmma_layout_problem(const core::Problem& p, const char* fallback) {
  if (p.kv_layout == core::KvLayout::kPaged)
    return std::string("paged K/V is served by ") + fallback +
           " (its per-key block_table lookup is not part of the wgmma tile loads)";
  if (!all_rows_16_byte_aligned(p)) {
    core::Text os;
    os << "it needs 16-byte aligned rows (q/k/v/out pointers and strides, head dims multiples of "
       << 16 / dtype_size(p.dtype) << "); got Dqk = " << p.head_dim_qk << ", Dv = " << p.head_dim_v;
    return os.str();
  }
  if (!wgmma_kernels_loaded())
    return "this build has no sm_90a code (FLASHSDPA_CUDA_GENCODE lacks -gencode=arch=compute_90a,code=sm_90a)";
  return "";
}

// A tier's answer: false with the problem, or true with `serves` and the head dims, the tile and
// the features that every tier's reason ends with.
bool answer(const core::Problem& p, const std::string& problem, const std::string& serves, std::string* why) {
  if (!problem.empty()) {
    if (why) *why = problem;
    return false;
  }
  if (why) {
    core::Text os;
    os << serves << ", head dims Dqk = " << p.head_dim_qk << ", Dv = " << p.head_dim_v << " run in the "
       << padded_head_dim(p) << "-wide tile; " << features(p);
    *why = os.str();
  }
  return true;
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
  return answer(p, dtype_and_shape_problem(p, true),
                std::string("cuda-mma-sm80 serves this ") + dtype_name(p.dtype) +
                    " forward: mma.sync m16n8k16 tensor cores with fp32 accumulation",
                why);
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
  std::string problem = dtype_and_shape_problem(p, true);
  if (problem.empty()) problem = wgmma_layout_problem(p, "cuda-mma-sm80");
  return answer(p, problem,
                std::string("cuda-wgmma-sm90 serves this ") + dtype_name(p.dtype) +
                    " forward: Hopper wgmma.mma_async with fp32 accumulation, 128-row query blocks of two warpgroups",
                why);
}

bool tf32x3_tier_supports(const core::Problem& p, std::string* why) {
  std::string problem = dtype_and_shape_problem(p, false);
  if (problem.empty() && padded_head_dim(p) > 128) {
    core::Text os;
    os << "head dims above 128 are served by cuda-dmma-sm90 or cuda-fp32 (a 128-row block's two TF32 planes of Q "
          "alone would need 256 KB of shared memory at 256); got Dqk = "
       << p.head_dim_qk << ", Dv = " << p.head_dim_v;
    problem = os.str();
  }
  if (problem.empty() && p.exact_fp32) {
    problem = "the call asks for exact fp32 products (exact_fp32, set for forwards that feed a backward)";
  }
  if (problem.empty()) problem = wgmma_layout_problem(p, "cuda-fp32");
  return answer(p, problem,
                "cuda-3xtf32-sm90 serves this fp32 forward: Hopper wgmma.mma_async with each product taken as three "
                "TF32 products (big x big + big x small + small x big, accurate to fp32 rounding) and fp32 "
                "accumulation, 128-row query blocks of two warpgroups",
                why);
}

bool dmma_tier_supports(const core::Problem& p, std::string* why) {
  std::string problem = dtype_and_shape_problem(p, false);
  if (problem.empty() && padded_head_dim(p) <= 128) {
    core::Text os;
    os << "head dims up to 128 are served by cuda-3xtf32-sm90 or cuda-fp32 (this tier's tile is built for 256); "
          "got Dqk = "
       << p.head_dim_qk << ", Dv = " << p.head_dim_v;
    problem = os.str();
  }
  if (problem.empty()) problem = wgmma_layout_problem(p, "cuda-fp32");
  if (problem.empty()) {
    const int ratio = fp32_to_fp64_rate_ratio();
    if (ratio < 1 || ratio > 2)
      problem = "this GPU's FP64 rate is " + (ratio > 0 ? "1/" + std::to_string(ratio) : std::string("unknown")) +
                " of its FP32 rate (the FP64 tensor cores pay only at 1/2, as on the H100 and H200)";
  }
  return answer(p, problem,
                "cuda-dmma-sm90 serves this fp32 forward: Hopper's FP64 tensor cores (mma.sync m16n8k16 .f64), "
                "each fp32 product exact in fp64, scores and each key tile's P V summed in fp64, 64-row query "
                "blocks of 8 warps",
                why);
}

bool fp32_tier_supports(const core::Problem& p, std::string* why) {
  return answer(p, dtype_and_shape_problem(p, false),
                "cuda-fp32 serves this fp32 forward exactly (FFMA, no TF32)", why);
}

bool fp32_kvcache_supports(const core::Problem& p, std::string* why) {
  std::string problem = p.dtype != DType::kFloat32 ? std::string("it needs fp32; got ") + dtype_name(p.dtype)
                                                   : shape_problem(p, /*kvcache=*/true);
  // The append launches one warp per (sequence, new token, kv head), four per block, on grid x.
  constexpr int64_t kMaxAppendWarps = ((int64_t{1} << 31) - 1) * 4;
  if (problem.empty() && p.batch * p.seqlen_new * p.heads_kv > kMaxAppendWarps)
    problem = "batch x new tokens x kv heads = " + std::to_string(p.batch * p.seqlen_new * p.heads_kv) +
              " rows to append is beyond the append's launch grid";
  if (!problem.empty() || why == nullptr) return answer(p, problem, "", why);
  core::Text os;
  os << "cuda-fp32 serves this fp32 KV-cache call exactly (FFMA, no TF32): ";
  if (p.seqlen_new > 0) {
    os << "appends " << p.seqlen_new << " tokens in place first (cuda-decode's append kernel";
    if (p.rotary_dim > 0)
      os << ", new keys rotated " << (p.rotary_interleaved ? "interleaved" : "NeoX") << " over " << p.rotary_dim
         << " dims";
    os << "), then ";
  }
  os << "attends over the cache as the fp32 forward does";
  if (p.rotary_dim > 0) os << ", the queries rotated at their positions as the query tile loads";
  if (p.num_splits > 1) os << "; num_splits = " << p.num_splits << " is ignored (this tier does not split keys)";
  return answer(p, problem, os.str(), why);
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
