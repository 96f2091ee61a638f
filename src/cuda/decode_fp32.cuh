// cuda-decode's fp32 kernel: fp32 KV caches decoded in exact fp32 arithmetic (FFMA, no TF32:
// SPEC §6 holds fp32 to fp32 rounding) at the rate the memory delivers them. Part of
// decode_attention.cu (included there, inside its namespaces): it shares that file's CTA
// geometry (cta_work, row_info), its merge (finish_rows), the split combine and the host side.
//
// Why SIMT suffices: decoding does few FLOPs per byte. A key is 1 KB of fp32 K and V at head dim
// 128 and, for a query tile of 8 packed rows, 2 x 8 x 128 = 2k FMAs: 16 cycles of an SM's FMA
// pipes against the ~80 cycles its share of the memory bandwidth (3 TB/s over 132 SMs) takes to
// deliver the 1 KB. What limits it is issue latency: with the scores' shuffles, the softmax and
// the copies a key costs ~160 instructions in its warp, so the warps per scheduler decide. Chunks
// of 16 keys (the tensor-core kernel's) left room for one warp per scheduler: 3.3 cycles per
// issued instruction, 1.69 TB/s at Hq 32 B 1 x 32k on an H100. Chunks of 8 keys fit two in the
// same shared memory: 2.81 TB/s there, 2.97-3.05 TB/s at B 32 x 4k and B 64 x 16k (docs/perf-log.md,
// fp32 KV caches).
//
// Work decomposition as the tensor-core kernel: one CTA per (sequence, kv head, query tile, key
// split), warp w of W takes chunks w, w + W, ... through its own two-stage cp.async pipeline. A
// query tile is kFp32Rows = 8 packed rows (GQA group 8 at decode fills one). Lane l holds dims
// l * kDims .. + kDims - 1 of all 8 rows (kDims = kHeadDim / 32), so Q and O live in registers
// and each lane reads only its own dims of every K and V row:
//   scores   per key, the lane's share of the 8 dot products (an fmaf chain over its dims each),
//            then a reduce-scatter over the warp (rounds 16, 8, 4 halve the rows a lane keeps,
//            rounds 2 and 1 add the rest): lane l ends with the score of row l / 4, the four
//            lanes of a row bit-identical;
//   softmax  each lane over the chunk's scores of its row, no shuffles;
//   P V      the probabilities through shared memory [key][row]; per key a lane reads the 8 rows'
//            probabilities (two broadcast float4s) and its dims of V.
// A chunk in which a row masks a key that another row sees (causal or window edges of a
// multi-row tile) accumulates with a test per row and key instead, so a NaN or Inf in that key's
// value row never reaches the masked row (SPEC §2); every other key a row does not see was never
// read and sits as zeros.
#pragma once

constexpr int kFp32Rows = 8;   // packed query rows per CTA
constexpr int kFp32Chunk = 8;  // keys per warp step

template <int kHeadDim_>
struct Fp32Cta {
  static constexpr int kHeadDim = kHeadDim_;
  // Two stages of 8 KB per warp at head dim 128: 8 warps hold up to 128 KB in flight, one CTA
  // per SM (as the tensor-core kernel's 8-warp CTA). Head dim 256 stages are 16 KB, so 4 warps.
  static constexpr int kWarps = kHeadDim <= 128 ? 8 : 4;
  static constexpr int kStages = 2;
  static constexpr int kDims = kHeadDim / 32;             // dims per lane: 2, 4 or 8
  static constexpr int kPieces = kHeadDim / 4;            // 16-byte pieces per row
  static constexpr int kCopiesPerLane = kFp32Chunk * kPieces / 32;
  static constexpr int kChunkFloats = kFp32Chunk * kHeadDim;  // K or V rows [kFp32Chunk][kHeadDim]
  static constexpr int kStageFloats = 2 * kChunkFloats;
  static constexpr int kRegionFloats = kStages * kStageFloats;  // a warp's stages; its merge state after the loop
  static constexpr int kOPitch = kHeadDim + 4;
  static constexpr size_t kQOffset = size_t(kWarps) * kRegionFloats * sizeof(float);  // Q rows [kFp32Rows][kHeadDim]
  static constexpr size_t kPOffset = kQOffset + size_t(kFp32Rows) * kHeadDim * sizeof(float);
  static constexpr size_t kMaskOffset = kPOffset + size_t(kWarps) * kFp32Chunk * kFp32Rows * sizeof(float);
  static constexpr size_t kBytes = kMaskOffset + size_t(kWarps) * kStages * sizeof(uint32_t);
  static_assert(kCopiesPerLane * 32 == kFp32Chunk * kPieces, "a chunk must split evenly over a warp");
  static_assert(kFp32Rows * (kOPitch + 2) <= kRegionFloats, "a warp's state fits in its stages");
  static_assert(kFp32Rows == 8, "the reduce-scatter (fp32_row_score) leaves row lane / 4 in each lane");
};

template <int kDims>
__device__ __forceinline__ void load_dims(const float* src, float (&dst)[kDims]) {
  if constexpr (kDims == 2) {
    const float2 v = *reinterpret_cast<const float2*>(src);
    dst[0] = v.x, dst[1] = v.y;
  } else {
#pragma unroll
    for (int e = 0; e < kDims; e += 4) {
      const float4 v = *reinterpret_cast<const float4*>(src + e);
      dst[e] = v.x, dst[e + 1] = v.y, dst[e + 2] = v.z, dst[e + 3] = v.w;
    }
  }
}

// ---- query tile ---------------------------------------------------------------------------------

// The tile's rows into registers: zeros for padded rows and dims past Dqk. Loads unconditional
// at clamped indices (a padded row reads row 0 of its sequence), issued together, so the tile
// costs one memory round trip (behind conditions they went one by one: tensor-core kernel,
// fetch_query).
template <int kHeadDim>
struct Fp32QueryLoads {
  static constexpr int kPerThread = kFp32Rows * kHeadDim / (Fp32Cta<kHeadDim>::kWarps * 32);
  float x[kPerThread];
};

template <int kHeadDim>
__device__ Fp32QueryLoads<kHeadDim> fetch_fp32_query(const Args& a, const CtaWork& w) {
  using Loads = Fp32QueryLoads<kHeadDim>;
  constexpr int kThreads = Fp32Cta<kHeadDim>::kWarps * 32;
  const core::Problem& p = a.p;
  const float* q = static_cast<const float*>(p.q.ptr);
  Loads loads;
#pragma unroll
  for (int n = 0; n < Loads::kPerThread; ++n) {
    const int idx = threadIdx.x + n * kThreads, r = idx / kHeadDim, d = idx % kHeadDim;
    const int64_t packed = w.row0 + r;
    const bool real = packed < w.packed_rows && d < p.head_dim_qk;
    const PackedRow at = packed_row(a, w.hkv, packed < w.packed_rows ? packed : w.row0);
    loads.x[n] = q[core::q_offset(p, w.s, w.b, at.i, at.h) + (real ? d : 0)];
    if (!real) loads.x[n] = 0.0f;
  }
  return loads;
}

// Stores the fetched rows, rotates them where the call has rotary tables (core::rotary_apply, in
// fp32 as the reference) and leaves the lane's dims of every row in q, in slot order.
template <int kHeadDim>
__device__ void store_fp32_query(const Args& a, const CtaWork& w, const Fp32QueryLoads<kHeadDim>& loads, float* q_rows,
                                 float (&q)[kFp32Rows][Fp32Cta<kHeadDim>::kDims], int lane) {
  using Cta = Fp32Cta<kHeadDim>;
  constexpr int kThreads = Cta::kWarps * 32;
  const core::Problem& p = a.p;
#pragma unroll
  for (int n = 0; n < Fp32QueryLoads<kHeadDim>::kPerThread; ++n) q_rows[threadIdx.x + n * kThreads] = loads.x[n];
  __syncthreads();
  if (a.rotate_q) {
    const float* cos_table = static_cast<const float*>(p.rotary_cos);
    const float* sin_table = static_cast<const float*>(p.rotary_sin);
    for (int r = threadIdx.x; r < kFp32Rows; r += kThreads) {
      const int64_t packed = w.row0 + r;
      if (packed >= w.packed_rows) continue;
      const int64_t table_row = core::rotary_row(p, core::rotary_q_position(p, w.s, packed_row(a, w.hkv, packed).i));
      if (table_row < 0) continue;  // no table row: left unrotated, never read out of bounds
      core::rotary_apply(q_rows + r * kHeadDim, cos_table + table_row * p.rotary_row_stride,
                         sin_table + table_row * p.rotary_row_stride, p.rotary_dim, p.rotary_interleaved);
    }
    __syncthreads();
  }
  // Slot i holds row i ^ (lane / 4), the order fp32_row_score reduces in.
#pragma unroll
  for (int i = 0; i < kFp32Rows; ++i)
    load_dims<Cta::kDims>(q_rows + (i ^ (lane / 4)) * kHeadDim + lane * Cta::kDims, q[i]);
}

// ---- K/V chunks ---------------------------------------------------------------------------------

// The block-table entry of key key0 + lane of a chunk (lanes below kFp32Chunk), loaded a chunk
// ahead of its copies so they do not wait on the table (as the tensor-core kernel, run 10); -1
// where the key is outside the split or the cache is not paged. Checked only where used (load_fp32_chunk).
__device__ __forceinline__ int32_t fp32_chunk_entry(const Args& a, const CtaWork& w, int64_t key0, int lane) {
  const core::Problem& p = a.p;
  const int64_t j = key0 + lane % kFp32Chunk;
  if (p.kv_layout != core::KvLayout::kPaged || lane >= kFp32Chunk || j < w.key_begin || j >= w.key_end) return -1;
  return core::paged_entry(p, w.b, a.block_div.div(static_cast<uint32_t>(j)));  // keys < 2^31: decode_tier_supports
}

// Starts the copy of one chunk of K and V into the stage's rows [kFp32Chunk][kHeadDim]: lane
// l < kFp32Chunk resolves key key0 + l (any layout, pages of any size; `entry` from
// fp32_chunk_entry), the copying lanes take the row offsets by shuffle. Keys outside [key_begin, key_end) or whose
// block is out of range read nothing and land as zeros; the returned bit mask says which keys
// are real. Rows that are not 16-byte copyable go element by element.
template <int kHeadDim>
__device__ uint32_t load_fp32_chunk(const Args& a, const CtaWork& w, int64_t key0, int32_t entry, float* k_dst,
                                    float* v_dst, int lane) {
  using Cta = Fp32Cta<kHeadDim>;
  const core::Problem& p = a.p;
  const int64_t j = key0 + lane % kFp32Chunk;
  int64_t k_row = -1, v_row = -1;
  if (lane < kFp32Chunk && j >= w.key_begin && j < w.key_end) {
    if (p.kv_layout == core::KvLayout::kPaged) {
      const int64_t block = core::paged_checked_block(p, entry);
      if (block >= 0) {
        const int64_t slot = a.block_div.div(static_cast<uint32_t>(j));
        k_row = core::paged_row(p, p.k, block, slot, j);
        v_row = core::paged_row(p, p.v, block, slot, j);
      }
    } else {
      k_row = core::key_offset(p, w.s, p.k, w.b, j);
      v_row = core::key_offset(p, w.s, p.v, w.b, j);
    }
  }
  const auto [valid, k_base, v_base] = chunk_rows(p, w.hkv, k_row, v_row, kFp32Chunk);
  const float* k = static_cast<const float*>(p.k.ptr);
  const float* v = static_cast<const float*>(p.v.ptr);
  const int dqk = static_cast<int>(p.head_dim_qk), dv = static_cast<int>(p.head_dim_v);
  if (a.vector_kv) {
    const uint64_t policy = evict_first_policy();
#pragma unroll
    for (int c = 0; c < Cta::kCopiesPerLane; ++c) {
      const int idx = c * 32 + lane, key = idx / Cta::kPieces, d = (idx % Cta::kPieces) * 4;
      const int64_t k_src = __shfl_sync(0xffffffffu, k_base, key);
      const int64_t v_src = __shfl_sync(0xffffffffu, v_base, key);
      const bool k_ok = k_src >= 0 && d < dqk, v_ok = v_src >= 0 && d < dv;
      cp_async_16_streaming(smem_address(k_dst + key * kHeadDim + d), k_ok ? k + k_src + d : k, k_ok ? 16 : 0, policy);
      cp_async_16_streaming(smem_address(v_dst + key * kHeadDim + d), v_ok ? v + v_src + d : v, v_ok ? 16 : 0, policy);
    }
    return valid;
  }
#pragma unroll 1
  for (int c = 0; c < Cta::kCopiesPerLane; ++c) {
    const int idx = c * 32 + lane, key = idx / Cta::kPieces, d = (idx % Cta::kPieces) * 4;
    const int64_t k_src = __shfl_sync(0xffffffffu, k_base, key);
    const int64_t v_src = __shfl_sync(0xffffffffu, v_base, key);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      k_dst[key * kHeadDim + d + e] = k_src >= 0 && d + e < dqk ? k[k_src + d + e] : 0.0f;
      v_dst[key * kHeadDim + d + e] = v_src >= 0 && d + e < dv ? v[v_src + d + e] : 0.0f;
    }
  }
  return valid;
}

// ---- one chunk ----------------------------------------------------------------------------------

// The full dot products of the 8 rows from each lane's shares `x`: returns the score of row
// lane / 4. Rounds 16, 8 and 4 each send the half of the rows the lane does not keep and add what
// arrives for the half it keeps; rounds 2 and 1 sum the last four lanes of a row. x is in the
// lane's slot order (slot i holds row i ^ (lane / 4), store_fp32_query): the rows a lane keeps
// are always its low slots and its partner's high slots hold the same rows, so no round selects
// (14 fewer instructions per key than picking the halves by lane bits).
__device__ __forceinline__ float fp32_row_score(const float (&x)[kFp32Rows]) {
  float four[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) four[i] = x[i] + __shfl_xor_sync(0xffffffffu, x[4 + i], 16);
  float two[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) two[i] = four[i] + __shfl_xor_sync(0xffffffffu, four[2 + i], 8);
  float one = two[0] + __shfl_xor_sync(0xffffffffu, two[1], 4);
  one += __shfl_xor_sync(0xffffffffu, one, 2);
  return one + __shfl_xor_sync(0xffffffffu, one, 1);
}

// Raw scores q . k of the lane's row (lane / 4) for the chunk's 16 keys.
template <int kHeadDim>
__device__ __forceinline__ void fp32_chunk_scores(const float (&q)[kFp32Rows][Fp32Cta<kHeadDim>::kDims],
                                                  const float* k_tile, int lane, float (&s)[kFp32Chunk]) {
  constexpr int kDims = Fp32Cta<kHeadDim>::kDims;
#pragma unroll
  for (int j = 0; j < kFp32Chunk; ++j) {
    float k[kDims];
    load_dims<kDims>(k_tile + j * kHeadDim + lane * kDims, k);
    float part[kFp32Rows];  // in slot order, as q
#pragma unroll
    for (int i = 0; i < kFp32Rows; ++i) {
      part[i] = q[i][0] * k[0];
#pragma unroll
      for (int e = 1; e < kDims; ++e) part[i] = fmaf(q[i][e], k[e], part[i]);
    }
    s[j] = fp32_row_score(part);
  }
}

// O += P V for the chunk, P [kFp32Chunk][kFp32Rows] in shared memory. kSelect: only the (row, key)
// pairs whose bit is set in allowed[row] (edge chunks; see the header).
template <int kHeadDim, bool kSelect>
__device__ __forceinline__ void fp32_chunk_values(float (&o)[kFp32Rows][Fp32Cta<kHeadDim>::kDims], const float* p_tile,
                                                  const float* v_tile, const uint32_t (&allowed)[kFp32Rows], int lane) {
  constexpr int kDims = Fp32Cta<kHeadDim>::kDims;
#pragma unroll
  for (int j = 0; j < kFp32Chunk; ++j) {
    const float4 p0 = *reinterpret_cast<const float4*>(p_tile + j * kFp32Rows);
    const float4 p1 = *reinterpret_cast<const float4*>(p_tile + j * kFp32Rows + 4);
    const float prob[kFp32Rows] = {p0.x, p0.y, p0.z, p0.w, p1.x, p1.y, p1.z, p1.w};
    float v[kDims];
    load_dims<kDims>(v_tile + j * kHeadDim + lane * kDims, v);
#pragma unroll
    for (int r = 0; r < kFp32Rows; ++r) {
      if (kSelect && !((allowed[r] >> j) & 1u)) continue;  // warp-uniform
#pragma unroll
      for (int e = 0; e < kDims; ++e) o[r][e] = fmaf(prob[r], v[e], o[r][e]);
    }
  }
}

// ---- the kernel ---------------------------------------------------------------------------------

template <int kHeadDim>
__global__ void __launch_bounds__(Fp32Cta<kHeadDim>::kWarps * 32) fp32_decode_kernel(const Args a) {
  using Cta = Fp32Cta<kHeadDim>;
  constexpr int kWarps = Cta::kWarps, kDims = Cta::kDims;
  constexpr uint32_t kWholeChunk = (1u << kFp32Chunk) - 1;
  wait_for_primary_grid();  // launched early (programmatic dependent launch): inputs may still be in flight
  const CtaWork w = cta_work<kFp32Rows>(a);
  if (w.row0 >= w.packed_rows) return;  // a query tile past this sequence's rows

  extern __shared__ __align__(1024) unsigned char smem[];  // as the tensor-core kernel declares it
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float* const stages = reinterpret_cast<float*>(smem);
  float* const my_stages = stages + size_t(warp) * Cta::kRegionFloats;
  float* const my_p = reinterpret_cast<float*>(smem + Cta::kPOffset) + warp * kFp32Chunk * kFp32Rows;
  uint32_t* const my_masks = reinterpret_cast<uint32_t*>(smem + Cta::kMaskOffset) + warp * Cta::kStages;
  auto k_stage = [&](int stage) { return my_stages + stage * Cta::kStageFloats; };
  auto v_stage = [&](int stage) { return k_stage(stage) + Cta::kChunkFloats; };

  const int chunks = w.key_end > w.key_begin ? static_cast<int>(ceil_div(w.key_end - w.chunk0, kFp32Chunk)) : 0;
  const int my_chunks = chunks > warp ? (chunks - warp + kWarps - 1) / kWarps : 0;
  auto chunk_key0 = [&](int n) { return w.chunk0 + int64_t(n * kWarps + warp) * kFp32Chunk; };
  int32_t next_entry = my_chunks > 0 ? fp32_chunk_entry(a, w, chunk_key0(0), lane) : -1;
  auto issue = [&](int n) {
    const int32_t entry = next_entry;
    if (n + 1 < my_chunks) next_entry = fp32_chunk_entry(a, w, chunk_key0(n + 1), lane);
    const int stage = n % Cta::kStages;
    const uint32_t valid = load_fp32_chunk<kHeadDim>(a, w, chunk_key0(n), entry, k_stage(stage), v_stage(stage), lane);
    if (lane == 0) my_masks[stage] = valid;
  };

  // The query's loads leave first, then the first chunk's copies (the query does not queue behind
  // them), then the query tile is stored and rotated while the chunk streams in.
  const Fp32QueryLoads<kHeadDim> query = fetch_fp32_query<kHeadDim>(a, w);
  if (my_chunks > 0) issue(0);
  cp_async_commit();
  float q[kFp32Rows][kDims];
  store_fp32_query<kHeadDim>(a, w, query, reinterpret_cast<float*>(smem + Cta::kQOffset), q, lane);

  const int my_row = lane / 4;
  const RowInfo row = row_info(a, w, my_row);
  core::SoftmaxRow<float> state;  // of row my_row (the four lanes of a row hold the same)
  float o[kFp32Rows][kDims];
#pragma unroll
  for (int r = 0; r < kFp32Rows; ++r)
#pragma unroll
    for (int e = 0; e < kDims; ++e) o[r][e] = 0.0f;

  for (int n = 0; n < my_chunks; ++n) {
    if (n + 1 < my_chunks) issue(n + 1);  // into the stage chunk n - 1 used
    cp_async_commit();
    cp_async_wait<1>();  // chunk n has landed (this lane's copies) ...
    __syncwarp();        // ... and every lane's
    const int stage = n % Cta::kStages;
    const int64_t key0 = chunk_key0(n);
    const uint32_t valid = my_masks[stage];
    float s[kFp32Chunk];
    fp32_chunk_scores<kHeadDim>(q, k_stage(stage), lane, s);

    // Scale, modifiers (in double, as the fp32 forward) and the mask of the lane's row. A chunk
    // the row sees whole with plain scores (the steady state) only scales.
    uint32_t allowed = valid;
    if (a.plain_scores && valid == kWholeChunk && key0 >= row.key_begin && key0 + kFp32Chunk <= row.key_end) {
#pragma unroll
      for (int j = 0; j < kFp32Chunk; ++j) s[j] *= a.p.scale;
    } else {
      allowed = 0;
#pragma unroll
      for (int j = 0; j < kFp32Chunk; ++j) {
        const int64_t key = key0 + j;
        const bool sees = ((valid >> j) & 1u) && key >= row.key_begin && key < row.key_end;
        allowed |= uint32_t(sees) << j;
        const float scaled = s[j] * a.p.scale;
        s[j] = !sees ? -INFINITY
               : a.plain_scores
                   ? scaled
                   : static_cast<float>(row.mod.apply(static_cast<double>(scaled), row.i, key, w.mask.diag));
      }
    }

    // Online softmax of the lane's row; exp2 of (s - max) * log2 e, the difference taken first so
    // that scores near the max keep their precision at |s| ~ 1e4.
    float chunk_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kFp32Chunk; ++j) chunk_max = fmaxf(chunk_max, s[j]);
    const float factor = state.rescale_to(chunk_max);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kFp32Chunk; ++j) {
      s[j] = s[j] == -INFINITY ? 0.0f : fast_exp2((s[j] - state.max) * kLog2e);
      sum += s[j];
    }
    state.sum += sum;
    if (__any_sync(0xffffffffu, factor != 1.0f)) {
#pragma unroll
      for (int r = 0; r < kFp32Rows; ++r) {
        const float f = __shfl_sync(0xffffffffu, factor, r * 4);
#pragma unroll
        for (int e = 0; e < kDims; ++e) o[r][e] *= f;
      }
    }
    if (lane % 4 == 0) {
#pragma unroll
      for (int j = 0; j < kFp32Chunk; ++j) my_p[j * kFp32Rows + my_row] = s[j];
    }
    __syncwarp();

    // Padded rows (row.valid false) see nothing and are never written: they do not make an edge.
    const bool edge = row.valid && (valid & ~allowed) != 0;
    uint32_t row_allowed[kFp32Rows];
    if (__any_sync(0xffffffffu, edge)) {
#pragma unroll
      for (int r = 0; r < kFp32Rows; ++r) row_allowed[r] = __shfl_sync(0xffffffffu, allowed, r * 4);
      fp32_chunk_values<kHeadDim, true>(o, my_p, v_stage(stage), row_allowed, lane);
    } else {
      fp32_chunk_values<kHeadDim, false>(o, my_p, v_stage(stage), row_allowed, lane);
    }
    __syncwarp();  // every lane is done with the stage and P before they are refilled
  }
  cp_async_wait<0>();
  allow_dependent_launch();

  // The warp's state into its own stages (free now): O [kFp32Rows][kOPitch], max and sum.
  float* const merge = stages;
  float* const my_state = merge + size_t(warp) * Cta::kRegionFloats;
#pragma unroll
  for (int r = 0; r < kFp32Rows; ++r)
#pragma unroll
    for (int e = 0; e < kDims; ++e) my_state[r * Cta::kOPitch + lane * kDims + e] = o[r][e];
  if (lane % 4 == 0) {
    my_state[kFp32Rows * Cta::kOPitch + my_row] = state.max;
    my_state[kFp32Rows * Cta::kOPitch + kFp32Rows + my_row] = state.sum;
  }
  __syncthreads();
  finish_rows<float, kHeadDim, kWarps, kFp32Rows, Cta::kRegionFloats, Cta::kOPitch>(a, w, merge, lane, warp);
}
