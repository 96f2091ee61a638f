// cuda-decode: split-KV flash decoding for short query lengths over dense or paged KV caches.
// Host-only (no CUDA types), so the selector and `flashsdpa explain` can ask what it serves.
#pragma once

#include <string>

#include "core/problem.h"

namespace flashsdpa::cuda {

// What cuda-decode serves:
//   attention_kvcache (is_kvcache): fp16/bf16 (tensor cores) and fp32 (exact FFMA, where its
//     shared memory fits the device: decode_fp32_fits), Dqk and Dv in 1..256, dense or paged caches, any
//     query length (best at Sq * Hq / Hkv <= 16), append with rotary, every mask and modifier.
//   attention_forward: fp16/bf16 over a paged KV cache (block_table) with batched or varlen q —
//     continuous batching, where one call mixes prefill chunks and decode rows — or any K/V
//     layout when the longest query is at most kDecodeMaxQueryLen rows; fp32 at query lengths
//     up to kDecodeMaxQueryLen only (longer fp32 queries are compute-bound: the prefill tiers).
// On true, *why says how the call will run; on false, why not.
bool decode_tier_supports(const core::Problem& p, bool is_kvcache, std::string* why);

// Whether the fp32 kernel's CTA at this head dim fits the current device's shared memory per
// block (134-137 KB at head dims 65..256: sm_80 and sm_90, not sm_86 / sm_89).
bool decode_fp32_fits(int64_t head_dim);

// Queries up to this long (per sequence) count as decoding / speculative verification.
inline constexpr int64_t kDecodeMaxQueryLen = 16;

// Entry points (decode_attention.cu). `stream` is a cudaStream_t.
void decode_kvcache(const core::Problem& p, void* stream);  // append (+ rotary), then attend
void decode_forward(const core::Problem& p, void* stream);  // attend only

// Kernel variants under measurement (docs/perf-log.md, CUDA decode, runs 6-17), selected by
// DecodeDebug::variant. 0 is the shipped choice: at head dim 128 where it fits (Hopper), one 8-warp
// CTA per SM with two chunks per warp in flight for calls it splits or serves in one wave;
// otherwise two 4-warp CTAs per SM; a combine kernel after the splits.
//   kDecodePair: the two 4-warp CTAs per SM, kStages chunks deep, for every call (the kernel
//     shipped before run 12).
//   kDecodeWide: the 8-warp CTA for every call where it fits (head dim 128 on Hopper).
//   kDecodeTma: the shipped CTA choice, K/V chunks copied by the tensor copy engine (one box of K
//     and one of V per chunk) wherever a call allows it (sm_90 builds, Dqk = Dv = the head-dim
//     bucket, 16-byte aligned rows, pages of whole chunks, a layout other than varlen K); the
//     shipped choice takes it for dense K/V at head dim 128 and 256.
//   kDecodeCopy: the shipped CTA choice, K/V chunks by cp.async for every call.
inline constexpr int kDecodeAuto = 0;
inline constexpr int kDecodePair = 1;
inline constexpr int kDecodeWide = 2;
inline constexpr int kDecodeTma = 3;
inline constexpr int kDecodeCopy = 4;
inline constexpr int kDecodeVariants = 5;
inline const char* decode_variant_name(int variant) {
  static const char* const names[kDecodeVariants] = {"auto", "pair", "wide", "tma", "copy"};
  return variant >= 0 && variant < kDecodeVariants ? names[variant] : "unknown";
}

// Benchmark- and test-only (bench/gpu/bench_decode.cu, tests/cuda/test_decode.cpp), read at each
// launch. `trace`: a device buffer that receives a timeline of the next bf16 calls, written by
// kernels of their own (other types run untraced). Per attention CTA:
// SM id + 1, start, first chunk ready, warp 0's main loop done, end, first copies issued, query
// tile stored, geometry known, row bounds known, query rows arrived, every warp's state in the
// merge area (after the merge's barrier), in ns;
// then kPrologueSteps SM cycle counts of warp 0 after its start: geometry known, query loads
// issued, accumulators zeroed, first copies begin, first copies issued, row bounds known, query
// tile stored, first chunk ready; then the spread of the warps' loop ends, max - min and max -
// mean, in SM cycles; from the buffer's middle, per combine warp: start, end. `variant`: the
// kernel variant. `tma_calls`: counted up by each launch whose K/V the copy engine reads (the tests
// check which path served them).
inline constexpr int kPrologueSteps = 8;
inline constexpr int kDecodeTraceWords = 13 + kPrologueSteps;  // words per attention CTA's record
struct DecodeDebug {
  unsigned long long* trace = nullptr;
  int trace_capacity = 0;  // records of kDecodeTraceWords words
  int variant = 0;
  long long tma_calls = 0;  // attention launches whose chunks the tensor copy engine filled (a count)
};
void decode_set_debug(const DecodeDebug& debug);
DecodeDebug decode_debug();

}  // namespace flashsdpa::cuda
