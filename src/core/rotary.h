// Rotary position embedding (SPEC §3), the one definition shared by the reference, the CPU
// backend and the CUDA kernels. Tables cos/sin are [S_ro, rotary_dim / 2]; dims at or past
// rotary_dim are left unchanged.
//   interleaved (GPT-J):  pairs (2t, 2t+1)
//   NeoX (non-interleaved): pairs (t, t + rotary_dim / 2)
#pragma once

#include <cstdint>

#include "core/mask.h"

namespace flashsdpa::core {

// Index of the partner pair of rotary frequency t.
FLASHSDPA_HD void rotary_pair(int64_t t, int64_t rotary_dim, bool interleaved, int64_t* first, int64_t* second) {
  if (interleaved) {
    *first = 2 * t;
    *second = 2 * t + 1;
  } else {
    *first = t;
    *second = t + rotary_dim / 2;
  }
}

// Rotates x (length >= rotary_dim, fp32 or fp64) in place with one table row.
template <typename T>
FLASHSDPA_HD void rotary_apply(T* x, const T* cos_row, const T* sin_row, int64_t rotary_dim, bool interleaved) {
  for (int64_t t = 0; t < rotary_dim / 2; ++t) {
    int64_t a, b;
    rotary_pair(t, rotary_dim, interleaved, &a, &b);
    const T x0 = x[a], x1 = x[b];
    x[a] = x0 * cos_row[t] - x1 * sin_row[t];
    x[b] = x0 * sin_row[t] + x1 * cos_row[t];
  }
}

}  // namespace flashsdpa::core
