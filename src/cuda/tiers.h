// What each CUDA tier serves, host-only (no CUDA types), so the selector and
// `flashsdpa explain` can tell why a call lands where it does.
#pragma once

#include <string>

#include "core/problem.h"

namespace flashsdpa::cuda {

// cuda-mma-sm80: fp16/bf16 tensor-core forward (compute capability >= 8.0, checked by the
// selector). Every layout, mask and modifier; Dqk, Dv in 1..256, run in a tile built for 64, 128
// or 256 (the larger of the two, padded). On true, *why says how the call will run.
bool mma_tier_supports(const core::Problem& p, std::string* why);

// cuda-wgmma-sm90: fp16/bf16 forward on Hopper's wgmma (compute capability 9.0, checked by the
// selector, and a build with sm_90a code). Batched, varlen and dense-cache K/V (not paged) with
// every row 16-byte aligned and head dims multiples of 8 up to 256; every mask and modifier.
// On false, *why says what it lacks (the selector then falls back to cuda-mma-sm80).
bool wgmma_tier_supports(const core::Problem& p, std::string* why);

// Whether the current device runs the sm_90a build of the wgmma kernels (forward_wgmma_d64.cu).
bool wgmma_kernels_loaded();

// True when every q/k/v/out row starts on a 16-byte boundary and the head dims are whole 16-byte
// chunks (cp.async and 16-byte stores).
bool all_rows_16_byte_aligned(const core::Problem& p);

// cuda-fp32: exact fp32 (FFMA, no TF32) forward. Every layout, mask and modifier; Dqk, Dv in 1..256.
bool fp32_tier_supports(const core::Problem& p, std::string* why);

// cuda-3xtf32-sm90: fp32 forward on Hopper's wgmma, each product as three TF32 products
// (forward_3xtf32.cuh says why that is accurate to fp32 rounding). Compute capability 9.0 (checked
// by the selector) and a build with sm_90a code; batched, varlen and dense-cache K/V (not paged)
// with every row 16-byte aligned and head dims up to 128; every mask and modifier. On false,
// *why says what it lacks (the selector then falls back to cuda-fp32).
bool tf32x3_tier_supports(const core::Problem& p, std::string* why);

// cuda-dmma-sm90: fp32 forward on Hopper's FP64 tensor cores (mma.sync m16n8k16 .f64), every
// fp32 product exact in fp64 and each score and each tile's P V summed in fp64
// (forward_dmma.cuh). Compute capability 9.0 (checked by the selector) and a build with sm_90a
// code; batched, varlen and dense-cache K/V (not paged) with every row 16-byte aligned and head
// dims above 128 up to 256 (cuda-3xtf32-sm90 serves the smaller ones); every mask and modifier,
// exact_fp32 calls too; only on GPUs with the full FP64 rate (fp32_to_fp64_rate_ratio() <= 2, as
// the H100 and H200: parts with a reduced FP64 rate would run it far below the FFMA tier). On
// false, *why says what it lacks (the selector then falls back to cuda-fp32).
bool dmma_tier_supports(const core::Problem& p, std::string* why);

// The current device's FP32 to FP64 throughput ratio (cudaDevAttrSingleToDoublePrecisionPerfRatio:
// 2 on the H100), 0 when it cannot be read.
int fp32_to_fp64_rate_ratio();

// cuda-fp32 for attention_kvcache: fp32 dense or paged caches, the append of k_new / v_new with
// rotary (cuda-decode's append kernel), then the fp32 forward over the cache with the queries
// rotated as they load. Every mask and modifier; Dqk, Dv in 1..256. num_splits is ignored: the
// fp32 tier does not split keys.
bool fp32_kvcache_supports(const core::Problem& p, std::string* why);

// cuda-bwd: the backward (dq, dk, dv, dsinks) for fp16/bf16/fp32 in fp32 SIMT arithmetic,
// deterministic. Batched, varlen and dense-cache K/V (the validator refuses paged K/V), every mask
// and modifier; Dqk, Dv in 1..256. On true, *why says how the call will run.
bool backward_tier_supports(const core::Problem& p, std::string* why);

// The padded head dim a tier runs a problem with (64, 128 or 256), 0 when none fits.
int padded_head_dim(const core::Problem& p);

}  // namespace flashsdpa::cuda
