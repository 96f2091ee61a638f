// cuda::FastDiv (src/cuda/fast_div.h) against the division operator: every divisor up to 4096 with
// numerators around its multiples and at the top of the range, powers of two and their
// neighbours, and the largest divisors. Host code: the device evaluates the same expression.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "cuda/fast_div.h"

namespace flashsdpa::cuda {
namespace {

constexpr uint32_t kTop = (uint32_t(1) << 31) - 1;  // the largest numerator FastDiv serves

// Numerators that stress d: 0, the neighbours of a few multiples, the top of the range.
std::vector<uint32_t> numerators(uint32_t d, std::mt19937& rng) {
  std::vector<uint32_t> n = {0, 1, kTop, kTop - 1};
  for (int64_t v : {int64_t(d) - 1, int64_t(d), int64_t(d) + 1, int64_t(kTop) - d})
    if (v >= 0 && v <= kTop) n.push_back(static_cast<uint32_t>(v));
  for (uint64_t k : {uint64_t(2), uint64_t(3), uint64_t(1000), uint64_t(kTop) / d, uint64_t(kTop) / d - 1})
    for (int64_t delta : {-1, 0, 1}) {
      const int64_t v = int64_t(k) * d + delta;
      if (v >= 0 && v <= kTop) n.push_back(static_cast<uint32_t>(v));
    }
  std::uniform_int_distribution<uint32_t> any(0, kTop);
  for (int r = 0; r < 64; ++r) n.push_back(any(rng));
  return n;
}

void expect_exact(uint32_t d, std::mt19937& rng) {
  const FastDiv f(d);
  for (uint32_t n : numerators(d, rng)) {
    ASSERT_EQ(f.div(n), n / d) << n << " / " << d;
    const QuotientRemainder qr = f.divmod(n);
    ASSERT_EQ(qr.quotient, n / d) << n << " / " << d;
    ASSERT_EQ(qr.remainder, n % d) << n << " % " << d;
  }
}

TEST(FastDiv, EverySmallDivisor) {
  std::mt19937 rng(7);
  for (uint32_t d = 1; d <= 4096; ++d) expect_exact(d, rng);
}

TEST(FastDiv, PowersOfTwoTheirNeighboursAndTheLargestDivisors) {
  std::mt19937 rng(8);
  for (int k = 1; k <= 31; ++k) {
    const uint32_t p = uint32_t(1) << k;
    for (uint32_t d : {p - 1, p, p + 1})
      if (d >= 1 && d <= (uint32_t(1) << 31)) expect_exact(d, rng);
  }
  std::uniform_int_distribution<uint32_t> any(4097, kTop);
  for (int r = 0; r < 2000; ++r) expect_exact(any(rng), rng);
}

}  // namespace
}  // namespace flashsdpa::cuda
