#!/usr/bin/env python3
"""Where a persistent cuda-fp32 launch's time goes, per piece, from the timeline that
`flashsdpa_gpu_bench --one fp32 ... --trace FILE` writes (one line per piece: block item
tile_begin tile_end start issued landed loop_end v_issued end, ns of the GPU's global timer).

    python3 bench/gpu/fp32_trace.py FILE [FILE ...]

Prints per phase the p10 / p50 / p90 / mean over pieces, in us: the prologue (piece start until
its Q and first K tile are issued, then until they landed), the first V tile's issue, the key
loop per tile, the epilogue (loop end until the rows are stored) and the gap between a block's
pieces (its schedule step)."""
import statistics
import sys


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def summarise(path):
    rows = [list(map(int, line.split())) for line in open(path) if line.strip()]
    if not rows:
        print(f"== {path}: no records")
        return
    t0 = min(r[4] for r in rows)
    blocks = {}
    for r in rows:
        blocks.setdefault(r[0], []).append(r)
    phases = {name: [] for name in ("start -> Q, K issued", "issued -> landed", "first V issue", "loop per tile",
                                    "loop end -> stored", "gap to next piece")}
    for pieces in blocks.values():
        pieces.sort(key=lambda r: r[4])
        for n, (_, _, tile_begin, tile_end, start, issued, landed, loop_end, v_issued, end) in enumerate(pieces):
            tiles = tile_end - tile_begin
            phases["start -> Q, K issued"].append((issued - start) / 1e3)
            phases["issued -> landed"].append((landed - issued) / 1e3)
            if tiles > 0:
                phases["first V issue"].append((v_issued - landed) / 1e3)
                phases["loop per tile"].append((loop_end - landed) / 1e3 / tiles)
            phases["loop end -> stored"].append((end - loop_end) / 1e3)
            if n + 1 < len(pieces):
                phases["gap to next piece"].append((pieces[n + 1][4] - end) / 1e3)
    ends = sorted(max(r[9] for r in pieces) - t0 for pieces in blocks.values())
    print(f"== {path}: {len(rows)} pieces on {len(blocks)} blocks, {(ends[-1]) / 1e3:.1f} us; "
          f"block ends min / p50 / max {ends[0] / 1e3:.1f} / {percentile(ends, 0.5) / 1e3:.1f} / {ends[-1] / 1e3:.1f} us")
    for name, xs in phases.items():
        if xs:
            print(f"  {name:22s} p10 {percentile(xs, 0.1):6.2f}  p50 {percentile(xs, 0.5):6.2f}  "
                  f"p90 {percentile(xs, 0.9):6.2f}  mean {statistics.mean(xs):6.2f} us")


if __name__ == "__main__":
    for path in sys.argv[1:]:
        summarise(path)
