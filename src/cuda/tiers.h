// What each CUDA forward tier serves, host-only (no CUDA types), so the selector and
// `flashsdpa explain` can tell why a call lands where it does.
#pragma once

#include <string>

#include "core/problem.h"

namespace flashsdpa::cuda {

// cuda-mma-sm80: fp16/bf16 tensor-core forward (compute capability >= 8.0, checked by the
// selector). Every layout, mask and modifier; Dqk, Dv in 1..256, run in a tile built for 64, 128
// or 256 (the larger of the two, padded). On true, *why says how the call will run.
bool mma_tier_supports(const core::Problem& p, std::string* why);

// cuda-fp32: exact fp32 (FFMA, no TF32) forward. Every layout, mask and modifier; Dqk, Dv in 1..256.
bool fp32_tier_supports(const core::Problem& p, std::string* why);

// The padded head dim a tier runs a problem with (64, 128 or 256), 0 when none fits.
int padded_head_dim(const core::Problem& p);

}  // namespace flashsdpa::cuda
