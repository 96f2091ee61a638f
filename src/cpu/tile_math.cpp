#include "cpu/tile_math.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace flashsdpa::cpu {

// Defined by tile_math_<isa>.cpp; null where the build target cannot run that set.
const TileOps* tile_ops_avx512();
const TileOps* tile_ops_avx2();
const TileOps* tile_ops_generic();
// Defined by tile_math_bf16.cpp; null where the build cannot compile them (AMX: or where the OS
// refuses the tile state).
const Bf16Ops* bf16_ops_avx512bf16();
const Bf16Ops* bf16_ops_amx();

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAmx: return "amx";
    case Isa::kAvx512Bf16: return "avx512bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kGeneric: return "generic";
  }
  return "unknown";
}

namespace {

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
// F16C straight from CPUID (leaf 1, ECX bit 29): not every compiler's __builtin_cpu_supports
// knows the name. It shares AVX's register state, whose OS support the avx2 check covers.
bool has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
}

// CPUID leaf 7: AVX512-BF16 is sub-leaf 1 EAX bit 5; AMX-BF16 and AMX-TILE are sub-leaf 0 EDX
// bits 22 and 24. AMX's register state is granted by the OS on request (bf16_ops_amx()).
bool has_avx512_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 && (eax & (1u << 5)) != 0;
}
bool has_amx_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) != 0 && (edx & (1u << 22)) != 0 &&
         (edx & (1u << 24)) != 0;
}
#endif

bool cpu_supports(Isa isa) {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAmx:
      return cpu_supports(Isa::kAvx512Bf16) && has_amx_bf16();
    case Isa::kAvx512Bf16:
      return cpu_supports(Isa::kAvx512) && has_avx512_bf16();
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma") && has_f16c();
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case Isa::kGeneric:
      return true;
  }
  return false;
#else
  return isa == Isa::kGeneric;
#endif
}

Isa environment_cap() {
  const char* env = std::getenv("FLASHSDPA_CPU_ISA");
  if (env == nullptr) return Isa::kAmx;
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16}) {
    if (std::strcmp(env, isa_name(isa)) == 0) return isa;
  }
  return Isa::kAmx;
}

const TileOps* best_up_to(Isa cap) {
  for (Isa isa : {Isa::kAmx, Isa::kAvx512Bf16, Isa::kAvx512, Isa::kAvx2, Isa::kGeneric}) {
    if (static_cast<int>(isa) > static_cast<int>(cap)) continue;
    if (const TileOps* ops = tile_ops_for(isa)) return ops;
  }
  return tile_ops_generic();
}

std::atomic<const TileOps*>& current() {
  static std::atomic<const TileOps*> ops{best_up_to(environment_cap())};
  return ops;
}

// The AVX-512 fp32 kernels with a bf16 product added; null when either is missing.
const TileOps* with_bf16(Isa isa, const Bf16Ops* bf16) {
  const TileOps* base = tile_ops_avx512();
  if (base == nullptr || bf16 == nullptr) return nullptr;
  TileOps* ops = new TileOps(*base);  // one per level for the life of the process
  ops->isa = isa;
  ops->bf16 = bf16;
  return ops;
}

}  // namespace

const TileOps* tile_ops_for(Isa isa) {
  if (!cpu_supports(isa)) return nullptr;
  switch (isa) {
    case Isa::kAmx: {
      static const TileOps* const ops = with_bf16(Isa::kAmx, bf16_ops_amx());
      return ops;
    }
    case Isa::kAvx512Bf16: {
      static const TileOps* const ops = with_bf16(Isa::kAvx512Bf16, bf16_ops_avx512bf16());
      return ops;
    }
    case Isa::kAvx512: return tile_ops_avx512();
    case Isa::kAvx2: return tile_ops_avx2();
    case Isa::kGeneric: return tile_ops_generic();
  }
  return nullptr;
}

const TileOps& tile_ops() { return *current().load(std::memory_order_acquire); }

Isa set_isa_cap(Isa cap) { return current().exchange(best_up_to(cap), std::memory_order_acq_rel)->isa; }

}  // namespace flashsdpa::cpu
