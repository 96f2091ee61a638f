// cuda-decode: split-KV flash decoding (SPEC §2–3) for short query lengths over dense or paged
// KV caches, with GQA packing, and the combine that merges the splits by their log-sum-exp.
//
// Work decomposition. One CTA per (sequence b, kv head, query tile, key split). A query tile is
// 16 packed rows — query row i and query head h = hkv * group + g as packed row i * group + g —
// so all query heads that read one kv head share the tile and K/V are read once per tile. 16 rows
// is the M of one m16n8k16 tensor-core instruction: decode (Sq = 1) with GQA group 4 or 8 fills
// 4 or 8 of them, and the padded rows cost no memory traffic.
//
// Inside a CTA the key range of the split is cut into chunks of 16 keys; of W warps (4, or 8 for
// split calls at head dim 128) warp w takes chunks w, w + W, w + 2W, ... and runs its own copy
// pipeline (kStages chunks deep, 2 in the 8-warp CTA; whole 16-key K and V chunks into shared
// memory, by 16-byte cp.async or, for dense K/V at head dim 128 and 256 on sm_90, one tensor-copy
// box of K and one of V; wants_tma), its own scores (Q K^T on tensor cores), online softmax and
// P V accumulation.
// Warps share no data inside the loop (in long loops they only wait for each other every second
// chunk, to stay in step); at the end the W partial (max, sum, O) are merged through shared
// memory in warp order. Paged addressing is resolved once per chunk: one block-table entry per
// chunk when pages hold whole chunks (looked up a chunk ahead), else lanes 0..15 look up one key
// each and the row offsets travel to the copying lanes by shuffle.
//
// Splits. With num_splits > 1 each CTA writes fp32 partials (O normalised by its own sum, and
// its lse) to scratch sized splits x query rows x heads x Dv, and combine_splits_kernel merges
// them online by lse; sinks join there, once. With one split the CTA writes out and lse itself.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "core/mask.h"
#include "core/rotary.h"
#include "core/sequence.h"
#include "cuda/cuda_backend.h"
#include "cuda/decode_common.h"
#include "cuda/decode_launch.h"
#include "cuda/decode_tier.h"
#include "cuda/device_resources.h"
#include "cuda/fast_div.h"

namespace flashsdpa::cuda {
namespace decode {
namespace {

constexpr int kRows = 16;   // packed query rows per CTA: the M of m16n8k16
constexpr int kChunk = 16;  // keys per warp step: two n8 score tiles, the K of the P V product
constexpr int kMaxSplits = 128;  // as flash-attn; the combine's lanes hold 4 splits' lse each
// Warps per attention CTA: 4 (two CTAs per SM at head dim 128), or 8 (one CTA per SM) for split
// calls at head dim 128 (launch_for_variant; docs/perf-log.md, CUDA decode, runs 6 and 12).
constexpr int kNarrowWarps = 4;
constexpr int kWideWarps = 8;
// Chunks per warp from which the warps of a paged call's CTA run in lockstep (split_kv_attention_kernel).
constexpr int kLockstepMinChunks = 16;
// The query-tile load and the output give each row kWarps * 32 / kRows threads (8 or 16).
template <int kWarps>
constexpr int threads_per_row() {
  return kWarps * 32 / kRows;
}

// Shared-memory geometry of one head-dim bucket.
//
// Stage depth: decode reads K/V once, so what hides DRAM latency is bytes in flight. A 16-key
// chunk of K and V at head dim 128 (bf16) is 8 KB; a warp's loop keeps up to kStages - 1 chunks in
// flight (its depth, below): 4 warps x 2 x 8 KB = 64 KB per CTA, and the 109 KB CTA leaves room for
// a second CTA on an SM (228 KB), so ~128 KB per SM is in flight — several times the ~25 KB
// Little's law asks for at 25 GB/s per SM and ~1 us of loaded latency, and more no longer helps
// (run 23: 192 KB per SM read 0.1-0.9% slower). Head dim 64 chunks are half the size, so 4 stages;
// head dim 256 chunks are 16 KB, so 2 stages (one CTA per SM). An 8-warp CTA at head dim 128 is
// 213 KB: one per SM, the same bytes in flight.
template <int kHeadDim>
struct Tile {
  static constexpr int kStages = kHeadDim <= 64 ? 4 : kHeadDim <= 128 ? 3 : 2;
  // Q's A fragments stay in registers (kHeadDim / 4 of them) up to head dim 128. At 256 they and
  // the 128 O accumulators would exceed the 255-register budget, so Q is re-read from shared
  // memory per chunk (16 ldmatrix per 16 KB of K/V: noise).
  static constexpr bool kQInRegisters = kHeadDim <= 128;
  static constexpr int kQFragments = kQInRegisters ? kHeadDim / 16 : 1;
  // Q's row pitch in elements: 16 extra bytes put the 8 rows of every ldmatrix 8x8 block on
  // distinct 16-byte bank groups (a 2^k-byte pitch would put them all on one). K/V stage rows have
  // no pad and swizzled pieces instead (kv_offset): a padded stage row starts 16 x k bytes into a
  // 128-byte line, and the copies then ask L2 for 9 sectors per 8 delivered (docs/perf-log.md,
  // CUDA decode, run 13).
  static constexpr int kQPitch = kHeadDim + 8;
  static constexpr int kPieces = kHeadDim / 8;                 // 16-byte pieces per row
  static constexpr int kCopiesPerLane = kChunk * kPieces / 32;  // cp.async per lane per chunk, K or V
  static constexpr int kChunkElems = kChunk * kHeadDim;
  static constexpr size_t kQBytes = size_t(kRows) * kQPitch * 2;
  static constexpr size_t kStageBytes = 2 * size_t(kChunkElems) * 2;  // K and V chunks, 16-bit elements
  static constexpr int kOPitch = kHeadDim + 4;  // fp32 O rows of the merge
  static_assert(kCopiesPerLane * 32 == kChunk * kPieces, "a chunk must split evenly over a warp");
  static_assert(kPieces % 8 == 0, "the swizzle permutes the 8 pieces of each 128-byte line");
  static_assert(kQBytes % 128 == 0, "the masks and mbarriers after the query tile stay aligned");
};

// Element offset of (row, d) in a K or V stage chunk. The chunk is stored as kHeadDim / 64 slabs
// of 64 dims (128 bytes) x kChunk rows; in each row of a slab, 16-byte piece c sits at piece c ^
// (row % 8). Each 128-byte line of a row stays one line (so a warp's copy of it is one L2
// request), the 8 rows an ldmatrix reads at one logical piece fall on 8 distinct 16-byte bank
// groups, and the layout is the one the tensor copy engine writes with its 128-byte swizzle for
// a box of 64 dims x kChunk rows per slab (the TMA copies, load_kv_chunk_tma).
template <int kHeadDim>
__device__ __forceinline__ int kv_offset(int row, int d) {
  static_assert(kHeadDim % 64 == 0, "whole 64-dim slabs");
  return (d >> 6) * (kChunk * 64) + row * 64 + (((((d & 63) >> 3) ^ (row & 7))) << 3) + (d & 7);
}

// Shared memory of a CTA of kWarps warps: each warp's pipeline (first: the copy engine's 128-byte
// swizzle needs its boxes on 1024-byte boundaries), the query tile, the valid-key masks and the
// stages' mbarriers (TMA copies). After its loop each warp's stages hold its fp32 O [kRows][kOPitch],
// max and sum (merge_and_store).
template <int kHeadDim, int kWarps>
struct CtaSmem {
  using Cfg = Tile<kHeadDim>;
  static constexpr size_t kPipelineBytes = size_t(kWarps) * Cfg::kStages * Cfg::kStageBytes;
  static constexpr size_t kQOffset = kPipelineBytes;
  static constexpr size_t kMaskOffset = kQOffset + Cfg::kQBytes;
  static constexpr size_t kMaskBytes = size_t(kWarps) * Cfg::kStages * sizeof(uint32_t);
  static constexpr size_t kBarrierOffset = (kMaskOffset + kMaskBytes + 7) / 8 * 8;
  static constexpr size_t kBytes = kBarrierOffset + size_t(kWarps) * Cfg::kStages * sizeof(uint64_t);
  static_assert(Cfg::kStageBytes % 2048 == 0, "K and V chunks start on 1024-byte boundaries");
};

struct Args {
  core::Problem p;
  int num_splits;
  int64_t m_tiles;         // query tiles per (sequence, kv head)
  // The divisors of the CTA's geometry, fixed at launch (fast_div.h): query tiles, kv heads,
  // GQA group, splits, page size (block_size: paged caches only), query heads (the combine).
  FastDiv tiles_div, heads_kv_div, group_div, splits_div, block_div, heads_q_div;
  int64_t q_rows;          // dense query rows: batch * seqlen_q (batched) or total_q (varlen)
  float* partial_out;      // [num_splits][q_rows][Hq][kHeadDim] when num_splits > 1
  float* partial_lse;      // [num_splits][q_rows][Hq]
  bool vector_kv;          // every K/V row 16-byte aligned and D % 8 == 0: cp.async
  bool strided_chunks;     // a chunk's 16 rows are one row stride apart (not paged, or pages of 16k keys)
  bool plain_scores;       // no softcap, no ALiBi: an unmasked score is s * scale
  bool rotate_q;           // rotary on q (KV-cache calls with rotary tables)
  bool q_pairs;            // every query element pair (2t, 2t + 1) one aligned 4-byte word: Dqk even, q 4-byte aligned
  bool short_queue;        // head dim 64, more CTAs than one wave: one chunk fewer in flight per warp
  // K/V chunks by the tensor copy engine (load_kv_chunk_tma, kernels instantiated with kTma):
  // one 5-d box per chunk of K and of V, {64 dims, 1 head, kChunk rows, 1 sequence or block,
  // kHeadDim / 64 slabs} (tma_map).
  CUtensorMap k_map, v_map;
  // Benchmark timeline: per CTA smid, start, first chunk, warp 0's loop end, end, first copies
  // issued, query tile stored, CTA geometry known, row bounds known, query rows arrived, merge
  // area complete (DecodeDebug).
  unsigned long long* trace;
  int trace_capacity;      // records of kDecodeTraceWords words: attention CTAs in the first half, the combine's after
};

// Waits until `value` has arrived: a predicate consumes it (an instruction must read a register
// for the warp to wait on its load), so a stamp taken next marks a load's arrival, not its issue.
__device__ __forceinline__ void arrived(uint32_t value) {
  asm volatile("{\n .reg .pred p;\n setp.eq.u32 p, %0, 0x7fc0dead;\n @p trap;\n}" ::"r"(value));
}
__device__ __forceinline__ unsigned long long global_ns_after(uint32_t value) {
  arrived(value);
  return global_ns();
}
// The SM's cycle counter, for step durations inside one CTA (the globaltimer ticks every 256 ns).
__device__ __forceinline__ long long cycles() {
  long long c;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(c));
  return c;
}
__device__ __forceinline__ long long cycles_after(uint32_t value) {
  arrived(value);
  return cycles();
}
__device__ __forceinline__ unsigned sm_id() {
  unsigned id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}

// ---- geometry of one CTA ------------------------------------------------------------------------

// Which sequence, kv head, query tile and split a CTA serves, and the keys its split covers.
struct CtaWork {
  int64_t b, hkv, row0;        // row0: first packed row of the tile
  int64_t packed_rows;         // sq * group: packed rows of the sequence
  core::SeqView s;
  core::Mask mask;
  int64_t key_begin, key_end;  // keys of this split that some row of the tile may see
  int64_t chunk0;              // first chunk start (a multiple of kChunk; keys before key_begin masked)
};

// kTileRows: packed rows per query tile (kRows for the tensor-core kernel, kFp32Rows for fp32).
template <int kTileRows = kRows>
__device__ CtaWork cta_work(const Args& a) {
  const core::Problem& p = a.p;
  CtaWork w;
  // 32-bit divisions by launch constants (FastDiv): the grid, packed rows and key counts are below
  // 2^31 (decode_tier_supports).
  const QuotientRemainder tile = a.tiles_div.divmod(blockIdx.x);  // (sequence, kv head), query tile
  const uint32_t m_tile = tile.remainder;
  const QuotientRemainder bh = a.heads_kv_div.divmod(tile.quotient);
  w.b = bh.quotient;
  w.hkv = bh.remainder;
  w.s = core::sequence(p, w.b);
  w.mask = core::sequence_mask(p, w.s);
  w.row0 = int64_t(m_tile) * kTileRows;
  w.packed_rows = w.s.sq * p.group;
  w.key_begin = w.key_end = w.chunk0 = 0;
  if (w.row0 >= w.packed_rows) return w;

  // Both mask bounds are non-decreasing in the query row, so the tile sees the keys between the
  // first row's begin and the last row's end. Chunks start on multiples of kChunk so that a
  // chunk never straddles two pages of size 16 (or any divisor of 16).
  const int64_t i_first = a.group_div.div(static_cast<uint32_t>(w.row0));
  const int64_t i_last = a.group_div.div(static_cast<uint32_t>(min(w.row0 + kTileRows, w.packed_rows) - 1));
  const int64_t lo = w.mask.tile_begin(i_first, i_last + 1);
  const int64_t hi = w.mask.tile_end(i_first, i_last + 1);
  if (hi <= lo) return w;
  // The tile's chunks are dealt out evenly: split y takes `per` or `per + 1` of them, so that a
  // split count that is not a power of two (one CTA for every resident slot: 33 splits x 8
  // heads on 132 SMs x 2) gives every CTA the same work.
  const int64_t base = lo / kChunk * kChunk;
  const uint32_t y = blockIdx.y;
  const uint32_t chunks = static_cast<uint32_t>(ceil_div(hi - base, kChunk));
  const QuotientRemainder share = a.splits_div.divmod(chunks);
  const uint32_t per = share.quotient, extra = share.remainder;
  const int64_t split_begin = base + int64_t(y * per + min(y, extra)) * kChunk;
  const int64_t split_end = split_begin + int64_t(per + (y < extra ? 1 : 0)) * kChunk;
  w.chunk0 = split_begin;
  w.key_begin = max(split_begin, lo);
  w.key_end = min(split_end, hi);
  if (w.key_end < w.key_begin) w.key_end = w.key_begin;
  return w;
}

// Packed row r of a (sequence, kv head) tile: query row r / group of head hkv * group + r % group
// (GQA packing: a kv head's query heads side by side, row by row).
struct PackedRow {
  int64_t i, h;
};
__device__ __forceinline__ PackedRow packed_row(const Args& a, int64_t hkv, int64_t packed) {
  const QuotientRemainder ig = a.group_div.divmod(static_cast<uint32_t>(packed));
  return {ig.quotient, hkv * a.p.group + ig.remainder};
}

// One packed row of the tile as a lane sees it.
struct RowInfo {
  bool valid;
  int64_t i;          // query row in the sequence
  int64_t h;          // query head
  int64_t key_begin;  // allowed keys [key_begin, key_end)
  int64_t key_end;
  core::ScoreMod mod;
};

__device__ RowInfo row_info(const Args& a, const CtaWork& w, int r) {
  const core::Problem& p = a.p;
  RowInfo row;
  const int64_t packed = w.row0 + r;
  row.valid = packed < w.packed_rows;
  const PackedRow at = packed_row(a, w.hkv, packed);
  row.i = row.valid ? at.i : 0;
  row.h = row.valid ? at.h : w.hkv * p.group;
  row.key_begin = row.valid ? max(w.mask.row_begin(row.i), w.key_begin) : 0;
  row.key_end = row.valid ? min(w.mask.row_end(row.i), w.key_end) : 0;
  row.mod.softcap = p.softcap;
  row.mod.has_alibi = p.alibi_slopes != nullptr;
  row.mod.alibi_slope = row.mod.has_alibi ? p.alibi_slopes[w.b * p.alibi_batch_stride + row.h] : 0.0f;
  return row;
}

// ---- query tile ---------------------------------------------------------------------------------

// The A fragment of Q for k-step kk: matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15), one 8x8 matrix
// per group of 8 lanes.
template <int kHeadDim, typename T>
__device__ __forceinline__ void query_fragment(const T* q_tile, int kk, int lane, uint32_t (&a)[4]) {
  const int row = lane % 8 + 8 * ((lane / 8) % 2), col = 8 * (lane / 16);
  ldmatrix_x4(a, smem_address(q_tile + row * Tile<kHeadDim>::kQPitch + kk * 16 + col));
}

// Element pair t of a query row: the rotary pairs first (core::rotary_pair), then the dims past
// rotary_dim two by two (rotary_dim = 0: every pair plain). Selects, not branches: fetch_query's
// loads take their addresses from here and should leave back to back.
__device__ __forceinline__ void query_pair(int t, int rotary_dim, bool interleaved, int* d0, int* d1) {
  int64_t first, second;
  core::rotary_pair(t, rotary_dim, interleaved, &first, &second);
  const bool rotary = t < rotary_dim / 2;
  const int plain = rotary_dim + 2 * (t - rotary_dim / 2);
  *d0 = rotary ? static_cast<int>(first) : plain;
  *d1 = rotary ? static_cast<int>(second) : plain + 1;
}

// The tile's query rows, as each thread holds them between fetch_query and store_query:
// threads_per_row() threads share a row, each owning whole element pairs (so rotation needs no
// staging), with the row's rotary factors.
template <int kHeadDim, int kWarps>
struct QueryPairs {
  static constexpr int kThreadsPerRow = threads_per_row<kWarps>();
  static constexpr int kPerThread = kHeadDim / 2 / kThreadsPerRow;
  float x0[kPerThread], x1[kPerThread], cos_t[kPerThread], sin_t[kPerThread];
  bool rotated;  // the row has rotary factors (rotary call, position inside the tables)
  // Args::q_pairs without rotary: x0[n] holds pair n's 4-byte word as loaded (a bit cast, no
  // instruction), stored as it is by store_query: nothing reads it before, as an instruction that
  // did would wait for the load there, before the first K/V copies.
  bool as_loaded;
  uint32_t inside;  // as_loaded: bit n set when pair n is query data (else it is stored as zeros)
  // Consumes every loaded value (the benchmark's trace stamps the query's arrival with it).
  __device__ uint32_t fingerprint() const {
    uint32_t bits = 0;
#pragma unroll
    for (int n = 0; n < kPerThread; ++n) bits ^= __float_as_uint(x0[n]) ^ __float_as_uint(x1[n]);
    return bits;
  }
};

// Issues the loads of the tile's query rows (and rotary factors at core::rotary_q_position)
// into registers. Called before the first K/V copies: behind them, these few loads would wait
// for the whole K/V prologue of the SM to arrive. The row's geometry (a division included) is
// worked out once per thread. Padded rows and dims past Dqk are zeros.
//
// Every load is unconditional, at an index clamped into the row (a padded row reads row 0 of its
// sequence, which exists: a CTA with no row returns before this), and the zeros are selected
// afterwards. Behind a condition each load sat in its own branch and was waited on before the
// next was issued: 8 round trips per thread at head dim 128, ~6 us of a CTA's start
// (docs/perf-log.md, CUDA decode, run 9).
template <class E, int kHeadDim, int kWarps>
__device__ QueryPairs<kHeadDim, kWarps> fetch_query(const Args& a, const CtaWork& w) {
  using T = typename E::T;
  constexpr int kThreadsPerRow = threads_per_row<kWarps>();
  const core::Problem& p = a.p;
  const int rotary_dim = a.rotate_q ? static_cast<int>(p.rotary_dim) : 0;
  const int r = threadIdx.x / kThreadsPerRow, first_pair = threadIdx.x % kThreadsPerRow;
  const int64_t packed = w.row0 + r;
  const bool real = packed < w.packed_rows;
  const PackedRow at = packed_row(a, w.hkv, packed);
  const int64_t i = real ? at.i : 0, h = real ? at.h : w.hkv * p.group;  // a padded row reads row 0
  const T* row = static_cast<const T*>(p.q.ptr) + core::q_offset(p, w.s, w.b, i, h);
  const int64_t table_row = rotary_dim > 0 ? core::rotary_row(p, core::rotary_q_position(p, w.s, i)) : -1;
  const int dqk = static_cast<int>(p.head_dim_qk);

  QueryPairs<kHeadDim, kWarps> q;
  q.rotated = table_row >= 0;
  // Not at head dim 256: the pairs' zero mask and the stores' second path cost its 255 registers
  // 68 more bytes of spills.
  q.as_loaded = Tile<kHeadDim>::kQInRegisters && rotary_dim == 0 && a.q_pairs;
  q.inside = 0;
  if (q.as_loaded) {
    // No rotation: pair t is dims 2t and 2t + 1, one 4-byte load (a third of the general path's
    // instructions: no pair mapping, half the loads), kept as loaded (QueryPairs::as_loaded).
#pragma unroll
    for (int n = 0; n < q.kPerThread; ++n) {
      const int d = 2 * (first_pair + n * kThreadsPerRow);
      q.x0[n] = __uint_as_float(*reinterpret_cast<const uint32_t*>(row + (d < dqk ? d : 0)));
      if (real && d < dqk) q.inside |= 1u << n;
      q.x1[n] = 0.0f, q.cos_t[n] = 1.0f, q.sin_t[n] = 0.0f;
    }
    return q;
  }
  T x0[q.kPerThread], x1[q.kPerThread];
#pragma unroll
  for (int n = 0; n < q.kPerThread; ++n) {
    int d0, d1;
    query_pair(first_pair + n * kThreadsPerRow, rotary_dim, p.rotary_interleaved, &d0, &d1);
    x0[n] = row[d0 < dqk ? d0 : 0];
    x1[n] = row[d1 < dqk ? d1 : 0];
  }
  if (q.rotated) {  // uniform over the CTA's rotary calls: the table loads issue together too
    const T* cos_row = static_cast<const T*>(p.rotary_cos) + table_row * p.rotary_row_stride;
    const T* sin_row = static_cast<const T*>(p.rotary_sin) + table_row * p.rotary_row_stride;
    T c[q.kPerThread], sn[q.kPerThread];
#pragma unroll
    for (int n = 0; n < q.kPerThread; ++n) {
      const int t = first_pair + n * kThreadsPerRow, clamped = t < rotary_dim / 2 ? t : 0;
      c[n] = cos_row[clamped];
      sn[n] = sin_row[clamped];
    }
#pragma unroll
    for (int n = 0; n < q.kPerThread; ++n) {
      const bool rotated = first_pair + n * kThreadsPerRow < rotary_dim / 2;
      q.cos_t[n] = rotated ? to_float(c[n]) : 1.0f;
      q.sin_t[n] = rotated ? to_float(sn[n]) : 0.0f;
    }
  } else {
#pragma unroll
    for (int n = 0; n < q.kPerThread; ++n) q.cos_t[n] = 1.0f, q.sin_t[n] = 0.0f;
  }
#pragma unroll
  for (int n = 0; n < q.kPerThread; ++n) {
    int d0, d1;
    query_pair(first_pair + n * kThreadsPerRow, rotary_dim, p.rotary_interleaved, &d0, &d1);
    q.x0[n] = real && d0 < dqk ? to_float(x0[n]) : 0.0f;
    q.x1[n] = real && d1 < dqk ? to_float(x1[n]) : 0.0f;
  }
  return q;
}

// Rotates the fetched rows (in fp32, like the reference, then rounded) into shared memory (the
// 16-bit A operand) and leaves the A fragments in q_frag when they live in registers
// (Tile::kQInRegisters).
template <class E, int kHeadDim, int kWarps>
__device__ void store_query(const Args& a, const QueryPairs<kHeadDim, kWarps>& q, typename E::T* q_tile,
                            uint32_t (&q_frag)[Tile<kHeadDim>::kQFragments][4]) {
  using T = typename E::T;
  using Cfg = Tile<kHeadDim>;
  constexpr int kThreadsPerRow = threads_per_row<kWarps>();
  const int rotary_dim = a.rotate_q ? static_cast<int>(a.p.rotary_dim) : 0;
  const int r = threadIdx.x / kThreadsPerRow, first_pair = threadIdx.x % kThreadsPerRow;
  if (q.as_loaded) {
#pragma unroll
    for (int n = 0; n < q.kPerThread; ++n) {
      const int d = 2 * (first_pair + n * kThreadsPerRow);
      *reinterpret_cast<uint32_t*>(q_tile + r * Cfg::kQPitch + d) = (q.inside >> n) & 1u ? __float_as_uint(q.x0[n]) : 0u;
    }
  } else {
#pragma unroll
    for (int n = 0; n < q.kPerThread; ++n) {
      const int t = first_pair + n * kThreadsPerRow;
      int d0, d1;
      query_pair(t, rotary_dim, a.p.rotary_interleaved, &d0, &d1);
      const bool rotated = t < rotary_dim / 2 && q.rotated;
      const float y0 = rotated ? q.x0[n] * q.cos_t[n] - q.x1[n] * q.sin_t[n] : q.x0[n];
      const float y1 = rotated ? q.x0[n] * q.sin_t[n] + q.x1[n] * q.cos_t[n] : q.x1[n];
      q_tile[r * Cfg::kQPitch + d0] = from_float<T>(y0);
      q_tile[r * Cfg::kQPitch + d1] = from_float<T>(y1);
    }
  }
  __syncthreads();
  if constexpr (Cfg::kQInRegisters) {
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) query_fragment<kHeadDim>(q_tile, kk, threadIdx.x % 32, q_frag[kk]);
  }
}

// ---- K/V chunks ---------------------------------------------------------------------------------

// One 16-byte piece of a chunk as a lane copies it: piece c of lane `lane` is key idx / kPieces,
// dims (idx % kPieces) * 8 .. + 7, idx = c * 32 + lane. Row offsets come from lane `key`.
template <int kHeadDim>
struct Piece {
  int key, d;
  __device__ Piece(int c, int lane) {
    const int idx = c * 32 + lane;
    key = idx / Tile<kHeadDim>::kPieces;
    d = (idx % Tile<kHeadDim>::kPieces) * 8;
  }
};

// The copy for rows that are not 16-byte aligned or head dims not a multiple of 8: element
// loads and shared stores. Out of line: it is rare, and inlined it tripled the code a CTA runs
// through before its first chunk (each instruction-cache miss then waits behind the SM's K/V
// traffic).
template <typename T, int kHeadDim>
__device__ __noinline__ void copy_chunk_elements(const T* k, const T* v, int64_t k_base, int64_t v_base, T* k_dst,
                                                 T* v_dst, int dqk, int dv, int lane) {
  using Cfg = Tile<kHeadDim>;
#pragma unroll 1
  for (int c = 0; c < Cfg::kCopiesPerLane; ++c) {
    const Piece<kHeadDim> piece(c, lane);
    const int64_t k_src = __shfl_sync(0xffffffffu, k_base, piece.key);
    const int64_t v_src = __shfl_sync(0xffffffffu, v_base, piece.key);
    T* kd = k_dst + kv_offset<kHeadDim>(piece.key, piece.d);
    T* vd = v_dst + kv_offset<kHeadDim>(piece.key, piece.d);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      kd[e] = (k_src >= 0 && piece.d + e < dqk) ? k[k_src + piece.d + e] : from_float<T>(0.0f);
      vd[e] = (v_src >= 0 && piece.d + e < dv) ? v[v_src + piece.d + e] : from_float<T>(0.0f);
    }
  }
}

// One lane's part of every whole chunk a warp copies (Args::vector_kv, Args::strided_chunks: the
// chunk's 16 rows one row stride apart), worked out once per CTA: lane l copies piece l % kPieces
// (dims d .. d + 7) of rows l / kPieces + c * kRowsPerCopy, c = 0 .. kCopiesPerLane - 1. A chunk
// then costs its copies, a pointer step per copy and one swizzle of a precomputed address; worked
// out per chunk, the same copies took ~500 instructions of a warp's ~1700 before its first copy
// left (docs/perf-log.md, CUDA decode, run 20).
template <int kHeadDim>
struct LaneCopies {
  static constexpr int kPieces = Tile<kHeadDim>::kPieces;
  static constexpr int kRowsPerCopy = 32 / kPieces;  // rows one copy instruction of the warp covers
  static_assert(32 % kPieces == 0 && kRowsPerCopy <= 8, "a warp's copy covers whole rows of one 8-row swizzle group");
  int64_t k_lane, v_lane;    // elements from a chunk's first row (head 0) to the lane's first piece
  int64_t k_step, v_step;    // elements between the lane's pieces c and c + 1
  int64_t k_origin, v_origin;  // unpaged layouts: the offset of key 0's row (core::key_offset), keys linear
  uint32_t swizzled;         // kv_offset of the lane's first piece, bytes (kv_offset_of_copy)
  int k_bytes, v_bytes;      // 16, or 0 where the piece is past Dqk / Dv (zero-filled, nothing read)
};

template <int kHeadDim>
__device__ LaneCopies<kHeadDim> lane_copies(const core::Problem& p, const CtaWork& w, int lane) {
  using L = LaneCopies<kHeadDim>;
  const int row = lane / L::kPieces, piece = lane % L::kPieces, d = piece * 8;
  L c;
  c.k_bytes = d < p.head_dim_qk ? 16 : 0;
  c.v_bytes = d < p.head_dim_v ? 16 : 0;
  // A zero-filled piece keeps an address inside its row (dim 0), as cp.async wants a valid source.
  c.k_lane = w.hkv * p.k.head_stride + row * p.k.row_stride + (c.k_bytes ? d : 0);
  c.v_lane = w.hkv * p.v.head_stride + row * p.v.row_stride + (c.v_bytes ? d : 0);
  c.k_step = L::kRowsPerCopy * p.k.row_stride;
  c.v_step = L::kRowsPerCopy * p.v.row_stride;
  const bool paged = p.kv_layout == core::KvLayout::kPaged;
  c.k_origin = paged ? 0 : core::key_offset(p, w.s, p.k, w.b, 0);
  c.v_origin = paged ? 0 : core::key_offset(p, w.s, p.v, w.b, 0);
  c.swizzled = 2u * static_cast<uint32_t>(kv_offset<kHeadDim>(row, d));
  return c;
}

// Byte offset of copy c of a lane in a stage chunk, from LaneCopies::swizzled. The copy's row is
// row0 + c * kRowsPerCopy with row0 < kRowsPerCopy, so its swizzle key (row % 8) is
// ((c * kRowsPerCopy) % 8) | row0: kv_offset differs from the first piece's by whole 128-byte
// slab rows and an XOR of bits 4-6 that is a constant for each c (the row part of the offset has
// no bits there).
template <int kHeadDim>
__device__ __forceinline__ uint32_t kv_offset_of_copy(uint32_t swizzled, int c) {
  constexpr int kRowsPerCopy = LaneCopies<kHeadDim>::kRowsPerCopy;
  const uint32_t flip = static_cast<uint32_t>((c * kRowsPerCopy) % 8) << 4;
  return (swizzled ^ flip) + static_cast<uint32_t>(c * kRowsPerCopy * 128);
}

// A paged chunk's block-table slot and entry as loaded (checked with core::paged_checked_block
// only when the chunk's copies are issued), for pages of whole chunks.
struct PagedChunk {
  int64_t slot = 0;
  int32_t entry = -1;  // 32-bit as stored: widening it at the load would wait for the load
};

// The keys of a chunk as its copying lanes take them: lane l < keys passes the row offsets of key
// l's K and V (-1 where the key is not read: outside the split, or its block out of range);
// every lane gets them at the CTA's kv head (-1 where unreadable) and the chunk's bit mask of
// readable keys. Shared by the tensor-core and fp32 kernels' chunk loads.
struct ChunkRows {
  uint32_t valid;
  int64_t k_base, v_base;
};

__device__ __forceinline__ ChunkRows chunk_rows(const core::Problem& p, int64_t hkv, int64_t k_row, int64_t v_row,
                                                int keys) {
  const bool readable = k_row >= 0 && v_row >= 0;
  return {__ballot_sync(0xffffffffu, readable) & ((1u << keys) - 1), readable ? k_row + hkv * p.k.head_stride : -1,
          readable ? v_row + hkv * p.v.head_stride : -1};
}

// Starts the copy of one 16-key chunk of K and V into shared memory. Lane l < 16 resolves key
// key0 + l (block table included) once; keys outside [key_begin, key_end) or whose block is out
// of range read nothing and land as zeros, and the returned bit mask says which keys are real.
// K/V are read once: the copies mark their L2 lines evict-first and give L2 a fetch size; together
// 2-16% faster at every measured shape than plain cp.async (docs/perf-log.md, CUDA decode, run 4),
// while the fetch-size hint alone was not. 128-byte fetches since run 13 (decode_common.h).
template <class E, int kHeadDim>
__device__ uint32_t load_kv_chunk(const Args& a, const CtaWork& w, const LaneCopies<kHeadDim>& lc, int64_t key0,
                                  const PagedChunk& page, typename E::T* k_dst, typename E::T* v_dst, int lane) {
  using T = typename E::T;
  using Cfg = Tile<kHeadDim>;
  const core::Problem& p = a.p;
  const T* k = static_cast<const T*>(p.k.ptr);
  const T* v = static_cast<const T*>(p.v.ptr);
  // A whole chunk of readable keys one row stride apart (every layout but pages smaller than a
  // chunk): each lane addresses its pieces from the chunk's first row, with no shuffles. The
  // general path below shuffled two 64-bit row offsets per piece, 32 shuffles per warp per
  // chunk, the largest share of the loop's stall samples (docs/perf-log.md, CUDA decode, run 9).
  // Paged: `page` is the chunk's block, looked up by the caller one chunk ahead.
  if (a.vector_kv && a.strided_chunks && key0 >= w.key_begin && key0 + kChunk <= w.key_end) {
    int64_t k_row = lc.k_origin + key0 * p.k.row_stride, v_row = lc.v_origin + key0 * p.v.row_stride;
    bool readable = true;
    if (p.kv_layout == core::KvLayout::kPaged) {
      const int64_t block = core::paged_checked_block(p, page.entry);
      readable = block >= 0;
      k_row = core::paged_row(p, p.k, block, page.slot, key0);
      v_row = core::paged_row(p, p.v, block, page.slot, key0);
    }
    if (readable) {  // uniform over the warp: the same chunk for every lane
      const T* k_src = k + k_row + lc.k_lane;
      const T* v_src = v + v_row + lc.v_lane;
      const uint32_t k_smem = smem_address(k_dst), v_smem = smem_address(v_dst);
      const uint64_t policy = evict_first_policy();
#pragma unroll
      for (int c = 0; c < Cfg::kCopiesPerLane; ++c) {
        const uint32_t offset = kv_offset_of_copy<kHeadDim>(lc.swizzled, c);
        cp_async_16_streaming(k_smem + offset, k_src + c * lc.k_step, lc.k_bytes, policy);
        cp_async_16_streaming(v_smem + offset, v_src + c * lc.v_step, lc.v_bytes, policy);
      }
      return (1u << kChunk) - 1;
    }
  }
  const int64_t j = key0 + (lane % kChunk);
  int64_t k_row = -1, v_row = -1;
  if (lane < kChunk && j >= w.key_begin && j < w.key_end) {
    k_row = core::key_offset(p, w.s, p.k, w.b, j);
    v_row = core::key_offset(p, w.s, p.v, w.b, j);
  }
  const auto [valid, k_base, v_base] = chunk_rows(p, w.hkv, k_row, v_row, kChunk);
  if (!a.vector_kv) {
    copy_chunk_elements<T, kHeadDim>(k, v, k_base, v_base, k_dst, v_dst, static_cast<int>(p.head_dim_qk),
                                     static_cast<int>(p.head_dim_v), lane);
    return valid;
  }
  const uint64_t policy = evict_first_policy();
#pragma unroll
  for (int c = 0; c < Cfg::kCopiesPerLane; ++c) {
    const Piece<kHeadDim> piece(c, lane);
    const int64_t k_src = __shfl_sync(0xffffffffu, k_base, piece.key);
    const int64_t v_src = __shfl_sync(0xffffffffu, v_base, piece.key);
    const bool k_ok = k_src >= 0 && piece.d < p.head_dim_qk, v_ok = v_src >= 0 && piece.d < p.head_dim_v;
    cp_async_16_streaming(smem_address(k_dst + kv_offset<kHeadDim>(piece.key, piece.d)), k_ok ? k + k_src + piece.d : k,
                          k_ok ? 16 : 0, policy);
    cp_async_16_streaming(smem_address(v_dst + kv_offset<kHeadDim>(piece.key, piece.d)), v_ok ? v + v_src + piece.d : v,
                          v_ok ? 16 : 0, policy);
  }
  return valid;
}

// The TMA form of load_kv_chunk (Args::k_map / v_map; whole chunks of pages or rows one stride
// apart, Dqk = Dv = kHeadDim): lane 0 issues one box of K and one of V, completing on `bar`.
// The box covers the chunk's 16 rows whatever the keys' range: keys outside [key_begin, key_end)
// are read where the tensor has them (zeros past its end) and are not valid; the caller treats
// them as edge keys (scores masked, value rows zeroed before the product). A block-table entry out
// of range reads nothing: its box is placed past the map's last block.
template <class E, int kHeadDim>
__device__ uint32_t load_kv_chunk_tma(const Args& a, const CtaWork& w, int64_t key0, const PagedChunk& page,
                                      typename E::T* k_dst, typename E::T* v_dst, uint32_t bar, int lane) {
  const core::Problem& p = a.p;
  int64_t row = key0, batch = p.kv_layout == core::KvLayout::kDenseCache ? w.s.cache_row : w.b;
  bool readable = true;
  if (p.kv_layout == core::KvLayout::kPaged) {
    const int64_t block = core::paged_checked_block(p, page.entry);
    readable = block >= 0;
    row = key0 - page.slot * p.block_size;
    batch = readable ? block : p.num_blocks;
  }
  if (lane == 0) {
    constexpr uint32_t kBytes = 2u * kChunk * kHeadDim * 2;  // the K and V boxes
    const uint64_t policy = evict_first_policy();
    mbarrier_expect_bytes(bar, kBytes);
    const int hkv = static_cast<int>(w.hkv), r = static_cast<int>(row), bt = static_cast<int>(batch);
    tma_load_5d(smem_address(k_dst), &a.k_map, 0, hkv, r, bt, 0, bar, policy);
    tma_load_5d(smem_address(v_dst), &a.v_map, 0, hkv, r, bt, 0, bar, policy);
  }
  const int lo = static_cast<int>(min(max(w.key_begin - key0, int64_t(0)), int64_t(kChunk)));
  const int hi = static_cast<int>(min(max(w.key_end - key0, int64_t(0)), int64_t(kChunk)));
  return readable && hi > lo ? ((1u << hi) - 1u) & ~((1u << lo) - 1u) : 0u;
}

// ---- one warp's attention state -----------------------------------------------------------------

// The accumulators of the two rows a lane holds (g and g + 8 of the m16n8 C layout, g = lane / 4):
// running max and partial sum per row (the sum is this lane's share; the quad adds up at the end)
// and O columns 2t, 2t + 1 of every n8 tile (t = lane % 4).
template <int kHeadDim>
struct WarpState {
  core::SoftmaxRow<float> row[2];
  float o[kHeadDim / 8][4];
};

// Keys of the tile's union [key_begin, key_end) that not every row of the tile may see: the
// rows of a tile (speculative rows, varlen prefill chunks) have their own causal / window bounds.
// Every valid row sees [begin, end); keys of a chunk outside it are the chunk's edge keys.
struct CommonKeys {
  int64_t begin, end;
};

// The keys every valid row of the tile sees, from the two rows each lane holds.
__device__ CommonKeys common_keys(const RowInfo (&rows)[2]) {
  int64_t begin = INT64_MIN, end = INT64_MAX;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (!rows[r].valid) continue;
    begin = max(begin, rows[r].key_begin);
    end = min(end, rows[r].key_end);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    begin = max(begin, static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(begin), offset)));
    end = min(end, static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(end), offset)));
  }
  return {begin, end};
}

// Bit c set: key key0 + c was read (valid) and some row of the tile masks it.
__device__ __forceinline__ uint32_t edge_keys(int64_t key0, uint32_t valid, const CommonKeys& common) {
  auto offset = [&](int64_t j) { return j <= key0 ? 0 : j >= key0 + kChunk ? kChunk : static_cast<int>(j - key0); };
  const int lo = offset(common.begin), hi = offset(common.end);
  const uint32_t inside = hi > lo ? ((1u << hi) - 1u) & ~((1u << lo) - 1u) : 0u;
  return valid & ~inside;
}

// Scores of one chunk: S = Q K^T for 16 rows x 16 keys, then scale, softcap, ALiBi and the mask
// (core::ScoreMod / row bounds); masked entries are -inf.
template <class E, int kHeadDim>
__device__ void chunk_scores(const Args& a, const uint32_t (&q_frag)[Tile<kHeadDim>::kQFragments][4],
                             const typename E::T* q_tile, const typename E::T* k_tile,
                             int64_t key0, uint32_t valid, uint32_t edge, const RowInfo (&rows)[2], int64_t diag,
                             int lane, float (&s)[2][4]) {
  using Cfg = Tile<kHeadDim>;
#pragma unroll
  for (int n = 0; n < 2; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
  // B fragments straight from the K rows: matrices (keys 0-7 | 8-15) x (d 0-7 | 8-15).
  const int key = lane % 8 + 8 * (lane / 16), col = 8 * ((lane / 8) % 2);
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t qa[4], kb[4];
    if constexpr (Cfg::kQInRegisters) {
#pragma unroll
      for (int e = 0; e < 4; ++e) qa[e] = q_frag[kk][e];
    } else {
      query_fragment<kHeadDim>(q_tile, kk, lane, qa);
    }
    ldmatrix_x4(kb, smem_address(k_tile + kv_offset<kHeadDim>(key, kk * 16 + col)));
    mma_16816<E>(s[0], qa, kb[0], kb[1]);
    mma_16816<E>(s[1], qa, kb[2], kb[3]);
  }
  // A chunk every row sees whole (the steady state) with plain scores: scale only. The general
  // path tests each score's key against its row's bounds in 64-bit, a branch per score.
  if (a.plain_scores && valid == (1u << kChunk) - 1 && edge == 0) {
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] *= a.p.scale;
    return;
  }
  const int t = lane % 4;
#pragma unroll
  for (int n = 0; n < 2; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const RowInfo& row = rows[e / 2];
      const int c = n * 8 + 2 * t + e % 2;
      const int64_t j = key0 + c;
      const bool allowed = ((valid >> c) & 1u) && j >= row.key_begin && j < row.key_end;
      s[n][e] = allowed ? row.mod.apply(s[n][e] * a.p.scale, row.i, j, diag) : -INFINITY;
    }
  }
}

// P V for the edge keys of a chunk. A masked key's probability is 0, but 0 * NaN is NaN in the
// tensor-core product: a NaN or Inf in the value row of a key that a row masks must not reach
// that row (SPEC §2). So edge keys are accumulated here with a select per row, and their value
// rows are zeroed before the product. Only chunks on a causal or window edge of a multi-row tile
// come here (never a single-row decode step, whose rows all share one key range).
template <class E, int kHeadDim>
__device__ void accumulate_edge_keys(WarpState<kHeadDim>& st, const float (&p)[2][4], typename E::T* v_tile,
                                     int64_t key0, uint32_t edge, const RowInfo (&rows)[2], int lane) {
  using T = typename E::T;
  using Cfg = Tile<kHeadDim>;
  const int t = lane % 4;
#pragma unroll 1
  for (uint32_t left = edge; left != 0; left &= left - 1) {  // a loop, not unrolled: this path is rare
    const int c = __ffs(left) - 1;
    // Probabilities of key c for this lane's rows g and g + 8 live in lane 4g + (c % 8) / 2, in
    // p[c / 8][c % 2] and p[c / 8][2 + c % 2].
    const int owner = (lane & ~3) | ((c % 8) / 2);
    const bool high = c >= 8, odd = c % 2;
    const float mine0 = high ? (odd ? p[1][1] : p[1][0]) : (odd ? p[0][1] : p[0][0]);
    const float mine1 = high ? (odd ? p[1][3] : p[1][2]) : (odd ? p[0][3] : p[0][2]);
    const float p0 = __shfl_sync(0xffffffffu, mine0, owner);
    const float p1 = __shfl_sync(0xffffffffu, mine1, owner);
    const int64_t j = key0 + c;
    const bool sees0 = j >= rows[0].key_begin && j < rows[0].key_end;
    const bool sees1 = j >= rows[1].key_begin && j < rows[1].key_end;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      const T* v_pair = v_tile + kv_offset<kHeadDim>(c, n * 8 + 2 * t);
      const float v0 = to_float(v_pair[0]), v1 = to_float(v_pair[1]);
      if (sees0) {
        st.o[n][0] = fmaf(p0, v0, st.o[n][0]);
        st.o[n][1] = fmaf(p0, v1, st.o[n][1]);
      }
      if (sees1) {
        st.o[n][2] = fmaf(p1, v0, st.o[n][2]);
        st.o[n][3] = fmaf(p1, v1, st.o[n][3]);
      }
    }
  }
  __syncwarp();  // every lane has read the edge rows
#pragma unroll 1
  for (int idx = lane; idx < kChunk * Cfg::kPieces; idx += 32) {
    const int key = idx / Cfg::kPieces;
    if ((edge >> key) & 1u)
      *reinterpret_cast<uint4*>(v_tile + kv_offset<kHeadDim>(key, (idx % Cfg::kPieces) * 8)) = make_uint4(0, 0, 0, 0);
  }
  fence_async_shared();  // the copy engine may refill this stage next (TMA copies)
  __syncwarp();
}

// Online softmax over one chunk, then O += P V with P from the score registers (the C layout of
// two n8 tiles is the A layout of one k16 step). Edge keys (see edge_keys) take the select path
// first and leave zero value rows to the product.
template <class E, int kHeadDim>
__device__ void chunk_accumulate(WarpState<kHeadDim>& st, float (&s)[2][4], typename E::T* v_tile, int64_t key0,
                                 uint32_t edge, const RowInfo (&rows)[2], int lane) {
  using Cfg = Tile<kHeadDim>;
  float factor[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float chunk_max = quad_max(fmaxf(fmaxf(s[0][2 * r], s[0][2 * r + 1]), fmaxf(s[1][2 * r], s[1][2 * r + 1])));
    factor[r] = st.row[r].rescale_to(chunk_max);
    const float max_log2 = st.row[r].max * kLog2e;
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        // A masked score is -inf and its probability 0, also while the row has seen nothing.
        s[n][e] = s[n][e] == -INFINITY ? 0.0f : fast_exp2(fmaf(s[n][e], kLog2e, -max_log2));
        sum += s[n][e];
      }
    st.row[r].sum += sum;
  }
  // Most chunks raise no row's max once a few have been seen: then every factor is 1 and the
  // kHeadDim / 2 multiplies would change nothing (x * 1 is exact), so the warp skips them.
  if (__any_sync(0xffffffffu, factor[0] != 1.0f || factor[1] != 1.0f)) {
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      st.o[n][0] *= factor[0];
      st.o[n][1] *= factor[0];
      st.o[n][2] *= factor[1];
      st.o[n][3] *= factor[1];
    }
  }
  if (edge != 0) accumulate_edge_keys<E, kHeadDim>(st, s, v_tile, key0, edge, rows, lane);
  const uint32_t p_frag[4] = {E::pack(s[0][0], s[0][1]), E::pack(s[0][2], s[0][3]), E::pack(s[1][0], s[1][1]),
                              E::pack(s[1][2], s[1][3])};
  // B fragments of V by transposed ldmatrix: matrices (keys 0-7 | 8-15) x (d 0-7 | 8-15).
  const int key = lane % 8 + 8 * ((lane / 8) % 2), col = 8 * (lane / 16);
#pragma unroll
  for (int nb = 0; nb < kHeadDim / 16; ++nb) {
    uint32_t vb[4];
    ldmatrix_x4_trans(vb, smem_address(v_tile + kv_offset<kHeadDim>(key, nb * 16 + col)));
    mma_16816<E>(st.o[2 * nb], p_frag, vb[0], vb[1]);
    mma_16816<E>(st.o[2 * nb + 1], p_frag, vb[2], vb[3]);
  }
}

// ---- output -------------------------------------------------------------------------------------

// The second half of a CTA's merge, shared by the tensor-core and fp32 kernels: warp k's state is
// at merge + k * kRegionFloats as O [kTileRows][kOPitch], then max and sum [kTileRows] each, and
// every warp's is there (after a CTA barrier). Writes out = O / Z and lse, with the sink in Z when
// the call has sinks — only when this CTA is the whole row: with splits it writes the split's
// partials, and the combine adds the sink once.
template <typename T, int kHeadDim, int kWarps, int kTileRows, int kRegionFloats, int kOPitch>
__device__ __forceinline__ void finish_rows(const Args& a, const CtaWork& w, const float* merge, int lane, int warp) {
  const core::Problem& p = a.p;
  auto o_rows = [&](int k) { return merge + k * kRegionFloats; };
  auto max_of = [&](int k) { return merge + k * kRegionFloats + kTileRows * kOPitch; };
  auto sum_of = [&](int k) { return max_of(k) + kTileRows; };
  // A warp finishes a row (rows warp, warp + kWarps, ...: only the tile's real rows): the warps'
  // weights from broadcast reads, then columns lane + 32 j, every shared load of the row issued
  // together. 16 threads per row of all 16 rows left half the CTA idle at decode (8 real rows)
  // and looped over the columns one load round trip at a time (docs/perf-log.md, CUDA decode,
  // run 20).
  constexpr int kColumns = kHeadDim / 32;  // per lane
  const int real_rows = static_cast<int>(min(int64_t(kTileRows), w.packed_rows - w.row0));
  const int dv = static_cast<int>(p.head_dim_v);
  for (int row = warp; row < real_rows; row += kWarps) {
    const auto [i, h] = packed_row(a, w.hkv, w.row0 + row);
    float max_k[kWarps], sum_k[kWarps];
#pragma unroll
    for (int k = 0; k < kWarps; ++k) max_k[k] = max_of(k)[row], sum_k[k] = sum_of(k)[row];
    float o[kWarps][kColumns];
#pragma unroll
    for (int k = 0; k < kWarps; ++k)
#pragma unroll
      for (int j = 0; j < kColumns; ++j) o[k][j] = o_rows(k)[row * kOPitch + lane + 32 * j];
    core::SoftmaxRow<float> total;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) total.max = fmaxf(total.max, max_k[k]);
    float weight[kWarps];  // e^(max_k - max): a warp that saw no key of the row weighs 0
#pragma unroll
    for (int k = 0; k < kWarps; ++k) {
      weight[k] = max_k[k] == -INFINITY ? 0.0f : __expf(max_k[k] - total.max);
      total.sum += sum_k[k] * weight[k];
    }
    float merged[kColumns];
#pragma unroll
    for (int j = 0; j < kColumns; ++j) {
      merged[j] = 0.0f;
#pragma unroll
      for (int k = 0; k < kWarps; ++k) merged[j] += o[k][j] * weight[k];
    }
    if (a.num_splits == 1) {
      const float sink_factor = p.sinks != nullptr ? total.add_sink(p.sinks[h]) : 1.0f;
      const float scale = sink_factor * total.inv_sum();
      T* out = static_cast<T*>(p.out.mutable_ptr()) + core::out_offset(p, w.s, w.b, i, h);
#pragma unroll
      for (int j = 0; j < kColumns; ++j)
        if (lane + 32 * j < dv) out[lane + 32 * j] = from_float<T>(merged[j] * scale);
      if (lane == 0 && p.lse != nullptr) p.lse[core::lse_offset(p, w.s, w.b, i, h)] = total.lse();
    } else {
      // Partial rows have a pitch of kHeadDim floats, zero past Dv, so the combine reads float4s.
      const int64_t r = (p.q_layout == core::QLayout::kVarlen ? 0 : w.b * p.seqlen_q) + w.s.q_row0 + i;
      const int64_t slot = (int64_t(blockIdx.y) * a.q_rows + r) * p.heads_q + h;
      const float scale = total.inv_sum();
      float* partial = a.partial_out + slot * kHeadDim;
#pragma unroll
      for (int j = 0; j < kColumns; ++j) partial[lane + 32 * j] = lane + 32 * j < dv ? merged[j] * scale : 0.0f;
      if (lane == 0) a.partial_lse[slot] = total.lse();
    }
  }
}

// Merges the warps' states through shared memory (each warp's from the m16n8 C layout into its
// stages), then finish_rows writes the rows.
template <class E, int kHeadDim, int kWarps, bool kTrace>
__device__ void merge_and_store(const Args& a, const CtaWork& w, const WarpState<kHeadDim>& st, float* merge, int lane,
                                int warp, unsigned long long& t_merged) {
  using T = typename E::T;
  using Cfg = Tile<kHeadDim>;
  // Warp k's state in its own pipeline stages (free once its last chunk is consumed, so a warp
  // writes as soon as its loop ends, while slower warps still stream): O [kRows][kOPitch], then
  // max and sum [kRows] each.
  constexpr int kRegionFloats = Cfg::kStages * Cfg::kStageBytes / sizeof(float);
  static_assert(kRows * (Cfg::kOPitch + 2) <= kRegionFloats, "a warp's state fits in its stages");
  auto o_rows = [&](int k) { return merge + k * kRegionFloats; };
  auto max_of = [&](int k) { return merge + k * kRegionFloats + kRows * Cfg::kOPitch; };
  auto sum_of = [&](int k) { return max_of(k) + kRows; };
  const int g = lane / 4, t = lane % 4;
  const int rows_held = w.row0 + 8 < w.packed_rows ? 2 : 1;  // a lane's second row (g + 8) is padding past the tile's rows
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (r >= rows_held) break;
    const int row = g + 8 * r;
    float* o_row = o_rows(warp) + row * Cfg::kOPitch;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      o_row[n * 8 + 2 * t] = st.o[n][2 * r];
      o_row[n * 8 + 2 * t + 1] = st.o[n][2 * r + 1];
    }
    const float sum = quad_sum(st.row[r].sum);
    if (t == 0) {
      max_of(warp)[row] = st.row[r].max;
      sum_of(warp)[row] = sum;
    }
  }
  __syncthreads();
  if (kTrace) t_merged = global_ns();

  finish_rows<T, kHeadDim, kWarps, kRows, kRegionFloats, Cfg::kOPitch>(a, w, merge, lane, warp);
}

// ---- the kernels --------------------------------------------------------------------------------

// Each kernel of a decode call is launched while the one before it is still running and waits
// on the device (wait_for_primary_grid) before reading anything, which hides the launch latency
// (a few us, several percent of a 50 us decode step). The attention kernel lets the combine (or
// the next call) launch once its main loop is done (allow_dependent_launch).
//
// kTma: the warps' K/V chunks come by the tensor copy engine (load_kv_chunk_tma), else by
// cp.async (load_kv_chunk). The kernel parameter is __grid_constant__: the copy engine reads the
// tensor maps where the launch put them.
// kTrace: the kernel records its timeline in Args::trace (DecodeDebug; the benchmark's --trace),
// in instantiations of their own for bf16: the same records behind a run-time test of Args::trace
// cost every call 0.1-1.7% (Hq 64 B 1 x 8k 17.26 -> 17.01 us without them, hd 256 B 1 x 32k 97.34
// -> 95.67; the hd 256 kernels' spills 76 / 112 -> 12 / 56 bytes; docs/perf-log.md, CUDA decode,
// run 22).

template <class E, int kHeadDim, int kWarps, bool kTma, bool kTrace>
__global__ void __launch_bounds__(kWarps * 32) split_kv_attention_kernel(const __grid_constant__ Args a) {
  using T = typename E::T;
  using Cfg = Tile<kHeadDim>;
  using Smem = CtaSmem<kHeadDim, kWarps>;
  wait_for_primary_grid();  // launched early (programmatic dependent launch): inputs may still be in flight
  const unsigned long long t_start = kTrace ? global_ns() : 0;
  const long long c_start = kTrace ? cycles() : 0;
  unsigned long long t_first = 0, t_issued = 0, t_query = 0, t_loaded = 0, t_rows = 0;
  // The prologue's steps in cycles after c_start (kDecodeTraceWords), written as they happen by
  // the thread that owns the CTA's record: kept in registers to the end, they cost the head dim
  // 256 kernel 44 more bytes of spills.
  unsigned long long* const step_record =
      kTrace && threadIdx.x == 0 && blockIdx.y * int64_t(gridDim.x) + blockIdx.x < a.trace_capacity / 2
          ? a.trace + kDecodeTraceWords * (blockIdx.y * int64_t(gridDim.x) + blockIdx.x) + 11
          : nullptr;
  auto step_done = [&](int step, long long at) {
    if (step_record != nullptr) step_record[step] = static_cast<unsigned long long>(at - c_start);
  };
  const CtaWork w = cta_work(a);
  if (w.row0 >= w.packed_rows) return;  // a query tile past this sequence's rows
  const unsigned long long t_work = kTrace ? global_ns_after(static_cast<uint32_t>(w.key_end)) : 0;
  if (kTrace) step_done(0, cycles_after(static_cast<uint32_t>(w.key_end)));

  extern __shared__ __align__(1024) unsigned char smem[];  // 1024: the copy engine's swizzle (kv_offset)
  unsigned char* pipeline = smem;
  T* q_tile = reinterpret_cast<T*>(smem + Smem::kQOffset);
  uint32_t* valid_masks = reinterpret_cast<uint32_t*>(smem + Smem::kMaskOffset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // TMA: stage s of this warp completes on mbarrier s of the warp (one arrival: the issuing lane's).
  const uint32_t my_barriers = smem_address(smem + Smem::kBarrierOffset) + warp * Cfg::kStages * 8;
  if constexpr (kTma) {
    if (lane == 0) {
      if (smem_address(smem) % 1024 != 0) __trap();  // the swizzle would not match kv_offset
#pragma unroll
      for (int stage = 0; stage < Cfg::kStages; ++stage) mbarrier_init(my_barriers + 8 * stage, 1);
    }
    __syncwarp();
  }

  T* my_stages = reinterpret_cast<T*>(pipeline) + size_t(warp) * Cfg::kStages * 2 * Cfg::kChunkElems;
  uint32_t* my_masks = valid_masks + warp * Cfg::kStages;
  auto k_stage = [&](int stage) { return my_stages + size_t(stage) * 2 * Cfg::kChunkElems; };
  auto v_stage = [&](int stage) { return k_stage(stage) + Cfg::kChunkElems; };

  const int chunks = w.key_end > w.key_begin ? static_cast<int>(ceil_div(w.key_end - w.chunk0, kChunk)) : 0;
  const int my_chunks = chunks > warp ? (chunks - warp + kWarps - 1) / kWarps : 0;
  auto chunk_key0 = [&](int n) { return w.chunk0 + int64_t(n * kWarps + warp) * kChunk; };
  // Paged caches whose pages hold whole chunks: the block-table entry of a warp's next chunk is
  // loaded while this chunk's copies are issued, so the copies never wait on the table (a
  // dependent round trip per chunk otherwise; docs/perf-log.md, CUDA decode, run 10); it is
  // range-checked only when used, one chunk later, so the warp does not wait on the load at
  // the check (docs/perf-log.md, CUDA decode, run 15).
  const bool blocks_ahead = a.p.kv_layout == core::KvLayout::kPaged && a.strided_chunks;
  auto look_up = [&](int n) {
    PagedChunk page;
    page.slot = a.block_div.div(static_cast<uint32_t>(chunk_key0(n)));  // core::paged_slot
    page.entry = core::paged_entry(a.p, w.b, page.slot);
    return page;
  };
  PagedChunk next_page = blocks_ahead && my_chunks > 0 ? look_up(0) : PagedChunk{};
  LaneCopies<kHeadDim> copies{};  // each lane's cp.async copies (the copy engine needs none)
  if constexpr (!kTma) copies = lane_copies<kHeadDim>(a.p, w, lane);
  auto issue = [&](int n) {
    const int stage = n % Cfg::kStages;
    const PagedChunk page = next_page;
    if (blocks_ahead && n + 1 < my_chunks) next_page = look_up(n + 1);
    uint32_t valid;
    if constexpr (kTma)
      valid = load_kv_chunk_tma<E, kHeadDim>(a, w, chunk_key0(n), page, k_stage(stage), v_stage(stage),
                                             my_barriers + 8 * stage, lane);
    else
      valid = load_kv_chunk<E, kHeadDim>(a, w, copies, chunk_key0(n), page, k_stage(stage), v_stage(stage), lane);
    if (lane == 0) my_masks[stage] = valid;
  };

  // Query loads first, then the first chunks: the query's latency and the chunks' overlap, and
  // the query does not queue behind the chunks.
  const QueryPairs<kHeadDim, kWarps> query = fetch_query<E, kHeadDim, kWarps>(a, w);
  if (kTrace) step_done(1, cycles());
  // The rows' bounds are first needed by the first chunk's scores: worked out after the prologue's
  // copies have left (step -1 below), so the stream starts ~1 us sooner.
  RowInfo rows[2];
  CommonKeys common;
  uint32_t q_frag[Cfg::kQFragments][4];
  WarpState<kHeadDim> st;
#pragma unroll
  for (int n = 0; n < kHeadDim / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) st.o[n][e] = 0.0f;
  if (kTrace) step_done(2, cycles());

  // The loop starts depth - 1 steps early: those steps only start copies (the prologue) and the
  // last of them stores the query tile, so the copy code exists once and is warm in the
  // instruction cache when the steady state begins.
  // Chunks in flight per warp while it waits (one fewer while it computes): one short of kStages
  // (2 at head dim 128 and 256, 3 at 64), as the stage the warp computes on is refilled only
  // after it. A fuller queue reads slower once the grid fills the GPU: the 4-warp kernel at 3 (two
  // CTAs per SM, 192 KB in flight each SM at head dim 128) ran 0.1-0.9% slower than at 2 at every
  // multi-wave shape, paged included (B 32 x 4k paged 16 181.8 -> 180.3 us), and at head dim 64 at
  // 4 than at 3 (B 8 x 8k 51.3 -> 50.8); the 8-warp CTA of split calls was 2-4% faster at 2 than at
  // 3, and 12-23% slower at 1. Head dim 64 calls of more than one wave (Args::short_queue) go one
  // shallower still, 2: Hq 64 B 64 x 8k 409.3 -> 397.1 us, B 64 x 16k 818.0 -> 797.3, where calls of
  // one wave were level or up to 0.5% slower at 2 (docs/perf-log.md, CUDA decode, runs 12 and 23).
  constexpr int kDepth = Cfg::kStages > 2 ? Cfg::kStages - 1 : Cfg::kStages;
  const int depth = Cfg::kStages > 3 && a.short_queue ? kDepth - 1 : kDepth;
  // Paged caches: the warps step through their chunks together. Every second chunk, once its
  // copies have left, a warp waits for the CTA's other warps (results do not change: the barrier
  // moves no data). Paged 16 ran 1.0-1.6% faster at hd 128 (B 8 x 8k to B 64 x 16k, Hq 64 B 16 x
  // 8k; the CTAs' durations spread less: the fastest CTA of Hq 64 B 16 x 8k ended at 165 us
  // instead of 145, the call ~3 us sooner); dense calls moved -0.6..+1.0%, and with fewer than 16
  // chunks per warp lockstep cost up to 1.8% (Hq 64 B 1 x 8k, 4 chunks per warp), so dense calls
  // and short loops run free (docs/perf-log.md, CUDA decode, run 21).
  const int lockstep_chunks =
      a.p.kv_layout == core::KvLayout::kPaged && chunks / kWarps >= kLockstepMinChunks ? chunks / kWarps : 0;
  for (int n = 1 - depth; n < my_chunks; ++n) {
    // Refill the stage chunk n - 1 used (every lane finished with it at the last __syncwarp).
    if (kTrace && n == 1 - depth) step_done(3, cycles());
    if (n + depth - 1 < my_chunks) issue(n + depth - 1);
    cp_async_commit();
    if (kTrace && n == 1 - depth) t_issued = global_ns(), step_done(4, cycles());
    if (n < 0) {
      if (n == -1) {
        if (kTrace) {
          t_loaded = global_ns_after(query.fingerprint());
        }
        rows[0] = row_info(a, w, lane / 4);
        rows[1] = row_info(a, w, lane / 4 + 8);
        common = common_keys(rows);
        if (kTrace) t_rows = global_ns_after(static_cast<uint32_t>(common.end));
        if (kTrace) step_done(5, cycles_after(static_cast<uint32_t>(common.end)));
        store_query<E, kHeadDim, kWarps>(a, query, q_tile, q_frag);
      }
      if (kTrace && n == -1) t_query = global_ns(), step_done(6, cycles());
      continue;
    }
    if (n < lockstep_chunks && n % 2 == 1) __syncthreads();  // every warp has chunks up to lockstep_chunks
    const int stage = n % Cfg::kStages;
    if constexpr (kTma) mbarrier_wait(my_barriers + 8 * stage, (n / Cfg::kStages) & 1);
    else if (depth == kDepth) cp_async_wait<kDepth - 1>();
    else cp_async_wait<kDepth - 2>();  // Args::short_queue (head dim 64 only: depth is kDepth elsewhere)
    __syncwarp();
    if (kTrace && n == 0) t_first = global_ns(), step_done(7, cycles());
    float s[2][4];
    uint32_t edge = edge_keys(chunk_key0(n), my_masks[stage], common);
    // TMA boxes hold whatever the tensor has at keys that are not valid: edge keys too (their
    // scores are masked and their value rows zeroed; load_kv_chunk_tma).
    if constexpr (kTma) edge |= ~my_masks[stage] & ((1u << kChunk) - 1u);
    chunk_scores<E, kHeadDim>(a, q_frag, q_tile, k_stage(stage), chunk_key0(n), my_masks[stage], edge, rows,
                              w.mask.diag, lane, s);
    chunk_accumulate<E, kHeadDim>(st, s, v_stage(stage), chunk_key0(n), edge, rows, lane);
    __syncwarp();
  }
  cp_async_wait<0>();
  // Trace: each warp's loop end (SM cycles, low 32 bits) in its first mask slot, free from here on.
  if (kTrace && lane == 0) my_masks[0] = static_cast<uint32_t>(cycles());
  allow_dependent_launch();
  const unsigned long long t_loop = kTrace ? global_ns() : 0;  // warp 0's loop end
  unsigned long long t_merged = 0;
  merge_and_store<E, kHeadDim, kWarps, kTrace>(a, w, st, reinterpret_cast<float*>(pipeline), lane, warp, t_merged);
  if (kTrace && threadIdx.x == 0) {
    const int64_t cta = blockIdx.y * int64_t(gridDim.x) + blockIdx.x;
    if (cta < a.trace_capacity / 2) {
      unsigned long long* rec = a.trace + kDecodeTraceWords * cta;
      rec[0] = sm_id() + 1;
      rec[1] = t_start;
      rec[2] = t_first;
      rec[3] = t_loop;
      rec[4] = global_ns();
      rec[5] = t_issued;
      rec[6] = t_query;
      rec[7] = t_work;
      rec[8] = t_rows;
      rec[9] = t_loaded;
      rec[10] = t_merged;
      int64_t first = INT64_MAX, last = INT64_MIN, total = 0;
      for (int k = 0; k < kWarps; ++k) {
        const int64_t end = static_cast<int32_t>(valid_masks[k * Cfg::kStages] - valid_masks[0]);
        first = min(first, end), last = max(last, end), total += end;
      }
      rec[11 + kPrologueSteps] = static_cast<unsigned long long>(last - first);
      rec[12 + kPrologueSteps] = static_cast<unsigned long long>(last - total / kWarps);
    }
  }
}

// Merges the splits of one (query row, head) per warp. The partial lse values are the logits of
// normalised partial outputs: out = sum_s e^(lse_s - M) O_s / Z with Z = sum_s e^(lse_s - M) and
// M their max, then the sink joins Z once (core::SoftmaxRow). Lane l holds columns
// l * kHeadDim / 32 onwards of every partial row and the lse of splits l, l + 32, ...; every load
// is independent of the others and issued together, so a row pays about one memory latency. No
// block barriers: a warp per row ended its call 0.2-0.3 us sooner than a 128-thread CTA per row
// with four block reductions (Hq 64 B 1 x 8k; docs/perf-log.md, CUDA decode, run 19).
// Reductions run in a fixed order (a shuffle tree, then the splits in order): the result does not
// depend on timing.
constexpr int kCombineWarps = 4;  // rows per CTA

template <int kPerLane>
__device__ __forceinline__ void load_row_piece(const float* src, float (&dst)[kPerLane]) {
  if constexpr (kPerLane % 4 == 0) {
#pragma unroll
    for (int e = 0; e < kPerLane; e += 4) {
      const float4 v = reinterpret_cast<const float4*>(src)[e / 4];
      dst[e] = v.x, dst[e + 1] = v.y, dst[e + 2] = v.z, dst[e + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int e = 0; e < kPerLane; e += 2) {
      const float2 v = reinterpret_cast<const float2*>(src)[e / 2];
      dst[e] = v.x, dst[e + 1] = v.y;
    }
  }
}

// kTrace as the attention kernel's: the run-time test of Args::trace cost split calls ~0.2 us.
template <class E, int kHeadDim, bool kTrace>
__global__ void __launch_bounds__(kCombineWarps * 32) combine_splits_kernel(const Args a) {
  using T = typename E::T;
  constexpr int kPerLane = kHeadDim / 32;  // floats of a partial row per lane: 2, 4 or 8
  constexpr int kBatch = 64 / kPerLane;    // partial rows in flight per lane (64 registers)
  constexpr int kLsePerLane = kMaxSplits / 32;
  __shared__ float weights[kCombineWarps][kMaxSplits];
  const core::Problem& p = a.p;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t item = int64_t(blockIdx.x) * kCombineWarps + warp, b = blockIdx.y;
  if (item >= p.seqlen_q * p.heads_q) return;
  const core::SeqView s = core::sequence(p, b);
  const QuotientRemainder ih = a.heads_q_div.divmod(static_cast<uint32_t>(item));  // item < 2^31: decode_tier_supports
  const int64_t i = ih.quotient, h = ih.remainder;
  if (i >= s.sq) return;
  const int64_t r = (p.q_layout == core::QLayout::kVarlen ? 0 : b * p.seqlen_q) + s.q_row0 + i;
  auto slot = [&](int split) { return (int64_t(split) * a.q_rows + r) * p.heads_q + h; };
  const int n = a.num_splits;
  wait_for_primary_grid();  // the partials of every split are written
  const unsigned long long t_start = kTrace ? global_ns() : 0;

  float lse[kLsePerLane];
#pragma unroll
  for (int j = 0; j < kLsePerLane; ++j) lse[j] = j * 32 + lane < n ? a.partial_lse[slot(j * 32 + lane)] : -INFINITY;
  float o[kBatch][kPerLane];
  auto load_batch = [&](int first) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u)  // unconditional, at a clamped split (n >= 2): loads behind branches wait one by one
      load_row_piece<kPerLane>(a.partial_out + slot(min(first + u, n - 1)) * kHeadDim + lane * kPerLane, o[u]);
  };
  load_batch(0);

  core::SoftmaxRow<float> total;
#pragma unroll
  for (int j = 0; j < kLsePerLane; ++j) total.max = fmaxf(total.max, lse[j]);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) total.max = fmaxf(total.max, __shfl_xor_sync(0xffffffffu, total.max, offset));
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kLsePerLane; ++j) {
    const float w = lse[j] == -INFINITY ? 0.0f : __expf(lse[j] - total.max);  // an empty split weighs 0
    if (j * 32 + lane < n) weights[warp][j * 32 + lane] = w;
    sum += w;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  total.sum = sum;
  __syncwarp();

  float acc[kPerLane] = {};
  for (int first = 0; first < n; first += kBatch) {
    if (first != 0) load_batch(first);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const float w = first + u < n ? weights[warp][first + u] : 0.0f;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) acc[e] += w * o[u][e];
    }
  }
  const float sink_factor = p.sinks != nullptr ? total.add_sink(p.sinks[h]) : 1.0f;
  const float scale = sink_factor * total.inv_sum();
  T* out = static_cast<T*>(p.out.mutable_ptr()) + core::out_offset(p, s, b, i, h);
#pragma unroll
  for (int e = 0; e < kPerLane; ++e)
    if (lane * kPerLane + e < p.head_dim_v) out[lane * kPerLane + e] = from_float<T>(acc[e] * scale);
  if (lane == 0 && p.lse != nullptr) p.lse[core::lse_offset(p, s, b, i, h)] = total.lse();
  if (kTrace && lane == 0) {
    // The second half of the buffer: one (start, end) per combine warp.
    const int64_t first = kDecodeTraceWords * int64_t(a.trace_capacity / 2);
    const int64_t rec = (blockIdx.y * int64_t(gridDim.x) + blockIdx.x) * kCombineWarps + warp;
    if (first + 2 * rec + 1 < kDecodeTraceWords * int64_t(a.trace_capacity)) {
      a.trace[first + 2 * rec] = t_start;
      a.trace[first + 2 * rec + 1] = global_ns();
    }
  }
}

// ---- the fp32 kernel (fp32 K/V: SIMT, exact to fp32 rounding) ------------------------------------

#include "cuda/decode_fp32.cuh"

// ---- host side ----------------------------------------------------------------------------------

// CTAs of one kernel instantiation resident on the whole device at once, or 0 when its shared
// memory exceeds what a CTA may have on this device (the 8-warp CTA off Hopper); raises the
// kernel's dynamic shared-memory limit (resident_blocks).
template <class E, int kHeadDim, int kWarps, bool kTma = false, bool kTrace = false>
int resident_ctas(int device) {
  return resident_blocks<split_kv_attention_kernel<E, kHeadDim, kWarps, kTma, kTrace>>(
      device, kWarps * 32, static_cast<int>(CtaSmem<kHeadDim, kWarps>::kBytes));
}

// The TMA box of a K or V operand (Args::k_map): dims {64 dims, heads, rows, sequences or blocks,
// kHeadDim / 64 slabs}, a box of {64, 1, kChunk, 1, all slabs} in the 128-byte swizzle that
// kv_offset reads. Rows: a block's slots (paged), the cache's capacity (dense cache) or seqlen_k
// (batched). False when the driver cannot encode it.
bool tma_map(const core::Problem& p, const core::Operand& op, int head_dim, CUtensorMap* map) {
  const EncodeTiled encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  int64_t rows = p.seqlen_k, batches = p.batch;
  if (p.kv_layout == core::KvLayout::kPaged) rows = p.block_size, batches = p.num_blocks;
  if (p.kv_layout == core::KvLayout::kDenseCache) rows = p.cache_capacity, batches = p.cache_batch;
  // A dimension of one entry is never stepped: any valid stride does.
  auto stride = [](int64_t extent, int64_t elements) { return cuuint64_t(extent > 1 ? elements * 2 : 128); };
  const cuuint64_t dims[5] = {64, cuuint64_t(p.heads_kv), cuuint64_t(rows), cuuint64_t(batches),
                              cuuint64_t(head_dim / 64)};
  const cuuint64_t strides[4] = {stride(p.heads_kv, op.head_stride), stride(rows, op.row_stride),
                                 stride(batches, op.batch_stride), 128};
  const cuuint32_t box[5] = {64, 1, kChunk, 1, cuuint32_t(head_dim / 64)};
  const cuuint32_t steps[5] = {1, 1, 1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 5, const_cast<void*>(op.ptr), dims, strides, box, steps,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Minimum keys per split: below ~256 keys (128 KB of K/V at head dim 128) the partial write and
// the combine cost more than the extra parallelism brings.
constexpr int64_t kMinKeysPerSplit = 256;

// num_splits = 0: enough splits that the grid fills the GPU at small batch. Among the split
// counts that keep >= kMinKeysPerSplit keys per split, take the smallest whose wave efficiency
// (CTAs over whole waves of resident CTAs) is within 5% of the best, so large batches keep one
// split and batch 1 spreads over every SM.
int choose_splits(int64_t work, int64_t max_keys, int resident) {
  const int64_t limit = std::clamp<int64_t>(max_keys / kMinKeysPerSplit, 1, kMaxSplits);
  auto efficiency = [&](int64_t n) {
    const double ctas = double(work) * n;
    return ctas / (std::ceil(ctas / resident) * resident);
  };
  if (work >= resident) return 1;  // the batch alone fills the GPU: splits would only add combine work
  double best = 0.0;
  for (int64_t n = 1; n <= limit; ++n) best = std::max(best, efficiency(n));
  for (int64_t n = 1; n <= limit; ++n)
    if (efficiency(n) >= 0.95 * best) return static_cast<int>(n);
  return 1;
}

// Launches with programmatic dependent launch (device_utils.cuh): the kernel may start while the
// previous one on the stream drains and waits for it on the device, which hides the launch latency
// between the steps of a decode call.
void launch_overlapped(void (*kernel)(Args), dim3 grid, int threads, size_t smem, cudaStream_t stream, const Args& a,
                       const char* what) {
  check_cuda(launch_programmatic(kernel, grid, threads, smem, stream, a), what);
}

DecodeDebug g_debug;

// Query tiles of `tile_rows` packed rows x sequences x kv heads: the CTAs of one split.
int64_t split_work(const core::Problem& p, int tile_rows) {
  return p.batch * p.heads_kv * ceil_div(p.seqlen_q * p.group, tile_rows);
}

// The split count of a call for a kernel with `resident` CTAs on the device at once: the caller's
// num_splits, or the heuristic's; at most kMaxSplits (as flash-attn) and no more than there are
// 16-key chunks. seqlen_k is the capacity / upper bound: lengths on the device stay there.
int split_count(const core::Problem& p, int resident, int tile_rows) {
  const int64_t max_keys = p.seqlen_k;
  const int splits = p.num_splits > 0 ? p.num_splits : choose_splits(split_work(p, tile_rows), max_keys, resident);
  return static_cast<int>(
      std::clamp<int64_t>(splits, 1, std::min<int64_t>(kMaxSplits, std::max<int64_t>(1, ceil_div(max_keys, kChunk)))));
}

// Whether a call's stages should be filled by the tensor copy engine (where tma_eligible allows),
// else by cp.async. Dense K/V at head dim 128 and 256: TMA; paged caches and head dim 64: cp.async
// (docs/perf-log.md, CUDA decode, run 21). The variants tma and copy force one or the other.
bool wants_tma(const core::Problem& p, int head_dim) {
  if (g_debug.variant == kDecodeTma) return true;
  if (g_debug.variant == kDecodeCopy) return false;
  return head_dim >= 128 && p.kv_layout != core::KvLayout::kPaged;
}

// Calls the copy engine can serve (Args::k_map): whole 16-key chunks one row stride apart, K and V
// rows exactly kHeadDim wide (the box has no partial slab), a layout with a map (not varlen K).
bool tma_eligible(const core::Problem& p, const Args& a, int head_dim) {
  return a.vector_kv && a.strided_chunks && p.head_dim_qk == head_dim && p.head_dim_v == head_dim &&
         p.kv_layout != core::KvLayout::kVarlen;
}

// An attention kernel with its shared-memory limit raised (resident_ctas).
template <class E, int kHeadDim, int kWarps, bool kTma, bool kTrace>
auto prepared_kernel(int device) -> void (*)(Args) {
  resident_ctas<E, kHeadDim, kWarps, kTma, kTrace>(device);
  return split_kv_attention_kernel<E, kHeadDim, kWarps, kTma, kTrace>;
}

// The attention kernel of a call: its copy path, traced or not (bf16 only).
template <class E, int kHeadDim, int kWarps>
auto attention_kernel(bool tma, bool traced, int device) -> void (*)(Args) {
  if constexpr (std::is_same_v<E, BFloat16>) {
    if (traced)
      return tma ? prepared_kernel<E, kHeadDim, kWarps, true, true>(device)
                 : prepared_kernel<E, kHeadDim, kWarps, false, true>(device);
  }
  return tma ? prepared_kernel<E, kHeadDim, kWarps, true, false>(device)
             : prepared_kernel<E, kHeadDim, kWarps, false, false>(device);
}

// The Args of a call that do not depend on the kernel's CTA, for query tiles of `tile_rows` packed
// rows and K/V elements of `element_bytes`; the split count (and its divisor) is the caller's.
Args call_args(const core::Problem& p, int tile_rows, int element_bytes) {
  Args a{};
  a.p = p;
  // Traced kernels exist for bf16 only (the benchmark's type; kTrace): other calls run untraced.
  a.trace = p.dtype == DType::kBFloat16 ? g_debug.trace : nullptr;
  a.trace_capacity = g_debug.trace_capacity;
  a.rotate_q = p.rotary_dim > 0;
  a.q_pairs = p.head_dim_qk % 2 == 0 && reinterpret_cast<uintptr_t>(p.q.ptr) % 4 == 0 && p.q.batch_stride % 2 == 0 &&
              p.q.row_stride % 2 == 0 && p.q.head_stride % 2 == 0;
  a.q_rows = p.q_layout == core::QLayout::kVarlen ? p.total_q : p.batch * p.seqlen_q;
  a.m_tiles = ceil_div(p.seqlen_q * p.group, tile_rows);
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const int per_copy = 16 / element_bytes;  // elements of one 16-byte copy
  a.strided_chunks = p.kv_layout != core::KvLayout::kPaged || p.block_size % kChunk == 0;
  a.plain_scores = !(p.softcap > 0.0f) && p.alibi_slopes == nullptr;
  a.vector_kv = p.head_dim_qk % per_copy == 0 && p.head_dim_v % per_copy == 0 && aligned(p.k.ptr) && aligned(p.v.ptr);
  for (const core::Operand* op : {&p.k, &p.v})
    a.vector_kv = a.vector_kv && op->batch_stride % per_copy == 0 && op->row_stride % per_copy == 0 &&
                  op->head_stride % per_copy == 0;
  a.tiles_div = FastDiv(static_cast<uint32_t>(a.m_tiles));
  a.heads_kv_div = FastDiv(static_cast<uint32_t>(p.heads_kv));
  a.heads_q_div = FastDiv(static_cast<uint32_t>(p.heads_q));
  a.group_div = FastDiv(static_cast<uint32_t>(p.group));
  a.block_div = FastDiv(p.kv_layout == core::KvLayout::kPaged ? static_cast<uint32_t>(p.block_size) : 1u);
  return a;
}

// Launches `kernel` over `work` x a.num_splits CTAs and, with splits, the combine (element type
// E) after it; the partials come from the caller's allocator when it has one
// (ExecContext::scratch), else the pool.
template <class E, int kHeadDim>
void launch_with_combine(Args& a, void (*kernel)(Args), int64_t work, int threads, size_t smem, int device,
                         cudaStream_t stream) {
  const core::Problem& p = a.p;
  const int splits = a.num_splits;
  void* scratch = nullptr;
  bool pooled = false;
  if (splits > 1) {
    const size_t slots = size_t(splits) * a.q_rows * p.heads_q;
    const size_t bytes = slots * (kHeadDim + 1) * sizeof(float);
    if (p.scratch.allocate != nullptr) scratch = p.scratch.allocate(bytes, stream, p.scratch.user);
    if (scratch == nullptr) {
      check_cuda(cudaMallocFromPoolAsync(&scratch, bytes, scratch_pool(device), stream), "cudaMallocFromPoolAsync");
      pooled = true;
    }
    a.partial_out = static_cast<float*>(scratch);
    a.partial_lse = a.partial_out + slots * kHeadDim;
  }

  const dim3 grid(static_cast<unsigned>(work), static_cast<unsigned>(splits));
  launch_overlapped(kernel, grid, threads, smem, stream, a, "split_kv_attention_kernel launch");
  if (splits > 1) {
    const dim3 combine_grid(static_cast<unsigned>(ceil_div(p.seqlen_q * p.heads_q, kCombineWarps)),
                            static_cast<unsigned>(p.batch));
    auto combine = combine_splits_kernel<E, kHeadDim, false>;
    if constexpr (std::is_same_v<E, BFloat16>)
      if (a.trace != nullptr) combine = combine_splits_kernel<E, kHeadDim, true>;
    launch_overlapped(combine, combine_grid, kCombineWarps * 32, 0, stream, a,
                      "combine_splits_kernel launch");
    if (pooled) check_cuda(cudaFreeAsync(scratch, stream), "cudaFreeAsync");
    else if (p.scratch.release != nullptr) p.scratch.release(scratch, stream, p.scratch.user);
  }
}

template <class E, int kHeadDim, int kWarps>
void launch_attention(const core::Problem& p, cudaStream_t stream) {
  Args a = call_args(p, kRows, 2);
  const int64_t work = split_work(p, kRows);
  if (work == 0 || a.q_rows == 0) return;

  const int device = current_device();
  // resident_ctas also raises the kernel's shared-memory limit.
  const int resident = resident_ctas<E, kHeadDim, kWarps>(device);
  const int splits = split_count(p, resident, kRows);
  a.num_splits = splits;
  a.short_queue = Tile<kHeadDim>::kStages > 3 && work * splits > resident;
  a.splits_div = FastDiv(static_cast<uint32_t>(splits));
  const bool tma = wants_tma(p, kHeadDim) && tma_eligible(p, a, kHeadDim) &&
                   built_for_tma<split_kv_attention_kernel<E, kHeadDim, kWarps, true, false>>() &&
                   tma_map(p, p.k, kHeadDim, &a.k_map) && tma_map(p, p.v, kHeadDim, &a.v_map);
  if (tma) ++g_debug.tma_calls;
  launch_with_combine<E, kHeadDim>(a, attention_kernel<E, kHeadDim, kWarps>(tma, a.trace != nullptr, device), work,
                                   kWarps * 32, CtaSmem<kHeadDim, kWarps>::kBytes, device, stream);
}

// fp32 K/V (fp32_decode_kernel, decode_fp32.cuh): the same grid over query tiles of kFp32Rows
// packed rows, the same split heuristic and combine.
template <int kHeadDim>
void launch_fp32_attention(const core::Problem& p, cudaStream_t stream) {
  using Cta = Fp32Cta<kHeadDim>;
  Args a = call_args(p, kFp32Rows, 4);
  const int64_t work = split_work(p, kFp32Rows);
  if (work == 0 || a.q_rows == 0) return;
  const int device = current_device();
  // Also raises the kernel's shared-memory limit; 0 where it does not fit (decode_fp32_fits).
  const int resident =
      resident_blocks<fp32_decode_kernel<kHeadDim>>(device, Cta::kWarps * 32, static_cast<int>(Cta::kBytes));
  if (resident == 0)
    throw Error("cuda-decode's fp32 kernel needs " + std::to_string(Cta::kBytes) +
                " bytes of shared memory per block, more than this device allows");
  a.num_splits = split_count(p, resident, kFp32Rows);
  a.splits_div = FastDiv(static_cast<uint32_t>(a.num_splits));
  launch_with_combine<Float32, kHeadDim>(a, fp32_decode_kernel<kHeadDim>, work, Cta::kWarps * 32, Cta::kBytes, device,
                                         stream);
}

// Which kernel serves a call. At head dim 128, where its 213 KB fit (Hopper), a call that one
// 8-warp CTA per SM would split (a small batch) runs that CTA with two chunks per warp in flight:
// 2-4% faster than two 4-warp CTAs per SM at B 1 x 32k, B 8 x 8k and Hq 64 B 2-8 x 32k on an
// H100 (docs/perf-log.md, CUDA decode, run 12). So does a call whose CTAs fit one wave of it
// unsplit: Hq 64 B 16 x 8k ran 178.7 us as 128 8-warp CTAs against 184.2 us as 256 4-warp CTAs
// of two splits and their combine (x 32k: 696.6 against 704.5 us; run 17). Larger calls run two
// 4-warp CTAs per SM, kStages chunks deep per warp: with one split over several waves the 8-warp
// CTA was level or 0.3% slower dense (B 32 x 4k, B 64 x 16k). The variants `pair` (the 4-warp CTA
// for every call) and `wide` (the 8-warp CTA wherever it fits) keep the alternatives measurable.
template <class E, int kHeadDim>
void launch_for_variant(const core::Problem& p, cudaStream_t stream) {
  if constexpr (kHeadDim == 128) {
    const int wide_resident = resident_ctas<E, kHeadDim, kWideWarps>(current_device());  // 0: does not fit
    const bool wide =
        g_debug.variant == kDecodeWide || split_work(p, kRows) <= wide_resident ||
        split_count(p, wide_resident, kRows) > 1;
    if (g_debug.variant != kDecodePair && wide_resident > 0 && wide) {
      launch_attention<E, kHeadDim, kWideWarps>(p, stream);
      return;
    }
  }
  launch_attention<E, kHeadDim, kNarrowWarps>(p, stream);
}

template <class E>
void launch_for_head_dim(const core::Problem& p, cudaStream_t stream) {
  const int64_t d = std::max(p.head_dim_qk, p.head_dim_v);
  if (d <= 64) launch_for_variant<E, 64>(p, stream);
  else if (d <= 128) launch_for_variant<E, 128>(p, stream);
  else launch_for_variant<E, 256>(p, stream);
}

void attend(const core::Problem& p, cudaStream_t stream) {
  if (p.dtype == DType::kFloat32) {
    const int64_t d = std::max(p.head_dim_qk, p.head_dim_v);
    if (d <= 64) launch_fp32_attention<64>(p, stream);
    else if (d <= 128) launch_fp32_attention<128>(p, stream);
    else launch_fp32_attention<256>(p, stream);
    return;
  }
  dispatch_half_types(p.dtype, [&](auto e) { launch_for_head_dim<decltype(e)>(p, stream); });
}

void require_served(const core::Problem& p, bool is_kvcache) {
  if (decode_tier_supports(p, is_kvcache, nullptr)) return;  // no description text on the hot path
  std::string why;
  decode_tier_supports(p, is_kvcache, &why);
  throw Error(why);
}

}  // namespace
}  // namespace decode

void decode_kvcache(const core::Problem& p, void* stream) {
  decode::require_served(p, true);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  launch_kv_append(p, s);  // the attention below reads the appended keys: same stream, in order
  decode::attend(p, s);
}

bool decode_fp32_fits(int64_t head_dim) {
  const size_t bytes = head_dim <= 64    ? decode::Fp32Cta<64>::kBytes
                       : head_dim <= 128 ? decode::Fp32Cta<128>::kBytes
                                         : decode::Fp32Cta<256>::kBytes;
  return bytes <= static_cast<size_t>(shared_memory_optin());
}

void decode_set_debug(const DecodeDebug& debug) { decode::g_debug = debug; }
DecodeDebug decode_debug() { return decode::g_debug; }

void decode_forward(const core::Problem& p, void* stream) {
  decode::require_served(p, false);
  decode::attend(p, static_cast<cudaStream_t>(stream));
}

}  // namespace flashsdpa::cuda
