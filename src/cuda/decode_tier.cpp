// What cuda-decode serves (see decode_tier.h). Plain C++: the selector calls it.
#include "cuda/decode_tier.h"

#include <algorithm>
#include "core/text.h"
#include <utility>

namespace flashsdpa::cuda {

namespace {

constexpr int64_t kMaxHeadDim = 256;

const char* cache_words(const core::Problem& p) {
  switch (p.kv_layout) {
    case core::KvLayout::kPaged: return "paged KV cache through block_table";
    case core::KvLayout::kDenseCache: return p.cache_batch_idx ? "dense KV cache with cache_batch_idx" : "dense KV cache";
    case core::KvLayout::kVarlen: return "varlen K/V";
    case core::KvLayout::kBatched: return "batched K/V";
  }
  return "K/V";
}

int64_t padded(int64_t d) { return d <= 64 ? 64 : d <= 128 ? 128 : 256; }

constexpr int64_t kMaxBatch = 65535;           // the combine's grid y
constexpr int64_t kMaxCtas = int64_t{1} << 31;  // grid x: sequences x kv heads x query tiles

// Packed query rows per CTA: 16 (the tensor-core kernel's m16n8k16), 8 for fp32 (decode_fp32.cuh).
int64_t tile_rows(const core::Problem& p) { return p.dtype == DType::kFloat32 ? 8 : 16; }

int64_t ctas(const core::Problem& p) {
  return p.batch * p.heads_kv * ((p.seqlen_q * p.group + tile_rows(p) - 1) / tile_rows(p));
}

// "" when cuda-decode can serve p, else why not. Text is built only for a refusal: the entry
// points ask on every call.
std::string refusal(const core::Problem& p, bool is_kvcache) {
  using std::to_string;
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16 && p.dtype != DType::kFloat32)
    return std::string("cuda-decode needs fp16, bf16 or fp32; got ") + dtype_name(p.dtype);
  if (p.head_dim_qk < 1 || p.head_dim_qk > kMaxHeadDim || p.head_dim_v < 1 || p.head_dim_v > kMaxHeadDim)
    return "head dims must be in 1..256 on the GPU; got Dqk = " + to_string(p.head_dim_qk) +
           ", Dv = " + to_string(p.head_dim_v);
  if (p.dtype == DType::kFloat32 && !decode_fp32_fits(std::max(p.head_dim_qk, p.head_dim_v)))
    return "cuda-decode's fp32 kernel at head dim " + to_string(padded(std::max(p.head_dim_qk, p.head_dim_v))) +
           " needs more shared memory per block than this device allows";
  if (p.batch > kMaxBatch) return "batch must be <= " + to_string(kMaxBatch) + " on the GPU; got " + to_string(p.batch);
  if (ctas(p) >= kMaxCtas)
    return "batch x kv heads x query tiles = " + to_string(ctas(p)) + " CTAs is beyond the launch grid";
  // The kernels index packed query rows (query rows x group), the combine's rows (query rows x
  // query heads) and keys of a sequence in 32 bits.
  if (p.seqlen_q * p.heads_q >= kMaxCtas || p.seqlen_k >= kMaxCtas)
    return "query rows x query heads (" + to_string(p.seqlen_q * p.heads_q) + ") and keys (" + to_string(p.seqlen_k) +
           ") must be below 2^31 on cuda-decode";
  if (!is_kvcache && p.kv_layout != core::KvLayout::kPaged && p.seqlen_q > kDecodeMaxQueryLen)
    return "cuda-decode serves forward calls over a paged cache or with queries of at most " +
           to_string(kDecodeMaxQueryLen) + " rows; the longest query here may have " + to_string(p.seqlen_q);
  return {};
}

}  // namespace

bool decode_tier_supports(const core::Problem& p, bool is_kvcache, std::string* why) {
  std::string no = refusal(p, is_kvcache);
  if (!no.empty()) {
    if (why) *why = std::move(no);
    return false;
  }
  if (why) {
    core::Text os;
    const int64_t rows = p.seqlen_q * p.group;
    os << "cuda-decode serves this " << dtype_name(p.dtype) << (is_kvcache ? " KV-cache call" : " forward")
       << ": split-KV flash decoding over the " << cache_words(p) << ", one CTA per (sequence, kv head, query tile of "
       << tile_rows(p) << " packed rows, key split) with the " << p.group << " query heads of a kv head packed into the "
       << "tile so K/V are read once" << (rows > tile_rows(p) ? " per query tile" : "")
       << (p.dtype == DType::kFloat32 ? ", in exact fp32 (FFMA)" : ", on tensor cores") << "; head dims "
       << p.head_dim_qk << "/" << p.head_dim_v
       << " in the " << padded(std::max(p.head_dim_qk, p.head_dim_v)) << "-wide tile; "
       << (p.num_splits == 0 ? std::string("splits chosen to fill the GPU")
                             : "num_splits = " + std::to_string(p.num_splits));
    if (p.seqlen_new > 0) os << "; appends " << p.seqlen_new << " tokens in place first";
    if (p.rotary_dim > 0) os << " with " << (p.rotary_interleaved ? "interleaved" : "NeoX") << " rotary";
    *why = os.str();
  }
  return true;
}

}  // namespace flashsdpa::cuda
