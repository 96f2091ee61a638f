// The tile kernels in portable C++: fixed-width lane loops the compiler may vectorize for the
// baseline instruction set, std::exp / std::tanh per lane. Runs on any architecture.
#include <cmath>
#include <cstdint>

#include "core/dtype.h"
#include "cpu/tile_math.h"

#define FLASHSDPA_ISA

namespace flashsdpa::cpu {
namespace generic {

struct V {
  static constexpr int kWidth = 8;
  struct Reg {
    float lane[kWidth];
  };
  using Tail = int64_t;  // active lane count

  static Tail tail(int64_t n) { return n; }
  static Reg zero() { return set1(0.0f); }
  static Reg set1(float x) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) r.lane[i] = x;
    return r;
  }
  static Reg load(const float* p) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) r.lane[i] = p[i];
    return r;
  }
  static Reg load(const float* p, Tail n) {
    Reg r = zero();
    for (int i = 0; i < n; ++i) r.lane[i] = p[i];
    return r;
  }
  static void store(float* p, Reg x) {
    for (int i = 0; i < kWidth; ++i) p[i] = x.lane[i];
  }
  static void store(float* p, Reg x, Tail n) {
    for (int i = 0; i < n; ++i) p[i] = x.lane[i];
  }
  template <typename F>
  static Reg map(Reg a, Reg b, F f) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) r.lane[i] = f(a.lane[i], b.lane[i]);
    return r;
  }
  static Reg fma(Reg a, Reg b, Reg c) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) r.lane[i] = a.lane[i] * b.lane[i] + c.lane[i];
    return r;
  }
  static Reg add_rounded_product(Reg acc, Reg a, Reg b) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) {
      volatile float product = a.lane[i] * b.lane[i];  // volatile: never contracted into an fma
      r.lane[i] = acc.lane[i] + product;
    }
    return r;
  }
  static Reg add(Reg a, Reg b) { return map(a, b, [](float x, float y) { return x + y; }); }
  static Reg sub(Reg a, Reg b) { return map(a, b, [](float x, float y) { return x - y; }); }
  static Reg mul(Reg a, Reg b) { return map(a, b, [](float x, float y) { return x * y; }); }
  static Reg div(Reg a, Reg b) { return map(a, b, [](float x, float y) { return x / y; }); }
  static Reg max(Reg a, Reg b) { return map(a, b, [](float x, float y) { return x > y ? x : y; }); }
  static Reg min(Reg a, Reg b) { return map(a, b, [](float x, float y) { return x < y ? x : y; }); }
  static Reg abs(Reg x) { return map(x, x, [](float v, float) { return std::fabs(v); }); }
  static Reg select_lt(Reg a, Reg b, Reg x, Reg y) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) r.lane[i] = a.lane[i] < b.lane[i] ? x.lane[i] : y.lane[i];
    return r;
  }
  static Reg with_sign_of(Reg magnitude, Reg x) {
    return map(magnitude, x, [](float m, float s) { return std::copysign(m, s); });
  }
  static Reg replace_neg_inf(Reg x, float value) {
    return map(x, x, [value](float v, float) { return v == -INFINITY ? value : v; });
  }
  static Reg exp(Reg x) { return map(x, x, [](float v, float) { return std::exp(v); }); }

  static Reg load_f16(const uint16_t* p) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) r.lane[i] = core::fp16_to_float(p[i]);
    return r;
  }
  static void store_f16(uint16_t* p, Reg x) {
    for (int i = 0; i < kWidth; ++i) p[i] = core::float_to_fp16(x.lane[i]);
  }
  static Reg load_bf16(const uint16_t* p) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) r.lane[i] = core::bf16_to_float(p[i]);
    return r;
  }
  static void store_bf16(uint16_t* p, Reg x) {
    for (int i = 0; i < kWidth; ++i) p[i] = core::float_to_bf16(x.lane[i]);
  }
};

constexpr int kMaxRows = 4;
constexpr Isa kThisIsa = Isa::kGeneric;

#include "cpu/tile_kernels_impl.h"

}  // namespace generic

const TileOps* tile_ops_generic() { return &generic::kTileOps; }

}  // namespace flashsdpa::cpu
