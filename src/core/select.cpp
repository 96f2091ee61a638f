// The selector. Every entry point and `flashsdpa explain` call select_tier(), so the tier it
// names is the tier that runs, and its reason is what the user reads.
#include "core/select.h"

#include <cstdlib>
#include <string>

#include "cuda/cuda_backend.h"
#if defined(FLASHSDPA_WITH_CUDA)
#include "cuda/decode_tier.h"
#include "cuda/tiers.h"
#endif

namespace flashsdpa::core {

const char* tier_name(Tier tier) {
  switch (tier) {
    case Tier::kNone: return "none";
    case Tier::kCpuTiled: return "cpu-tiled";
    case Tier::kCudaMma: return "cuda-mma-sm80";
    case Tier::kCudaFp32: return "cuda-fp32";
    case Tier::kCudaDecode: return "cuda-decode";
    case Tier::kCudaWgmma: return "cuda-wgmma-sm90";
    case Tier::kCudaBackward: return "cuda-bwd";
    case Tier::kCuda3xTf32: return "cuda-3xtf32-sm90";
    case Tier::kCudaDmma: return "cuda-dmma-sm90";
  }
  return "unknown";
}

Backend resolve_backend(Backend requested, const void* data) {
  const bool on_device = cuda::built() && cuda::is_device_pointer(data);
  switch (requested) {
    case Backend::kAuto:
      return on_device ? Backend::kCuda : Backend::kCpu;
    case Backend::kCpu:
      if (on_device) throw Error("backend: the CPU backend was requested but q is CUDA device memory");
      return Backend::kCpu;
    case Backend::kCuda:
      if (!cuda::built())
        throw Error("backend: the CUDA backend was requested but this flashsdpa was built without CUDA",
                    ErrorKind::kNotSupported);
      if (!cuda::device_available())
        throw Error("backend: the CUDA backend was requested but no CUDA device is available",
                    ErrorKind::kNotSupported);
      if (data != nullptr && !on_device)
        throw Error("backend: the CUDA backend was requested but q is host memory (expected CUDA device memory)");
      return Backend::kCuda;
  }
  throw Error("backend: unknown value " + std::to_string(static_cast<int>(requested)));
}

Tier forced_prefill_tier(const std::string& list, bool fp32, std::string* unknown) {
  const Tier half_tiers[] = {Tier::kCudaWgmma, Tier::kCudaMma};
  const Tier fp32_tiers[] = {Tier::kCuda3xTf32, Tier::kCudaDmma, Tier::kCudaFp32};
  Tier found = Tier::kNone;
  size_t begin = 0;
  while (begin <= list.size()) {
    size_t end = list.find(',', begin);
    if (end == std::string::npos) end = list.size();
    const std::string name = list.substr(begin, end - begin);
    begin = end + 1;
    if (name.empty()) continue;
    bool known = false;
    for (bool fp32_family : {false, true}) {
      const Tier* family = fp32_family ? fp32_tiers : half_tiers;
      const int count = fp32_family ? 3 : 2;
      for (int i = 0; i < count; ++i) {
        if (name != tier_name(family[i])) continue;
        known = true;
        if (fp32_family == fp32 && found == Tier::kNone) found = family[i];
      }
    }
    if (!known && unknown != nullptr && unknown->empty()) *unknown = name;
  }
  return found;
}

namespace {

TierChoice none(Backend backend, std::string why) { return TierChoice{Tier::kNone, backend, std::move(why)}; }

#if defined(FLASHSDPA_WITH_CUDA)
// A prefill tier and what it needs beyond its own supports() check.
struct PrefillTier {
  Tier tier;
  bool (*supports)(const Problem&, std::string*);
  bool hopper_only;  // compute capability 9.0 (wgmma; mma.sync m16n8k16 .f64)
};

// In order of preference: the Hopper tiers first where they serve the call, the sm80 tier
// (fp16/bf16) or the FFMA tier (fp32) for the rest and on every other GPU. Each list ends with the
// tier that serves every call of its dtypes.
struct PrefillTiers {
  const PrefillTier* tiers;
  int count;
};
constexpr PrefillTier kHalfPrefillTiers[] = {{Tier::kCudaWgmma, cuda::wgmma_tier_supports, true},
                                             {Tier::kCudaMma, cuda::mma_tier_supports, false}};
constexpr PrefillTier kFp32PrefillTiers[] = {{Tier::kCuda3xTf32, cuda::tf32x3_tier_supports, true},
                                             {Tier::kCudaDmma, cuda::dmma_tier_supports, true},
                                             {Tier::kCudaFp32, cuda::fp32_tier_supports, false}};

// The forward past the decode rule. FLASHSDPA_CUDA_FORWARD_TIER (read by forced_prefill_tier) lets
// tests and benchmarks run every tier on one machine: a call the forced tier cannot serve is
// refused, not moved, and a name that is no prefill tier refuses every call.
TierChoice select_cuda_prefill(const Problem& p) {
  const bool hopper = cuda::device_capability() == 90;
  const bool fp32 = p.dtype == DType::kFloat32;
  const PrefillTiers list = fp32 ? PrefillTiers{kFp32PrefillTiers, 3} : PrefillTiers{kHalfPrefillTiers, 2};
  std::string why;
  const char* forced_env = std::getenv("FLASHSDPA_CUDA_FORWARD_TIER");
  if (forced_env != nullptr && *forced_env != '\0') {
    const std::string forced_list = forced_env, prefix = "FLASHSDPA_CUDA_FORWARD_TIER=" + forced_list + ": ";
    std::string unknown;
    const Tier forced = forced_prefill_tier(forced_list, fp32, &unknown);
    if (!unknown.empty())
      return none(Backend::kCuda, prefix + "'" + unknown +
                                      "' is not a prefill tier (cuda-wgmma-sm90, cuda-mma-sm80, cuda-3xtf32-sm90, "
                                      "cuda-dmma-sm90, cuda-fp32)");
    for (int i = 0; i < list.count && forced != Tier::kNone; ++i) {
      const PrefillTier& t = list.tiers[i];
      if (t.tier != forced) continue;
      if (t.hopper_only && !hopper) return none(Backend::kCuda, prefix + tier_name(forced) + " needs compute capability 9.0");
      if (t.supports(p, &why)) return TierChoice{t.tier, Backend::kCuda, prefix + why};
      return none(Backend::kCuda, prefix + tier_name(forced) + " cannot serve this call: " + why);
    }
  }
  std::string fallback;
  const PrefillTier& last = list.tiers[list.count - 1];
  for (int i = 0; i < list.count; ++i) {
    const PrefillTier& t = list.tiers[i];
    if (t.hopper_only && !hopper) continue;
    if (t.supports(p, &why)) return TierChoice{t.tier, Backend::kCuda, fallback + why};
    if (&t == &last) break;
    fallback += std::string(tier_name(t.tier)) + " cannot serve this call (" + why + "), so ";
  }
  return none(Backend::kCuda, std::string(tier_name(last.tier)) + " cannot serve this call: " + why);
}
#endif

TierChoice select_cuda(const Problem& p, Op op) {
  if (!cuda::device_available()) return none(Backend::kCuda, "no CUDA device is available");
#if defined(FLASHSDPA_WITH_CUDA)
  std::string why;
  switch (op) {
    case Op::kForward: {
      const bool decode_capable = cuda::device_capability() >= 80;
      if (p.dtype != DType::kFloat32 && !decode_capable)
        return none(Backend::kCuda, "the fp16/bf16 tiers need compute capability 8.0 or newer; this device is " +
                                        std::to_string(cuda::device_capability() / 10) + "." +
                                        std::to_string(cuda::device_capability() % 10));
      // Short queries are memory-bound: cuda-decode packs a kv head's query heads into one tile
      // and splits the keys so K/V stream once at full bandwidth (fp32 in exact FFMA). Longer
      // queries are compute-bound and go to the prefill tiers (128-row tensor-core tiles; fp32's
      // own tiers, which also serve fp32 below compute capability 8.0).
      if (decode_capable && p.seqlen_q <= cuda::kDecodeMaxQueryLen && cuda::decode_tier_supports(p, false, &why))
        return TierChoice{Tier::kCudaDecode, Backend::kCuda,
                          "longest query has at most " + std::to_string(cuda::kDecodeMaxQueryLen) + " rows: " + why};
      return select_cuda_prefill(p);
    }
    case Op::kKvCache:
      if (p.dtype == DType::kFloat32) {
        // Decoding steps (queries up to kDecodeMaxQueryLen rows) on cuda-decode's fp32 kernel;
        // longer appends are compute-bound and run the fp32 forward over the cache.
        std::string decode_why;
        if (p.seqlen_q <= cuda::kDecodeMaxQueryLen && cuda::device_capability() >= 80 &&
            cuda::decode_tier_supports(p, true, &decode_why))
          return TierChoice{Tier::kCudaDecode, Backend::kCuda, decode_why};
        if (cuda::fp32_kvcache_supports(p, &why)) return TierChoice{Tier::kCudaFp32, Backend::kCuda, why};
        return none(Backend::kCuda, "cuda-fp32 cannot serve this KV-cache call: " + why);
      }
      if (cuda::device_capability() < 80)
        return none(Backend::kCuda, "cuda-decode needs compute capability 8.0 or newer");
      if (cuda::decode_tier_supports(p, true, &why)) return TierChoice{Tier::kCudaDecode, Backend::kCuda, why};
      return none(Backend::kCuda, "cuda-decode cannot serve this KV-cache call: " + why);
    case Op::kBackward:
      if (cuda::device_capability() < 80)
        return none(Backend::kCuda, "cuda-bwd needs compute capability 8.0 or newer; this device is " +
                                        std::to_string(cuda::device_capability() / 10) + "." +
                                        std::to_string(cuda::device_capability() % 10));
      if (cuda::backward_tier_supports(p, &why)) return TierChoice{Tier::kCudaBackward, Backend::kCuda, why};
      return none(Backend::kCuda, "cuda-bwd cannot serve this call: " + why);
    case Op::kPagedKvWrite:
      return none(Backend::kCuda, "paged_kv_write takes a KvWriteProblem (see the overload below)");
  }
#else
  (void)p;
  (void)op;
#endif
  return none(Backend::kCuda, "this flashsdpa was built without the CUDA backend");
}

}  // namespace

TierChoice select_tier(const KvWriteProblem& p, Backend backend) {
  (void)p;
  if (backend == Backend::kCpu)
    return TierChoice{Tier::kCpuTiled, Backend::kCpu, "paged_kv_write on the CPU: rows copied by the thread pool"};
  if (!cuda::device_available()) return none(Backend::kCuda, "no CUDA device is available");
  return TierChoice{Tier::kCudaDecode, Backend::kCuda, "paged_kv_write: one launch writes every new token"};
}

TierChoice select_tier(const Problem& p, Op op, Backend backend) {
  if (backend == Backend::kCuda) return select_cuda(p, op);
  // The CPU backend serves every feature the validator accepts.
  std::string what = op == Op::kBackward ? "backward" : op == Op::kKvCache ? "KV-cache forward" : "forward";
  return TierChoice{Tier::kCpuTiled, Backend::kCpu,
                    "cpu-tiled serves every feature on the CPU (" + what + ", head dims 1..512, fp16/bf16/fp32 " +
                        "with fp32 accumulation, tiled online softmax, O(tokens) memory)"};
}

}  // namespace flashsdpa::core
