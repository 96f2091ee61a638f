// Division by a divisor fixed at launch as a multiply-high, an add and a shift (Granlund and
// Montgomery, "Division by invariant integers using multiplication", 1994): the host works out
// the multiplier once, kernels divide block indices and row counts by it. A 32-bit division by a
// run-time value is a ~15-instruction sequence through the reciprocal unit; the decode kernel's
// prologue had seven of them in its dependency chains (docs/perf-log.md, CUDA decode, run 22).
//
// Exact for numerators below 2^31 (the sum of the high product and the numerator stays below
// 2^32) and divisors 1 .. 2^31; tests/test_fast_div.cpp checks both ends and a sweep.
#pragma once

#include <cstdint>

#include "core/mask.h"  // FLASHSDPA_HD

namespace flashsdpa::cuda {

FLASHSDPA_HD uint32_t mul_high_u32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((uint64_t(a) * b) >> 32);
#endif
}

// A quotient and its remainder (FastDiv::divmod).
struct QuotientRemainder {
  uint32_t quotient, remainder;
};

struct FastDiv {
  uint32_t divisor = 1;
  uint32_t multiplier = 1;  // 2^32 (2^shift - divisor) / divisor + 1, rounded down before the + 1
  uint32_t shift = 0;       // ceil(log2(divisor))

  FastDiv() = default;
  explicit FastDiv(uint32_t d) : divisor(d) {
    while ((uint64_t(1) << shift) < d) ++shift;
    multiplier = static_cast<uint32_t>((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d) / d + 1);
  }
  // n / divisor for n < 2^31.
  FLASHSDPA_HD uint32_t div(uint32_t n) const { return (mul_high_u32(n, multiplier) + n) >> shift; }
  // n / divisor and n % divisor for n < 2^31, from one multiply-high.
  FLASHSDPA_HD QuotientRemainder divmod(uint32_t n) const {
    const uint32_t q = div(n);
    return {q, n - q * divisor};
  }
};

}  // namespace flashsdpa::cuda
