// The tile kernels, written once against a vector-traits type `V` and compiled once per
// instruction set. Not a normal header: a tile_math_<isa>.cpp defines
//   FLASHSDPA_ISA        the function attribute that enables the instruction set (may be empty)
//   V                    the traits type (register type, width, loads, stores, arithmetic, exp)
// and includes this file inside its own namespace. Every function here carries FLASHSDPA_ISA so
// the compiler may use the instruction set in it and inline the traits into it.
//
// V's interface: kWidth, Reg, Tail, tail(n) for 1 <= n <= kWidth, zero(), set1(x), load(p),
// load(p, tail), store(p, r), store(p, r, tail), fma(a, b, c) = a * b + c, add, sub, mul, div,
// add_rounded_product(acc, a, b) = acc + round(a * b) (never contracted into an fma),
// max(a, b) / min(a, b) (return b when either is NaN, so NaN in b survives), abs,
// select_lt(a, b, x, y) = a < b ? x : y, with_sign_of(magnitude, x), replace_neg_inf(x, v), exp,
// load_f16 / store_f16 / load_bf16 / store_bf16 (full width).

// ---- elementwise math ---------------------------------------------------------------------------

// tanh to about 2 ulp: an odd Taylor polynomial near 0 (where 1 - e^-2|x| would cancel), else
// (1 - e) / (1 + e) with e = exp(-2|x|).
FLASHSDPA_ISA static inline V::Reg vec_tanh(V::Reg x) {
  const V::Reg ax = V::abs(x);
  const V::Reg x2 = V::mul(x, x);
  // tanh x = x (1 - x^2/3 + 2x^4/15 - 17x^6/315 + 62x^8/2835 - 1382x^10/155925
  //             + 21844x^12/6081075 - 929569x^14/638512875)
  V::Reg poly = V::set1(-929569.0f / 638512875.0f);
  poly = V::fma(poly, x2, V::set1(21844.0f / 6081075.0f));
  poly = V::fma(poly, x2, V::set1(-1382.0f / 155925.0f));
  poly = V::fma(poly, x2, V::set1(62.0f / 2835.0f));
  poly = V::fma(poly, x2, V::set1(-17.0f / 315.0f));
  poly = V::fma(poly, x2, V::set1(2.0f / 15.0f));
  poly = V::fma(poly, x2, V::set1(-1.0f / 3.0f));
  const V::Reg small = V::fma(V::mul(poly, x2), x, x);

  const V::Reg e = V::exp(V::mul(ax, V::set1(-2.0f)));
  const V::Reg one = V::set1(1.0f);
  const V::Reg large = V::with_sign_of(V::div(V::sub(one, e), V::add(one, e)), x);
  return V::select_lt(ax, V::set1(0.4f), small, large);
}

// ---- the register-blocked product ---------------------------------------------------------------

// One kRows x (kVecs * kWidth) block of C over the full depth k. A is read transposed
// (A(i, t) = a[t * lda + i]) when kATransposed, else row-major (a[i * lda + t]). The last vector
// of each row is partial when kPartial (columns past the tail mask are neither read nor written).
// kFused: one fused multiply-add per term; else the product and the sum are rounded separately,
// in order t = 0, 1, ..., exactly like a plain fp32 dot product.
template <int kRows, int kVecs, bool kPartial, bool kATransposed, bool kFused>
FLASHSDPA_ISA static void micro_block(int64_t k, const float* a, int64_t lda, const float* b,
                                      int64_t ldb, float* c, int64_t ldc, bool accumulate,
                                      V::Tail tail) {
  V::Reg acc[kRows][kVecs];
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) acc[r][v] = V::zero();

  const float* a_rows[kATransposed ? 1 : kRows];
  if constexpr (!kATransposed) {
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) a_rows[r] = a + r * lda;
  }

  for (int64_t t = 0; t < k; ++t) {
    V::Reg bv[kVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) {
      bv[v] = (kPartial && v == kVecs - 1) ? V::load(b + v * V::kWidth, tail) : V::load(b + v * V::kWidth);
    }
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const V::Reg av = V::set1(kATransposed ? a[t * lda + r] : a_rows[r][t]);
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) {
        acc[r][v] = kFused ? V::fma(av, bv[v], acc[r][v]) : V::add_rounded_product(acc[r][v], av, bv[v]);
      }
    }
    b += ldb;
  }

#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) {
      float* out = c + r * ldc + v * V::kWidth;
      const bool partial = kPartial && v == kVecs - 1;
      if (accumulate) acc[r][v] = V::add(acc[r][v], partial ? V::load(out, tail) : V::load(out));
      if (partial) {
        V::store(out, acc[r][v], tail);
      } else {
        V::store(out, acc[r][v]);
      }
    }
  }
}

// Row-count dispatch for one column panel: full kMaxRows blocks, then one remainder block.
template <int kVecs, bool kPartial, bool kATransposed, bool kFused>
FLASHSDPA_ISA static void panel(int64_t m, int64_t k, const float* a, int64_t a_row_step,
                                int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                                bool accumulate, V::Tail tail) {
  constexpr int R = kMaxRows;
  int64_t i = 0;
  for (; i + R <= m; i += R) {
    micro_block<R, kVecs, kPartial, kATransposed, kFused>(k, a + i * a_row_step, lda, b, ldb, c + i * ldc, ldc,
                                                  accumulate, tail);
  }
  const int rest = static_cast<int>(m - i);
  if (rest == 0) return;
  const float* a_rest = a + i * a_row_step;
  float* c_rest = c + i * ldc;
  switch (rest) {
#define FLASHSDPA_REST_CASE(n)                                                                          \
  case n:                                                                                              \
    if constexpr (n < R) {                                                                             \
      micro_block<n, kVecs, kPartial, kATransposed, kFused>(k, a_rest, lda, b, ldb, c_rest, ldc, accumulate, tail); \
    }                                                                                                  \
    break;
    FLASHSDPA_REST_CASE(1)
    FLASHSDPA_REST_CASE(2)
    FLASHSDPA_REST_CASE(3)
    FLASHSDPA_REST_CASE(4)
    FLASHSDPA_REST_CASE(5)
    FLASHSDPA_REST_CASE(6)
    FLASHSDPA_REST_CASE(7)
    FLASHSDPA_REST_CASE(8)
    FLASHSDPA_REST_CASE(9)
    FLASHSDPA_REST_CASE(10)
    FLASHSDPA_REST_CASE(11)
    FLASHSDPA_REST_CASE(12)
    FLASHSDPA_REST_CASE(13)
    FLASHSDPA_REST_CASE(14)
#undef FLASHSDPA_REST_CASE
    default:
      break;
  }
}

template <bool kATransposed, bool kFused>
FLASHSDPA_ISA static void matmul_layout(int64_t m, int64_t n, int64_t k, const float* a,
                                        int64_t a_row_step, int64_t lda, const float* b, int64_t ldb,
                                        float* c, int64_t ldc, bool accumulate) {
  constexpr int W = V::kWidth;
  // Column panels of two vectors keep kMaxRows x 2 accumulators in registers; the B panel
  // (k x 2W) stays in L1 while every row block of A streams past it.
  for (int64_t j = 0; j < n; j += 2 * W) {
    const int64_t width = n - j < 2 * W ? n - j : 2 * W;
    const float* bj = b + j;
    float* cj = c + j;
    if (width == 2 * W) {
      panel<2, false, kATransposed, kFused>(m, k, a, a_row_step, lda, bj, ldb, cj, ldc, accumulate, V::tail(W));
    } else if (width > W) {
      panel<2, true, kATransposed, kFused>(m, k, a, a_row_step, lda, bj, ldb, cj, ldc, accumulate, V::tail(width - W));
    } else if (width == W) {
      panel<1, false, kATransposed, kFused>(m, k, a, a_row_step, lda, bj, ldb, cj, ldc, accumulate, V::tail(W));
    } else {
      panel<1, true, kATransposed, kFused>(m, k, a, a_row_step, lda, bj, ldb, cj, ldc, accumulate, V::tail(width));
    }
  }
}

template <bool kFused>
FLASHSDPA_ISA static void matmul_rounding(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row_stride,
                                          int64_t a_col_stride, const float* b, int64_t ldb, float* c, int64_t ldc,
                                          bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate) {
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = 0.0f;
    }
    return;
  }
  if (a_row_stride == 1) {
    matmul_layout<true, kFused>(m, n, k, a, 1, a_col_stride, b, ldb, c, ldc, accumulate);
  } else if (a_col_stride == 1) {
    matmul_layout<false, kFused>(m, n, k, a, a_row_stride, a_row_stride, b, ldb, c, ldc, accumulate);
  } else {
    // Neither stride is unit: a plain loop (no caller in the library takes this path).
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        float sum = accumulate ? c[i * ldc + j] : 0.0f;
        for (int64_t t = 0; t < k; ++t) {
          const float x = a[i * a_row_stride + t * a_col_stride], y = b[t * ldb + j];
          if constexpr (kFused) {
            sum = std::fma(x, y, sum);
          } else {
            volatile float product = x * y;  // volatile: never contracted into an fma
            sum += product;
          }
        }
        c[i * ldc + j] = sum;
      }
    }
  }
}

FLASHSDPA_ISA static void matmul(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row_stride,
                                 int64_t a_col_stride, const float* b, int64_t ldb, float* c, int64_t ldc,
                                 bool accumulate) {
  matmul_rounding<true>(m, n, k, a, a_row_stride, a_col_stride, b, ldb, c, ldc, accumulate);
}
FLASHSDPA_ISA static void matmul_unfused(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row_stride,
                                         int64_t a_col_stride, const float* b, int64_t ldb, float* c, int64_t ldc,
                                         bool accumulate) {
  matmul_rounding<false>(m, n, k, a, a_row_stride, a_col_stride, b, ldb, c, ldc, accumulate);
}

// ---- dtype conversion ---------------------------------------------------------------------------

FLASHSDPA_ISA static void load_row(const void* src, DType dtype, float* dst, int64_t n) {
  constexpr int W = V::kWidth;
  int64_t i = 0;
  switch (dtype) {
    case DType::kFloat32: {
      const float* s = static_cast<const float*>(src);
      for (; i + W <= n; i += W) V::store(dst + i, V::load(s + i));
      if (i < n) V::store(dst + i, V::load(s + i, V::tail(n - i)), V::tail(n - i));
      return;
    }
    case DType::kFloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (; i + W <= n; i += W) V::store(dst + i, V::load_f16(s + i));
      for (; i < n; ++i) dst[i] = core::fp16_to_float(s[i]);
      return;
    }
    case DType::kBFloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (; i + W <= n; i += W) V::store(dst + i, V::load_bf16(s + i));
      for (; i < n; ++i) dst[i] = core::bf16_to_float(s[i]);
      return;
    }
    default:
      return;
  }
}

FLASHSDPA_ISA static void store_row(const float* src, float scale, void* dst, DType dtype, int64_t n) {
  constexpr int W = V::kWidth;
  const V::Reg sv = V::set1(scale);
  int64_t i = 0;
  switch (dtype) {
    case DType::kFloat32: {
      float* d = static_cast<float*>(dst);
      for (; i + W <= n; i += W) V::store(d + i, V::mul(V::load(src + i), sv));
      if (i < n) V::store(d + i, V::mul(V::load(src + i, V::tail(n - i)), sv), V::tail(n - i));
      return;
    }
    case DType::kFloat16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (; i + W <= n; i += W) V::store_f16(d + i, V::mul(V::load(src + i), sv));
      for (; i < n; ++i) d[i] = core::float_to_fp16(src[i] * scale);
      return;
    }
    case DType::kBFloat16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (; i + W <= n; i += W) V::store_bf16(d + i, V::mul(V::load(src + i), sv));
      for (; i < n; ++i) d[i] = core::float_to_bf16(src[i] * scale);
      return;
    }
    default:
      return;
  }
}

// ---- softmax pieces -----------------------------------------------------------------------------

FLASHSDPA_ISA static void score_mods(float* s, int64_t ld, int64_t rows, int64_t cols,
                                     const ScoreModTile& mods) {
  constexpr int W = V::kWidth;
  const V::Reg scale = V::set1(mods.scale);
  const bool softcap = mods.softcap > 0.0f;
  const V::Reg cap = V::set1(mods.softcap);
  const bool alibi = mods.col_slope != nullptr;
  for (int64_t c = 0; c < cols; c += W) {
    const bool partial = cols - c < W;
    const V::Tail tail = V::tail(partial ? cols - c : W);
    V::Reg slope = V::zero(), aligned = V::zero();
    if (alibi) {
      slope = V::load(mods.col_slope + c, tail);
      aligned = V::load(mods.col_aligned_key + c, tail);
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* p = s + r * ld + c;
      V::Reg x = V::mul(partial ? V::load(p, tail) : V::load(p), scale);
      if (softcap) x = V::mul(cap, vec_tanh(V::div(x, cap)));
      if (alibi) {
        const V::Reg distance = V::abs(V::sub(aligned, V::set1(static_cast<float>(r))));
        x = V::sub(x, V::mul(slope, distance));
      }
      if (partial) {
        V::store(p, x, tail);
      } else {
        V::store(p, x);
      }
    }
  }
}

FLASHSDPA_ISA static void online_softmax(float* s, int64_t ld, int64_t rows, int64_t cols, float* col_max,
                                         float* col_sum, float* col_factor) {
  constexpr int W = V::kWidth;
  for (int64_t c = 0; c < cols; c += W) {
    const bool partial = cols - c < W;
    const V::Tail tail = V::tail(partial ? cols - c : W);
    const V::Reg old_max = V::load(col_max + c, tail);
    V::Reg new_max = old_max;
    for (int64_t r = 0; r < rows; ++r) {
      const float* p = s + r * ld + c;
      new_max = V::max(new_max, partial ? V::load(p, tail) : V::load(p));
    }
    // Subtracting 0 instead of -inf keeps a column that has seen nothing at p = 0, factor 0.
    const V::Reg shift = V::replace_neg_inf(new_max, 0.0f);
    const V::Reg factor = V::exp(V::sub(old_max, shift));
    V::Reg sum = V::zero();
    for (int64_t r = 0; r < rows; ++r) {
      float* p = s + r * ld + c;
      const V::Reg e = V::exp(V::sub(partial ? V::load(p, tail) : V::load(p), shift));
      sum = V::add(sum, e);
      if (partial) {
        V::store(p, e, tail);
      } else {
        V::store(p, e);
      }
    }
    V::store(col_sum + c, V::fma(V::load(col_sum + c, tail), factor, sum), tail);
    V::store(col_max + c, new_max, tail);
    V::store(col_factor + c, factor, tail);
  }
}

FLASHSDPA_ISA static void exp_shifted(float* s, int64_t ld, int64_t rows, int64_t cols, const float* col_shift) {
  constexpr int W = V::kWidth;
  for (int64_t c = 0; c < cols; c += W) {
    const bool partial = cols - c < W;
    const V::Tail tail = V::tail(partial ? cols - c : W);
    const V::Reg shift = V::replace_neg_inf(V::load(col_shift + c, tail), 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      float* p = s + r * ld + c;
      const V::Reg e = V::exp(V::sub(partial ? V::load(p, tail) : V::load(p), shift));
      if (partial) {
        V::store(p, e, tail);
      } else {
        V::store(p, e);
      }
    }
  }
}

FLASHSDPA_ISA static void scale_rows(float* x, int64_t ld, int64_t rows, int64_t cols, const float* row_factor) {
  constexpr int W = V::kWidth;
  for (int64_t r = 0; r < rows; ++r) {
    if (row_factor[r] == 1.0f) continue;
    const V::Reg f = V::set1(row_factor[r]);
    float* p = x + r * ld;
    int64_t c = 0;
    for (; c + W <= cols; c += W) V::store(p + c, V::mul(V::load(p + c), f));
    if (c < cols) V::store(p + c, V::mul(V::load(p + c, V::tail(cols - c)), f), V::tail(cols - c));
  }
}

// The operation table of this instruction set.
static const TileOps kTileOps = {
    kThisIsa, &matmul, &matmul_unfused, &load_row, &store_row, &score_mods, &online_softmax, &exp_shifted, &scale_rows, nullptr,
};
