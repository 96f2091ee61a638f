// The one definition of masks and score modifiers (SPEC §2), used by the float64 reference, the
// CPU backend and the CUDA kernels alike — the role CUTLASS's fmha_fusion.hpp plays for its
// reference. Everything here is inline and usable from host and device code.
//
// Coordinates: query row i in [0, sq) of one sequence; key j is a logical key position in
// [k_begin, k_end) (k_begin > 0 only with cache_leftpad). Bottom-right alignment: query row i
// lines up with key  i + diag,  diag = k_end - sq.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FLASHSDPA_HD __host__ __device__ __forceinline__
#else
#define FLASHSDPA_HD inline
#endif

namespace flashsdpa::core {

FLASHSDPA_HD int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
FLASHSDPA_HD int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
FLASHSDPA_HD int64_t clamp_i64(int64_t x, int64_t lo, int64_t hi) { return min_i64(max_i64(x, lo), hi); }

// Which keys query rows may see. window_left / window_right < 0 mean unbounded on that side;
// causal has already been folded into window_right = 0.
struct Mask {
  int64_t k_begin = 0;
  int64_t k_end = 0;
  int64_t diag = 0;  // key aligned with query row 0
  int64_t window_left = -1;
  int64_t window_right = -1;

  FLASHSDPA_HD static Mask make(int64_t sq, int64_t k_begin, int64_t k_end, int64_t window_left,
                                int64_t window_right) {
    Mask m;
    m.k_begin = k_begin;
    m.k_end = k_end;
    m.diag = k_end - sq;
    m.window_left = window_left;
    m.window_right = window_right;
    return m;
  }

  // First key row i may see.
  FLASHSDPA_HD int64_t row_begin(int64_t i) const {
    return window_left >= 0 ? max_i64(k_begin, i + diag - window_left) : k_begin;
  }
  // One past the last key row i may see. row_end(i) <= row_begin(i) means a fully masked row.
  FLASHSDPA_HD int64_t row_end(int64_t i) const {
    return window_right >= 0 ? min_i64(k_end, i + diag + window_right + 1) : k_end;
  }
  FLASHSDPA_HD bool allowed(int64_t i, int64_t j) const { return j >= row_begin(i) && j < row_end(i); }

  // Both bounds are non-decreasing in i, so a query tile [i0, i1) sees keys
  // [row_begin(i0), row_end(i1 - 1)) at most: key tiles outside are skipped whole.
  FLASHSDPA_HD int64_t tile_begin(int64_t i0, int64_t /*i1*/) const { return row_begin(i0); }
  FLASHSDPA_HD int64_t tile_end(int64_t /*i0*/, int64_t i1) const { return row_end(i1 - 1); }

  // The transpose, for passes that walk key tiles (the backward): the query rows that may see key
  // j in [k_begin, k_end) are [query_begin(j), query_end(j)). Both are non-decreasing in j, so a
  // key tile [j0, j1) is seen by rows [query_begin(j0), query_end(j1 - 1)) at most.
  FLASHSDPA_HD int64_t query_begin(int64_t j) const {
    return window_right >= 0 ? clamp_i64(j - diag - window_right, 0, k_end - diag) : 0;
  }
  FLASHSDPA_HD int64_t query_end(int64_t j) const {
    return window_left >= 0 ? clamp_i64(j - diag + window_left + 1, 0, k_end - diag) : k_end - diag;
  }

  // True when every (i, j) of the tile [i0, i1) x [j0, j1) is allowed: interior tiles skip masking.
  FLASHSDPA_HD bool tile_unmasked(int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    return j0 >= row_begin(i1 - 1) && j1 <= row_end(i0);
  }
};

// Score modifiers, applied in this order to s = scale * <q_i, k_j>.
struct ScoreMod {
  float softcap = 0.0f;     // > 0: s = softcap * tanh(s / softcap)
  float alibi_slope = 0.0f; // s -= slope * |i + diag - j|
  bool has_alibi = false;

  FLASHSDPA_HD float apply(float s, int64_t i, int64_t j, int64_t diag) const {
    if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
    if (has_alibi) {
      const int64_t d = i + diag - j;
      s -= alibi_slope * static_cast<float>(d < 0 ? -d : d);
    }
    return s;
  }
  // apply(), also giving d apply(s) / d s for the backward: ALiBi only shifts the score, softcap
  // scales its gradient by 1 - tanh^2(s / softcap).
  FLASHSDPA_HD float apply(float s, int64_t i, int64_t j, int64_t diag, float* grad) const {
    *grad = 1.0f;
    if (softcap > 0.0f) {
      const float t = tanhf(s / softcap);
      s = softcap * t;
      *grad = 1.0f - t * t;
    }
    if (has_alibi) {
      const int64_t d = i + diag - j;
      s -= alibi_slope * static_cast<float>(d < 0 ? -d : d);
    }
    return s;
  }
  // Same in double, for the reference.
  FLASHSDPA_HD double apply(double s, int64_t i, int64_t j, int64_t diag) const {
    if (softcap > 0.0f) s = static_cast<double>(softcap) * tanh(s / static_cast<double>(softcap));
    if (has_alibi) {
      const int64_t d = i + diag - j;
      s -= static_cast<double>(alibi_slope) * static_cast<double>(d < 0 ? -d : d);
    }
    return s;
  }
  FLASHSDPA_HD double apply(double s, int64_t i, int64_t j, int64_t diag, double* grad) const {
    *grad = 1.0;
    if (softcap > 0.0f) {
      const double t = tanh(s / static_cast<double>(softcap));
      s = static_cast<double>(softcap) * t;
      *grad = 1.0 - t * t;
    }
    if (has_alibi) {
      const int64_t d = i + diag - j;
      s -= static_cast<double>(alibi_slope) * static_cast<double>(d < 0 ? -d : d);
    }
    return s;
  }
};

// Online softmax state of one query row. Scores must already carry their modifiers. Masked keys
// never reach update(); a row that sees no key and no sink finishes as out = 0, lse = -inf, and
// no step computes (-inf) - (-inf).
template <typename T>
struct SoftmaxRow {
  T max = -INFINITY;  // running max of the scores seen
  T sum = 0;          // sum of exp(s - max)

  // Folds a new block maximum in; returns the factor the accumulator must be multiplied by.
  FLASHSDPA_HD T rescale_to(T block_max) {
    if (!(block_max > max)) return T(1);
    const T factor = (max == -INFINITY) ? T(0) : exp_t(max - block_max);
    sum *= factor;
    max = block_max;
    return factor;
  }
  // The sink is a logit with no value vector: it joins the normaliser only. A sink of -inf adds
  // exp(-inf) = 0 (and must not compute (-inf) - (-inf) on a row that has seen nothing).
  FLASHSDPA_HD T add_sink(T sink) {
    if (sink == -INFINITY) return T(1);
    const T factor = rescale_to(sink);
    sum += exp_t(sink - max);
    return factor;
  }
  // 1 / Z, or 0 for a row with nothing (so out = 0).
  FLASHSDPA_HD T inv_sum() const { return sum > T(0) ? T(1) / sum : T(0); }
  // A NaN score leaves sum NaN; the lse stays NaN then, so NaN remains visible in its row.
  FLASHSDPA_HD T lse() const { return sum > T(0) ? max + log_t(sum) : (sum == T(0) ? T(-INFINITY) : sum); }

  FLASHSDPA_HD static float exp_t(float x) { return expf(x); }
  FLASHSDPA_HD static double exp_t(double x) { return exp(x); }
  FLASHSDPA_HD static float log_t(float x) { return logf(x); }
  FLASHSDPA_HD static double log_t(double x) { return log(x); }
};

}  // namespace flashsdpa::core
