// Which (query tile, head, sequence) work item each block of a forward kernel takes (the
// tensor-core tiers and cuda-fp32).
// Host and device code, no CUDA types: the kernel and its host-side tests share it.
//
// The hardware starts blocks roughly in increasing linear index (x fastest). With a causal mask
// (or any window with a right edge) query tile t of a sequence sees about t + 1 key tiles, so the
// blocks' work differs up to S / 128-fold, and a grid whose longest blocks start last ends with a
// ragged wave: on an H100 that costs about 10% at S 4k-16k. Launching longest first across every
// (sequence, head) pair fixes the tail, but then the blocks running at one time read the K/V of
// every pair, and at S 16k that is more than the L2 cache holds. So pairs are split into `groups`
// groups of consecutive pairs (sizes differing by at most one; consecutive heads share K/V under
// GQA), each group small enough for its K/V to stay in L2, and within a group tiles go longest
// first, all pairs of the group per tile.
#pragma once

#include <cstdint>

#include "core/mask.h"  // FLASHSDPA_HD
#include "core/problem.h"

namespace flashsdpa::cuda {

struct BlockWork {
  int64_t tile = 0;   // query tile of the sequence
  int64_t head = 0;   // query head
  int64_t batch = 0;  // sequence
};

// The work item of block `linear` (0 <= linear < tiles * heads * batch < 2^32) in longest-first
// order over `groups` groups (1 <= groups <= heads * batch). A bijection onto all (tile, head,
// sequence). 32-bit: every thread of every block runs these divisions.
FLASHSDPA_HD BlockWork longest_first_work(uint32_t linear, uint32_t tiles, uint32_t heads, uint32_t batch,
                                          uint32_t groups) {
  const uint32_t pairs = heads * batch;
  const uint32_t small = pairs / groups, large_groups = pairs - small * groups;  // the first groups hold small + 1
  const uint32_t large_blocks = large_groups * (small + 1) * tiles;
  uint32_t first_pair, group_pairs;
  if (linear < large_blocks) {
    group_pairs = small + 1;
    first_pair = linear / (group_pairs * tiles) * group_pairs;
  } else {
    group_pairs = small;
    first_pair = large_groups * (small + 1) + (linear - large_blocks) / (group_pairs * tiles) * group_pairs;
  }
  const uint32_t rank = linear - first_pair * tiles;  // position inside the group
  const uint32_t step = rank / group_pairs;           // tiles go longest first, all pairs of the group per tile
  const uint32_t pair = first_pair + (rank - step * group_pairs);
  const uint32_t b = pair / heads;
  BlockWork w;
  w.tile = tiles - 1 - step;
  w.head = pair - b * heads;
  w.batch = b;
  return w;
}

// Groups for longest-first order: as few as keep one group's K/V within `l2_budget` bytes.
// Lengths are the shape's upper bounds (varlen: the mean); query heads sharing a K/V head
// count it once.
inline int64_t longest_first_groups(const core::Problem& p, double l2_budget) {
  const int64_t pairs = p.batch * p.heads_q;
  if (pairs <= 1 || l2_budget <= 0) return 1;
  int64_t keys = p.seqlen_k;
  if (keys <= 0) keys = p.total_k / p.batch;
  const double kv_bytes_per_pair = static_cast<double>(keys) * static_cast<double>(p.head_dim_qk + p.head_dim_v) *
                                   static_cast<double>(dtype_size(p.dtype)) / static_cast<double>(p.group);
  const double groups = kv_bytes_per_pair * static_cast<double>(pairs) / l2_budget;
  if (groups <= 1) return 1;
  if (groups >= static_cast<double>(pairs)) return pairs;
  const int64_t g = static_cast<int64_t>(groups);
  return static_cast<double>(g) < groups ? g + 1 : g;
}

// The order a forward launch uses: longest first where tiles differ in work (causal, a window's
// right edge), in groups whose K/V fit `l2_bytes` (the L2 size: measured against half and a
// quarter of it, and one group, docs/perf-log.md, v5); 0, the natural order, where every tile
// does the same work.
inline int64_t block_order_groups(const core::Problem& p, double l2_bytes) {
  return p.window_right >= 0 ? longest_first_groups(p, l2_bytes) : 0;
}

// Blocks a grid may hold for longest_first_work's 32-bit count; beyond that the natural order.
inline bool fits_block_order(int64_t tiles, int64_t heads, int64_t batch) {
  return static_cast<double>(tiles) * static_cast<double>(heads) * static_cast<double>(batch) < 4294967296.0;
}

#ifdef __CUDACC__
// The work item of the calling block of a (query tiles, heads, sequences) grid: the grid's
// natural order when order_groups is 0 (masks under which every tile does the same work), else
// longest first in that many groups.
__device__ __forceinline__ BlockWork this_block_work(int64_t order_groups) {
  if (order_groups == 0) return BlockWork{blockIdx.x, blockIdx.y, blockIdx.z};
  return longest_first_work(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z), gridDim.x, gridDim.y,
                            gridDim.z, static_cast<uint32_t>(order_groups));
}

#endif

}  // namespace flashsdpa::cuda
