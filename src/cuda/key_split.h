// Work schedule of the exact fp32 forward's persistent launch (stream-K for the last waves): when
// every work item (query tile, head, sequence) reads the same number of key tiles, one wave of
// blocks loops over the items. Block r takes the whole items r, r + blocks, r + 2 blocks, ...
// below whole_items (so the blocks at work at any moment hold neighbouring items and share their
// K/V in L2, as the plain grid's waves do), then run r: an equal, contiguous share of the
// flattened (item, key tile) space of the remaining items. An item cut by a run's edge is
// computed in pieces by consecutive runs; each piece leaves its un-normalised partial (max, sum,
// O) in scratch, and whichever piece finishes last merges them in piece order (deterministic) and
// stores the rows.
// Why: at head dim 256 a block is 64 query rows and one block fits per SM, so 2048 equal items on
// 132 SMs take 16 waves for 15.5 waves of work (3%); in one launch, the runs start as soon as
// their block's whole items end (docs/perf-log.md, "fp32 tier v7").
// Host and device code, no CUDA types: the kernel and its host-side tests share it.
#pragma once

#include <cstdint>

#include "core/mask.h"  // FLASHSDPA_HD

namespace flashsdpa::cuda {

struct KeySplitSchedule {
  uint32_t blocks = 0;          // persistent blocks, each with one run; 0: off, the plain grid
  uint32_t whole_items = 0;     // items [0, whole_items) run whole, dealt round-robin, before the runs
  uint32_t items = 0;           // all items, in the grid's natural order (tile fastest, then head, then sequence)
  uint32_t tiles_per_item = 0;  // key tiles every item reads
};

// One run's share of one item: key tiles [tile_begin, tile_end).
struct KeySplitPiece {
  uint32_t item = 0, tile_begin = 0, tile_end = 0;
  bool whole = true;     // the item's every tile: no partial, no merge
  uint32_t slot = 0;     // partial slot (2 per run: its first and last piece)
  uint32_t first = 0;    // the first run holding a piece of the item; the item's merge counter
  uint32_t pieces = 1;   // runs holding a piece of the item
};

// Positions: flattened tiles of the split items, (item - whole_items) * tiles_per_item + key tile.
FLASHSDPA_HD uint64_t split_total_tiles(const KeySplitSchedule& s) {
  return uint64_t(s.items - s.whole_items) * s.tiles_per_item;
}

// First position of run r, 0 <= r <= blocks (every run is empty when no item is split).
FLASHSDPA_HD uint64_t split_run_begin(const KeySplitSchedule& s, uint32_t r) {
  return split_total_tiles(s) * r / s.blocks;
}

// The run holding position t: the r with run_begin(r) <= t < run_begin(r + 1).
FLASHSDPA_HD uint32_t split_run_of(const KeySplitSchedule& s, uint64_t t) {
  return static_cast<uint32_t>(((t + 1) * s.blocks - 1) / split_total_tiles(s));
}

// Slot of run r's piece of the item starting at position item_begin: a run meets at most two cut
// items, the one it starts in (slot 2r) and the one it ends in (2r + 1).
FLASHSDPA_HD uint32_t split_piece_slot(const KeySplitSchedule& s, uint32_t r, uint64_t item_begin) {
  return 2 * r + (split_run_begin(s, r) < item_begin ? 1u : 0u);
}

// Run r's piece starting at position `at` (run_begin(r) <= at < run_begin(r + 1)).
FLASHSDPA_HD KeySplitPiece split_piece(const KeySplitSchedule& s, uint32_t r, uint64_t at) {
  const uint64_t run_end = split_run_begin(s, r + 1), n = s.tiles_per_item;
  const uint64_t index = at / n, item_begin = index * n;
  KeySplitPiece piece;
  piece.item = s.whole_items + static_cast<uint32_t>(index);
  piece.tile_begin = static_cast<uint32_t>(at - item_begin);
  piece.tile_end = static_cast<uint32_t>(run_end - at < n - piece.tile_begin ? piece.tile_begin + (run_end - at) : n);
  piece.whole = piece.tile_begin == 0 && piece.tile_end == n;
  piece.first = split_run_of(s, item_begin);
  piece.pieces = split_run_of(s, item_begin + n - 1) - piece.first + 1;
  piece.slot = split_piece_slot(s, r, item_begin);
  return piece;
}

// Where block r is in its list of pieces: whole items taken, then the next position of its run.
struct BlockPieces {
  uint32_t whole_taken = 0;
  uint64_t at = 0;
};

FLASHSDPA_HD BlockPieces first_block_piece(const KeySplitSchedule& s, uint32_t r) {
  return BlockPieces{0, split_run_begin(s, r)};
}

// Block r's next piece (false: none left): its whole items in order, then its run's pieces.
FLASHSDPA_HD bool next_block_piece(const KeySplitSchedule& s, uint32_t r, BlockPieces& c, KeySplitPiece& piece) {
  const uint64_t whole_item = uint64_t(r) + uint64_t(c.whole_taken) * s.blocks;
  if (whole_item < s.whole_items) {
    piece = KeySplitPiece{};
    piece.item = static_cast<uint32_t>(whole_item);
    piece.tile_end = s.tiles_per_item;
    ++c.whole_taken;
    return true;
  }
  if (c.at >= split_run_begin(s, r + 1)) return false;
  piece = split_piece(s, r, c.at);
  c.at += piece.tile_end - piece.tile_begin;
  return true;
}

// The schedule for `items` items of `tiles_per_item` key tiles each on a device holding
// `resident` blocks at once: whole items only when the plain grid's waves are at least
// `min_efficiency` full (or an item has a single tile); otherwise the last two waves' items (all
// of them below two waves) go to at most `resident` runs of at least one tile each. Off (the
// plain grid) where 32-bit positions could overflow.
inline KeySplitSchedule choose_key_split(int64_t items, int64_t tiles_per_item, int64_t resident,
                                         double min_efficiency) {
  KeySplitSchedule s;
  if (items <= 0 || tiles_per_item <= 0 || resident <= 0) return s;
  // 64-bit headroom for run_begin's product, 32-bit items and a 31-bit grid.
  if (items >= (int64_t(1) << 31) - resident || tiles_per_item >= (int64_t(1) << 31) ||
      items * tiles_per_item >= (int64_t(1) << 48) / resident)
    return s;
  s.items = static_cast<uint32_t>(items);
  s.tiles_per_item = static_cast<uint32_t>(tiles_per_item);
  const int64_t waves = (items + resident - 1) / resident;
  const double efficiency = static_cast<double>(items) / static_cast<double>(waves * resident);
  if (efficiency >= min_efficiency || tiles_per_item < 2) {
    s.blocks = static_cast<uint32_t>(items < resident ? items : resident);
    s.whole_items = s.items;
    return s;
  }
  const int64_t full_waves = items / resident;
  const int64_t whole = full_waves >= 2 ? (full_waves - 1) * resident : 0;
  const int64_t split_tiles = (items - whole) * tiles_per_item;
  s.blocks = static_cast<uint32_t>(split_tiles < resident ? split_tiles : resident);
  s.whole_items = static_cast<uint32_t>(whole);
  return s;
}

}  // namespace flashsdpa::cuda
