// The CPU forward's own pieces: the tile math of every instruction set this machine runs
// (products, exp, tanh, conversions, the online-softmax step), and the forward, KV-cache and
// paged-write paths under each set, split-KV, non-finite values, unreadable paged blocks and
// the scratch bound. The broad randomized grid lives in test_forward_grid.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <limits>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"
#include "cpu/tile_math.h"
#include "test_util.h"

namespace flashsdpa::test {
namespace {

using cpu::Isa;
using cpu::TileOps;

std::vector<Isa> available_isas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16, Isa::kAmx})
    if (cpu::tile_ops_for(isa) != nullptr) isas.push_back(isa);
  return isas;
}

std::string isa_label(const ::testing::TestParamInfo<Isa>& info) { return cpu::isa_name(info.param); }

// Restores the instruction set in use when a test is done with it.
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa cap) : previous_(cpu::set_isa_cap(cap)) {}
  ~ScopedIsa() { cpu::set_isa_cap(previous_); }

 private:
  Isa previous_;
};

// Distance in units in the last place between two floats of the same sign.
int64_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = INT32_MIN - ia;
  if (ib < 0) ib = INT32_MIN - ib;
  return std::llabs(static_cast<int64_t>(ia) - ib);
}

class TileMath : public ::testing::TestWithParam<Isa> {
 protected:
  const TileOps& ops() const { return *cpu::tile_ops_for(GetParam()); }
};

TEST_P(TileMath, MatmulMatchesNaiveProductForEveryTailAndLayout) {
  Rng rng(7);
  for (int64_t m : {1, 5, 12, 13, 31}) {
    for (int64_t n : {1, 7, 16, 17, 32, 45, 64}) {
      for (int64_t k : {0, 1, 3, 64, 111}) {
        for (bool transposed_a : {false, true}) {
          for (bool accumulate : {false, true}) {
            const int64_t lda = (transposed_a ? m : k) + 3, ldb = n + 5, ldc = n + 2;
            std::vector<float> a(static_cast<size_t>((transposed_a ? k : m) * lda + 1));
            std::vector<float> b(static_cast<size_t>(k * ldb + 1)), c(static_cast<size_t>(m * ldc));
            for (float& x : a) x = static_cast<float>(rng.normal());
            for (float& x : b) x = static_cast<float>(rng.normal());
            for (float& x : c) x = static_cast<float>(rng.normal());
            std::vector<float> expected_c = c;
            for (int64_t i = 0; i < m; ++i) {
              for (int64_t j = 0; j < n; ++j) {
                double sum = accumulate ? c[i * ldc + j] : 0.0;
                for (int64_t t = 0; t < k; ++t)
                  sum += static_cast<double>(transposed_a ? a[t * lda + i] : a[i * lda + t]) * b[t * ldb + j];
                expected_c[i * ldc + j] = static_cast<float>(sum);
              }
            }
            ops().matmul(m, n, k, a.data(), transposed_a ? 1 : lda, transposed_a ? lda : 1, b.data(), ldb, c.data(),
                         ldc, accumulate);
            for (int64_t i = 0; i < m; ++i) {
              for (int64_t j = 0; j < ldc; ++j) {
                const float got = c[i * ldc + j], want = expected_c[i * ldc + j];
                // Columns past n must be untouched; the rest within fp32 accumulation error.
                const double tolerance = j < n ? 1e-5 * (static_cast<double>(k) + 2) : 0.0;
                ASSERT_LE(std::fabs(got - want), tolerance)
                    << "m=" << m << " n=" << n << " k=" << k << " transposed_a=" << transposed_a
                    << " accumulate=" << accumulate << " at (" << i << "," << j << ")";
              }
            }
          }
        }
      }
    }
  }
}

TEST_P(TileMath, UnfusedMatmulIsBitIdenticalToAPlainFloatLoop) {
  Rng rng(5);
  for (bool transposed_a : {false, true}) {
    const int64_t m = 29, n = 37, k = 128, lda = transposed_a ? m : k, ldb = n, ldc = n;
    std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n)), c(static_cast<size_t>(m * n));
    for (float& x : a) x = static_cast<float>(rng.normal(0, 1000));
    for (float& x : b) x = static_cast<float>(rng.normal());
    ops().matmul_unfused(m, n, k, a.data(), transposed_a ? 1 : lda, transposed_a ? lda : 1, b.data(), ldb, c.data(),
                         ldc, false);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        float dot = 0.0f;
        for (int64_t t = 0; t < k; ++t) {
          volatile float product = (transposed_a ? a[t * lda + i] : a[i * lda + t]) * b[t * ldb + j];
          dot += product;
        }
        ASSERT_EQ(core::float_to_bits(c[i * ldc + j]), core::float_to_bits(dot)) << i << "," << j;
      }
    }
  }
}

TEST_P(TileMath, ExpIsWithinTwoUlpAndHandlesInfinities) {
  // exp_shifted with a zero shift is a plain exp over the tile.
  std::vector<float> x;
  for (double v = -87.0; v <= 88.0; v += 0.01234) x.push_back(static_cast<float>(v));
  x.push_back(0.0f);
  x.push_back(-0.0f);
  const size_t normal_count = x.size();
  x.push_back(-INFINITY);
  x.push_back(-200.0f);
  x.push_back(200.0f);
  x.push_back(std::numeric_limits<float>::quiet_NaN());
  std::vector<float> y = x;
  const int64_t cols = static_cast<int64_t>(y.size());
  std::vector<float> shift(static_cast<size_t>(cols), 0.0f);
  ops().exp_shifted(y.data(), cols, 1, cols, shift.data());
  int64_t worst = 0;
  for (size_t n = 0; n < normal_count; ++n) {
    const float want = static_cast<float>(std::exp(static_cast<double>(x[n])));
    worst = std::max(worst, ulp_distance(y[n], want));
  }
  EXPECT_LE(worst, 2);
  EXPECT_EQ(y[normal_count], 0.0f);
  EXPECT_EQ(y[normal_count + 1], 0.0f);
  EXPECT_EQ(y[normal_count + 2], INFINITY);
  EXPECT_TRUE(std::isnan(y[normal_count + 3]));
}

TEST_P(TileMath, SoftcapTanhIsAccurateNearZeroAndFarOut) {
  std::vector<float> x;
  for (double v = -30.0; v <= 30.0; v += 0.00731) x.push_back(static_cast<float>(v));
  for (double v = 1e-6; v < 1.0; v *= 1.37) {
    x.push_back(static_cast<float>(v));
    x.push_back(static_cast<float>(-v));
  }
  const int64_t cols = static_cast<int64_t>(x.size());
  std::vector<float> y = x;
  cpu::ScoreModTile mods;
  mods.scale = 1.0f;
  mods.softcap = 1.0f;  // y = tanh(x)
  ops().score_mods(y.data(), cols, 1, cols, mods);
  int64_t worst = 0;
  for (int64_t n = 0; n < cols; ++n) {
    const float want = static_cast<float>(std::tanh(static_cast<double>(x[n])));
    worst = std::max(worst, ulp_distance(y[n], want));
  }
  EXPECT_LE(worst, 3);
}

TEST_P(TileMath, AlibiAndScaleFollowScoreMod) {
  const int64_t rows = 5, cols = 19, ld = 32;
  std::vector<float> s(static_cast<size_t>(rows * ld)), slope(static_cast<size_t>(ld)), aligned(static_cast<size_t>(ld));
  Rng rng(3);
  for (float& x : s) x = static_cast<float>(rng.normal(0, 10));
  for (int64_t c = 0; c < cols; ++c) {
    slope[c] = static_cast<float>(rng.uniform(0, 1));
    aligned[c] = static_cast<float>(c - 7);
  }
  std::vector<float> got = s;
  cpu::ScoreModTile mods;
  mods.scale = 0.125f;
  mods.softcap = 15.0f;
  mods.col_slope = slope.data();
  mods.col_aligned_key = aligned.data();
  ops().score_mods(got.data(), ld, rows, cols, mods);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      core::ScoreMod mod;
      mod.softcap = 15.0f;
      mod.has_alibi = true;
      mod.alibi_slope = slope[c];
      // Query column c aligned with key c - 7 of this tile: i + diag - j = (c - 7) - r.
      const float want = mod.apply(s[r * ld + c] * 0.125f, c - 7, r, 0);
      EXPECT_NEAR(got[r * ld + c], want, 4e-6f * (1.0f + std::fabs(want))) << r << "," << c;
    }
  }
}

TEST_P(TileMath, ConversionsRoundLikeCoreDtype) {
  std::vector<float> values;
  Rng rng(11);
  for (int n = 0; n < 2000; ++n) values.push_back(static_cast<float>(rng.normal(0, 100)));
  for (float special : {0.0f, -0.0f, 65504.0f, 65520.0f, 70000.0f, 6e-8f, 3e-5f, -1e-40f, INFINITY, -INFINITY,
                        std::numeric_limits<float>::quiet_NaN(), 1.00390625f, 1.01171875f, 3.4e38f})
    values.push_back(special);
  const int64_t n = static_cast<int64_t>(values.size());
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    std::vector<uint8_t> stored(static_cast<size_t>(n * 4));
    ops().store_row(values.data(), 1.0f, stored.data(), dtype, n);
    std::vector<float> loaded(static_cast<size_t>(n));
    ops().load_row(stored.data(), dtype, loaded.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float want = core::round_to(dtype, values[i]);
      const float got = loaded[i];
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(got)) << dtype_name(dtype) << " " << values[i];
      } else {
        EXPECT_EQ(core::float_to_bits(got), core::float_to_bits(want)) << dtype_name(dtype) << " " << values[i];
      }
    }
  }
}

TEST_P(TileMath, OnlineSoftmaxKeepsEmptyColumnsAtZero) {
  // Column 0: every score -inf (fully masked so far); column 1: ordinary; column 2: max grows.
  const int64_t rows = 3, cols = 3, ld = 16;
  std::vector<float> s = {-INFINITY, 1.0f, 5.0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                          -INFINITY, 2.0f, 1.0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                          -INFINITY, 3.0f, 9.0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  std::vector<float> max = {-INFINITY, -INFINITY, 4.0f}, sum = {0.0f, 0.0f, 2.0f}, factor(3);
  max.resize(ld, -INFINITY);
  sum.resize(ld, 0.0f);
  factor.resize(ld);
  ops().online_softmax(s.data(), ld, rows, cols, max.data(), sum.data(), factor.data());
  EXPECT_EQ(max[0], -INFINITY);
  EXPECT_EQ(sum[0], 0.0f);
  EXPECT_EQ(factor[0], 0.0f);
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(s[r * ld], 0.0f);
  EXPECT_EQ(max[1], 3.0f);
  EXPECT_NEAR(sum[1], std::exp(-2.0) + std::exp(-1.0) + 1.0, 1e-6);
  EXPECT_EQ(max[2], 9.0f);
  EXPECT_NEAR(factor[2], std::exp(4.0 - 9.0), 1e-7);
  EXPECT_NEAR(sum[2], 2.0 * std::exp(-5.0) + std::exp(-4.0) + std::exp(-8.0) + 1.0, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Isa, TileMath, ::testing::ValuesIn(available_isas()), isa_label);

TEST(TileMathDispatch, BestSetIsInUseByDefault) {
  const std::vector<Isa> isas = available_isas();
  // Printed so that a log shows which set the suite ran on (the bf16 product with AMX or AVX512-BF16).
  std::cout << "[ cpu isa ] in use: " << cpu::isa_name(cpu::tile_ops().isa)
            << ", bf16 product: " << (cpu::tile_ops().bf16 != nullptr ? "yes" : "no") << "\n";
  if (std::getenv("FLASHSDPA_CPU_ISA") == nullptr) {
    EXPECT_EQ(cpu::tile_ops().isa, isas.back());
  }
}

// ---- bf16 products ------------------------------------------------------------------------------

std::vector<Isa> bf16_isas() {
  std::vector<Isa> isas;
  for (Isa isa : available_isas())
    if (cpu::tile_ops_for(isa)->bf16 != nullptr) isas.push_back(isa);
  return isas;
}

class Bf16Product : public ::testing::TestWithParam<Isa> {
 protected:
  const cpu::Bf16Ops& ops() const { return *cpu::tile_ops_for(GetParam())->bf16; }

  // C (+)= A · B with B given row-major as bf16 and packed into pairs here; returns C.
  std::vector<float> product(int64_t m, int64_t n, int64_t k, const std::vector<uint16_t>& a,
                             const std::vector<uint16_t>& b, const std::vector<float>& c0, bool accumulate) const {
    const int64_t ldb = n + 16, ldc = n + 16;  // padded strides
    std::vector<uint32_t> packed(static_cast<size_t>(k / 2 * ldb), 0xdeadu);
    for (int64_t t = 0; t < k; t += 2)
      ops().pack_row_pair(&b[t * n], &b[(t + 1) * n], n, &packed[t / 2 * ldb]);
    std::vector<float> c(static_cast<size_t>(m * ldc), -7.0f);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = c0[i * n + j];
    ops().begin();
    ops().matmul(m, n, k, a.data(), k, packed.data(), ldb, c.data(), ldc, accumulate);
    ops().end();
    std::vector<float> out(static_cast<size_t>(m * n));
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) out[i * n + j] = c[i * ldc + j];
      for (int64_t j = n; j < ldc; ++j) EXPECT_EQ(c[i * ldc + j], -7.0f) << "wrote past column " << n;
    }
    return out;
  }
};

// With small integers every product and every partial sum is exact in fp32, so any summation
// order gives the exact result: the layouts, the pair packing and the tile edges are checked
// bit for bit against a double loop.
TEST_P(Bf16Product, ExactOnIntegersForEveryShape) {
  Rng rng(5);
  for (int64_t m : {16, 32, 48, 64, 128}) {
    for (int64_t n : {16, 32, 48, 128}) {
      for (int64_t k : {32, 64, 96, 128}) {
        for (bool accumulate : {false, true}) {
          std::vector<uint16_t> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n));
          std::vector<float> c0(static_cast<size_t>(m * n));
          for (auto& x : a) x = core::float_to_bf16(static_cast<float>(std::lround(rng.normal(0, 40))));
          for (auto& x : b) x = core::float_to_bf16(static_cast<float>(std::lround(rng.normal(0, 40))));
          for (auto& x : c0) x = static_cast<float>(std::lround(rng.normal(0, 1000)));
          const std::vector<float> c = product(m, n, k, a, b, c0, accumulate);
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double want = accumulate ? c0[i * n + j] : 0.0;
              for (int64_t t = 0; t < k; ++t)
                want += double{core::bf16_to_float(a[i * k + t])} * core::bf16_to_float(b[t * n + j]);
              ASSERT_EQ(c[i * n + j], static_cast<float>(want))
                  << "m " << m << " n " << n << " k " << k << " acc " << accumulate << " at " << i << "," << j;
            }
          }
        }
      }
    }
  }
}

// On random values the products are still exact; only the fp32 sums round, so each element is
// within k rounding steps of the sum of magnitudes of the exact result.
TEST_P(Bf16Product, RandomValuesWithinSummationBound) {
  Rng rng(6);
  const int64_t m = 64, n = 128, k = 128;
  std::vector<uint16_t> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n));
  for (auto& x : a) x = core::float_to_bf16(static_cast<float>(rng.normal(0, 3)));
  for (auto& x : b) x = core::float_to_bf16(static_cast<float>(rng.normal(0, 0.5)));
  const std::vector<float> c = product(m, n, k, a, b, std::vector<float>(static_cast<size_t>(m * n)), false);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double want = 0, magnitude = 0;
      for (int64_t t = 0; t < k; ++t) {
        const double term = double{core::bf16_to_float(a[i * k + t])} * core::bf16_to_float(b[t * n + j]);
        want += term;
        magnitude += std::fabs(term);
      }
      ASSERT_LE(std::fabs(c[i * n + j] - want), k * std::ldexp(magnitude, -24)) << i << "," << j;
    }
  }
}

TEST_P(Bf16Product, PackedProbabilitiesRoundAndTranspose) {
  Rng rng(7);
  const int64_t lds = 48, cols = 48, rows_pad = 64, ldp = 40;
  for (int64_t rows : {64, 50, 33, 1}) {
    std::vector<float> s(static_cast<size_t>(rows_pad * lds));
    for (auto& x : s) x = static_cast<float>(rng.uniform(0, 1));
    s[0] = 1.00390625f;  // a tie: rounds to even (1.0)
    s[lds + 1] = 1.01171875f;  // a tie: rounds up
    s[2] = std::numeric_limits<float>::quiet_NaN();
    s[3] = 1e-40f;  // subnormal, kept
    std::vector<uint32_t> p(static_cast<size_t>(cols * ldp), 0xdeadu);
    ops().pack_probabilities(s.data(), lds, rows, rows_pad, cols, p.data(), ldp);
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t t = 0; t < rows_pad / 2; ++t) {
        const uint32_t pair = p[c * ldp + t];
        for (int half = 0; half < 2; ++half) {
          const int64_t r = 2 * t + half;
          const uint16_t got = static_cast<uint16_t>(pair >> (16 * half));
          if (r >= rows) {
            EXPECT_EQ(got, 0u) << "row " << r << " col " << c;
          } else if (std::isnan(s[r * lds + c])) {
            EXPECT_TRUE(std::isnan(core::bf16_to_float(got)));
          } else {
            EXPECT_EQ(got, core::float_to_bf16(s[r * lds + c])) << "row " << r << " col " << c;
          }
        }
      }
      for (int64_t t = rows_pad / 2; t < ldp; ++t) EXPECT_EQ(p[c * ldp + t], 0xdeadu);
    }
  }
}

TEST_P(Bf16Product, RowPairsPackEveryLengthAndNullRows) {
  for (int64_t n : {1, 15, 16, 17, 40, 128}) {
    std::vector<uint16_t> even(static_cast<size_t>(n)), odd(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
      even[j] = static_cast<uint16_t>(0x1000 + j);
      odd[j] = static_cast<uint16_t>(0x8000 + j);
    }
    std::vector<uint32_t> dst(static_cast<size_t>(n + 16), 0xdeadu);
    ops().pack_row_pair(even.data(), odd.data(), n, dst.data());
    for (int64_t j = 0; j < n; ++j) EXPECT_EQ(dst[j], (uint32_t{odd[j]} << 16) | even[j]);
    for (int64_t j = n; j < n + 16; ++j) EXPECT_EQ(dst[j], 0xdeadu) << "wrote past " << n;
    ops().pack_row_pair(nullptr, odd.data(), n, dst.data());
    for (int64_t j = 0; j < n; ++j) EXPECT_EQ(dst[j], uint32_t{odd[j]} << 16);
    ops().pack_row_pair(even.data(), nullptr, n, dst.data());
    for (int64_t j = 0; j < n; ++j) EXPECT_EQ(dst[j], uint32_t{even[j]});
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, Bf16Product, ::testing::ValuesIn(bf16_isas()), isa_label);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(Bf16Product);

// ---- thread pool --------------------------------------------------------------------------------

TEST(ThreadPool, EveryIndexRunsOnceOnAValidWorker) {
  for (int threads : {1, 2, 3, 7}) {
    for (int64_t count : {0, 1, 5, 1000}) {
      std::vector<std::atomic<int>> runs(static_cast<size_t>(count));
      std::atomic<int> bad_worker{0};
      const int expected_workers = cpu::workers_for(count, threads);
      EXPECT_EQ(expected_workers, std::min<int64_t>(count, threads));
      const int used = cpu::parallel_for(count, threads, [&](int64_t index, int worker) {
        runs[static_cast<size_t>(index)].fetch_add(1);
        if (worker < 0 || worker >= expected_workers) bad_worker.fetch_add(1);
      });
      EXPECT_EQ(used, expected_workers);
      EXPECT_EQ(bad_worker.load(), 0);
      for (auto& r : runs) ASSERT_EQ(r.load(), 1) << "threads=" << threads << " count=" << count;
    }
  }
}

TEST(ThreadPool, ExceptionsReachTheCallerAndThePoolStaysUsable) {
  EXPECT_THROW(cpu::parallel_for(100, 3,
                                 [](int64_t index, int) {
                                   if (index == 37) throw std::runtime_error("item 37");
                                 }),
               std::runtime_error);
  std::atomic<int64_t> sum{0};
  cpu::parallel_for(100, 3, [&](int64_t index, int) { sum.fetch_add(index); });
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ThreadPool, NestedJobsRunInline) {
  std::atomic<int64_t> inner{0};
  cpu::parallel_for(8, 4, [&](int64_t, int) {
    const int used = cpu::parallel_for(10, 4, [&](int64_t, int worker) {
      EXPECT_EQ(worker, 0);
      inner.fetch_add(1);
    });
    EXPECT_EQ(used, 1);
  });
  EXPECT_EQ(inner.load(), 80);
}

// ---- the forward under each instruction set ------------------------------------------------------

class ForwardIsa : public ::testing::TestWithParam<Isa> {};

TEST_P(ForwardIsa, FeaturesMatchReference) {
  ScopedIsa isa(GetParam());
  std::vector<AttnConfig> configs;
  {  // causal across several query tiles, bottom-right aligned, GQA 4
    AttnConfig c = shaped_config(DType::kFloat32, 64, 64, 8, 2, 150, 170);
    c.causal = true;
    configs.push_back(c);
  }
  {  // window + sinks + per-batch ALiBi + softcap, fp16, Dqk != Dv
    AttnConfig c = shaped_config(DType::kFloat16, 72, 40, 4, 4, 67, 90);
    c.batch = 2;
    c.window_left = 20;
    c.window_right = 5;
    c.sinks = true;
    c.alibi = Alibi::kPerBatch;
    c.softcap = 30.0f;
    configs.push_back(c);
  }
  {  // varlen with empty sequences, bf16, MQA
    AttnConfig c = shaped_config(DType::kBFloat16, 111, 111, 6, 1, 0, 0);
    c.layout = Layout::kVarlen;
    c.batch = 4;
    c.seqlens_q = {31, 0, 140, 5};
    c.seqlens_k = {40, 7, 140, 0};
    c.causal = true;
    configs.push_back(c);
  }
  {  // paged, odd block size, padded strides
    AttnConfig c = shaped_config(DType::kFloat32, 40, 40, 4, 2, 9, 0);
    c.layout = Layout::kPaged;
    c.batch = 2;
    c.block_size = 7;
    c.seqlens_k = {100, 33};
    c.padded_strides = true;
    c.alibi = Alibi::kPerHead;
    configs.push_back(c);
  }
  for (const AttnConfig& c : configs) {
    AttnCase a(c);
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe() << " isa=" << cpu::isa_name(GetParam());
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, ForwardIsa, ::testing::ValuesIn(available_isas()), isa_label);

// The forward's bf16 product against the widened fp32 kernels of the same CPU: both are within
// the SPEC rule (the grid checks that); here they must also agree closely with each other.
TEST_P(Bf16Product, ForwardAgreesWithTheFp32Kernels) {
  AttnConfig c = shaped_config(DType::kBFloat16, 128, 128, 4, 2, 300, 333);
  c.causal = true;
  AttnCase a(c);
  EXPECT_EQ(check_forward(a, cpu_context(2)), "");
  const std::vector<double> with_bf16 = a.out.values();
  {
    ScopedIsa fp32_only(Isa::kAvx512);
    AttnCase b(c);
    EXPECT_EQ(check_forward(b, cpu_context(2)), "");
    const std::vector<double> with_fp32 = b.out.values();
    ASSERT_EQ(with_bf16.size(), with_fp32.size());
    double worst = 0;
    for (size_t i = 0; i < with_fp32.size(); ++i) worst = std::max(worst, std::fabs(with_bf16[i] - with_fp32[i]));
    EXPECT_LT(worst, 0.02);  // outputs are O(1) bf16 values: a few bf16 steps at most
  }
}

// ---- split-KV -----------------------------------------------------------------------------------

TEST(CpuForward, ForcedSplitsMatchReference) {
  for (int splits : {1, 2, 5, 64}) {
    AttnConfig c = shaped_config(DType::kFloat32, 64, 48, 8, 2, 3, 700);
    c.num_splits = splits;
    c.sinks = true;
    c.causal = true;
    AttnCase a(c);
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
  }
}

TEST(CpuForward, DecodeSplitsByHeuristicWithManyThreads) {
  // One block (8 query heads on one kv head, one row) and 8 threads: the heuristic splits it.
  AttnConfig c = shaped_config(DType::kBFloat16, 128, 128, 8, 1, 1, 3000);
  c.sinks = true;
  c.window_left = 2000;
  AttnCase a(c);
  EXPECT_EQ(check_forward(a, cpu_context(8)), "") << c.describe();
}

// Logits in the thousands with near ties: the outputs are as sensitive to score rounding as they
// get, so fp32 scores must carry exactly plain fp32's rounding (the unfused product).
TEST(CpuForward, LargeLogitsWithNearTies) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    for (uint64_t seed = 1; seed <= 12; ++seed) {
      AttnConfig c = shaped_config(dtype, 64, 64, 2, 1, 70, 130);
      c.q_stddev = 1500.0;
      c.causal = seed % 2 == 0;
      c.seed = seed;
      AttnCase a(c);
      EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
    }
  }
}

// A sink of -inf contributes exp(-inf) = 0: rows with keys are unaffected, rows without keys
// give out = 0 and lse = -inf, never NaN; also through the split-KV combine.
TEST(CpuForward, SinkOfMinusInfinityAddsNothing) {
  for (int splits : {1, 3}) {
    AttnConfig c = shaped_config(DType::kFloat32, 32, 32, 4, 2, 20, 40);
    c.sinks = true;
    c.window_left = 0;
    c.window_right = 0;
    c.seqlen_q = 50;  // the first 10 rows see no key (diag = -10)
    c.num_splits = splits;
    AttnCase a(c);
    a.sinks.set(1, -std::numeric_limits<double>::infinity());
    a.sinks.set(2, -std::numeric_limits<double>::infinity());
    EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
    EXPECT_EQ(a.out.count_nan(), 0);
    EXPECT_EQ(a.lse.count_nan(), 0);
  }
}

// A non-finite value row reaches only the query rows allowed to see it, even inside a tile
// that mixes allowed and masked pairs.
TEST(CpuForward, NonFiniteValueReachesOnlyRowsThatSeeIt) {
  AttnConfig c = shaped_config(DType::kFloat32, 32, 32, 2, 1, 80, 80);
  c.causal = true;
  AttnCase a(c);
  for (int64_t d = 0; d < 32; ++d) a.v.set((0 * 80 + 40) * 32 + d, std::numeric_limits<double>::quiet_NaN());
  a.v.set((0 * 80 + 50) * 32 + 3, std::numeric_limits<double>::infinity());
  EXPECT_EQ(check_forward(a, cpu_context(2)), "") << c.describe();
  for (int64_t i = 0; i < 40; ++i)  // rows before key 40 never see it
    for (int64_t d = 0; d < 32; ++d) ASSERT_FALSE(std::isnan(a.out.get((i * 2) * 32 + d))) << i;
}

// Paged keys whose block_table entry is out of range read nothing: checked here below the API
// (the API validates host index tensors and would refuse them).
TEST(CpuForward, UnreadablePagedBlocksAreMaskedLikeTheReference) {
  AttnConfig c = shaped_config(DType::kFloat16, 64, 64, 4, 2, 6, 0);
  c.layout = Layout::kPaged;
  c.batch = 2;
  c.block_size = 16;
  c.seqlens_k = {90, 64};
  AttnCase a(c);
  AttnParams params = a.params();
  core::Problem p = problem_for(params, false);
  std::vector<int32_t> table = a.block_table.int_values();
  table[1] = -5;        // sequence 0, keys 16..31
  table[table.size() - 3] = 1 << 20;  // sequence 1
  const HostTensor bad_table = HostTensor::int32(table, a.block_table.shape());
  p.block_table = static_cast<const int32_t*>(bad_table.data());

  a.out.poison();
  a.lse.poison();
  cpu::forward(p, 2);
  const auto ref64 = reference::forward(p, reference::Precision::kFloat64);
  const auto lowp = reference::forward(p, reference::Precision::kInputDType);
  EXPECT_EQ(reference::check_close(a.out.values(), ref64.out, lowp.out, 2.0), "");
  EXPECT_EQ(reference::check_close(dense_lse(a), ref64.lse, lowp.lse, 2.0), "");
  EXPECT_EQ(check_all_guards(a), "");
}

TEST(CpuForward, ScratchGrowsWithTokensNotWithTheScoreMatrix) {
  AttnConfig c = shaped_config(DType::kBFloat16, 64, 64, 1, 1, 4096, 4096);
  c.causal = true;
  c.with_lse = false;
  AttnCase a(c);
  attention_forward(a.params(), cpu_context(2));
  const size_t scores_bytes = size_t{4096} * 4096 * 4;
  EXPECT_GT(cpu::last_scratch_bytes(), 0u);
  EXPECT_LT(cpu::last_scratch_bytes(), scores_bytes / 64);
}

// ---- KV cache and paged writes ------------------------------------------------------------------

AttnConfig kv_config(Layout layout, DType dtype, int64_t rotary_dim, bool interleaved) {
  AttnConfig c = shaped_config(dtype, 64, 64, 8, 2, 3, 0);
  c.layout = layout;
  c.batch = 3;
  c.cache_seqlens = {5, 0, 37};
  c.cache_capacity = 64;
  c.seqlen_new = 3;
  c.rotary_dim = rotary_dim;
  c.rotary_interleaved = interleaved;
  c.block_size = 16;
  return c;
}

TEST(CpuKvCache, AppendWithRotaryThenAttend) {
  for (Layout layout : {Layout::kDenseCache, Layout::kPagedCache}) {
    for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
      for (auto [rotary_dim, interleaved] : std::vector<std::pair<int64_t, bool>>{{0, true}, {64, true}, {32, false}, {16, true}}) {
        for (bool causal : {false, true}) {
          AttnConfig c = kv_config(layout, dtype, rotary_dim, interleaved);
          c.causal = causal;
          AttnCase a(c);
          EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
        }
      }
    }
  }
}

TEST(CpuKvCache, BatchIndexLeftpadWindowAndSplits) {
  AttnConfig c = kv_config(Layout::kDenseCache, DType::kFloat16, 32, false);
  c.cache_batch_idx = true;
  c.extra_cache_rows = 2;
  c.cache_leftpad = {2, 0, 30};
  c.window_left = 10;
  c.window_right = 0;
  c.sinks = true;
  c.num_splits = 3;
  AttnCase a(c);
  EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
}

TEST(CpuKvCache, DecodeWithoutAppend) {
  AttnConfig c = kv_config(Layout::kPagedCache, DType::kBFloat16, 0, true);
  c.seqlen_q = 1;
  c.seqlen_new = 0;
  c.cache_seqlens = {60, 1, 17};
  c.block_size = 5;
  AttnCase a(c);
  EXPECT_EQ(check_kvcache(a, cpu_context(2)), "") << c.describe();
}

TEST(CpuKvWrite, BatchedAndVarlenIntoPagedCaches) {
  for (bool varlen : {false, true}) {
    for (int64_t block_size : {1, 5, 16}) {
      KvWriteConfig c;
      c.varlen = varlen;
      c.batch = 3;
      c.block_size = block_size;
      c.max_blocks_per_seq = 40 / block_size + 2;
      c.cache_seqlens = {0, 7, 21};
      c.new_tokens = {4, 0, 9};
      c.seqlen_new = 4;
      c.head_dim_v = 24;
      c.padded_strides = block_size == 5;
      KvWriteCase k(c);
      EXPECT_EQ(check_kv_write(k, cpu_context(2)), "") << c.describe();
    }
  }
}

}  // namespace
}  // namespace flashsdpa::test
