#!/usr/bin/env python3
"""fp32 decode bandwidth: cuda-decode's fp32 kernel vs cuda-fp32 (the exact fp32 forward over the
cache, the path fp32 caches took before), torch SDPA's fp32 backends and a device copy.

The method is bench_decode.py's (CUDA-graph replays of 10 calls, CUDA events, median of 15;
two alternated K/V copies below 1 GiB so no call reads the previous one's K/V from L2); bytes are
fp32 K and V read (batch x keys x kv heads x head dim x 2 tensors x 4 bytes). torch's flash and
cuDNN backends take no fp32; its efficient (memory-efficient) and math backends do, on dense
K/V only. cuda-fp32 runs only the smaller shapes: it reads K/V once per query head through a
64-128-row tile holding one real row, about 80x off the bandwidth (docs/perf-log.md).

    python3 bench/gpu/bench_decode_fp32.py --bench build/flashsdpa_decode_bench --out bench/results/DATE-GPU-decode-fp32
"""
import argparse
import datetime
import json
import subprocess

import torch
from torch.nn.attention import SDPBackend

from bench_decode import copy_gbps, torch_backend_gbps

SHAPES = [(1, 32768, 32, 8), (8, 8192, 32, 8), (32, 4096, 32, 8), (64, 16384, 32, 8), (1, 8192, 64, 8),
          (16, 8192, 64, 8)]
LAYOUTS = [("dense", 0), ("paged", 16)]
SLOW_TIER_SHAPES = {(1, 32768, 32, 8), (8, 8192, 32, 8), (1, 8192, 64, 8)}  # cuda-fp32: the small ones


def run_bench(bench, tier, shapes, floor=False):
    args = [bench, "--fp32", tier] + (["--floor"] if floor else []) + [
        f"{b},{s},{hq},{hkv},128,{layout},{page}" for (b, s, hq, hkv, layout, page) in shapes]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    rows, floors = {}, {}
    for line in done.stdout.splitlines():
        r = json.loads(line)
        key = (r["batch"], r["seqlen_k"], r["hq"], r["hkv"], r["layout"], r["page_size"])
        (floors if r.get("floor") else rows)[key] = r
    return rows, floors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    shapes = [(b, s, hq, hkv, layout, page) for (b, s, hq, hkv) in SHAPES for (layout, page) in LAYOUTS]
    decode, floors = run_bench(args.bench, "decode", shapes, floor=True)
    slow, _ = run_bench(args.bench, "fp32", [x for x in shapes if x[:4] in SLOW_TIER_SHAPES and x[4] == "dense"])
    copy = copy_gbps()
    peers = {}
    for (b, s, hq, hkv) in SHAPES:
        peers[(b, s, hq, hkv)] = {
            name: torch_backend_gbps(backend, b, s, hq, hkv, 128, dtype=torch.float32)
            for name, backend in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH))}
    rows = []
    for shape in shapes:
        b, s, hq, hkv, layout, page = shape
        r, f = decode[shape], floors.get(shape, {})
        eff, math = peers[(b, s, hq, hkv)]["efficient"], peers[(b, s, hq, hkv)]["math"]
        rows.append({
            "batch": b, "seqlen_k": s, "hq": hq, "hkv": hkv, "hd": 128, "layout": layout, "page_size": page,
            "flashsdpa_gbps": r["graph_gbps"], "flashsdpa_us": r["graph_us"], "flashsdpa_eager_gbps": r["gbps"],
            "cuda_fp32_tier_gbps": slow[shape]["graph_gbps"] if shape in slow else None,
            "torch_efficient_gbps": eff[1] if eff[1] is not None else eff[0], "torch_efficient_note": eff[2],
            "torch_math_gbps": math[1] if math[1] is not None else math[0], "torch_math_note": math[2],
            "copy_gbps": copy, "floor_read_gbps": f.get("read_gbps"), "nonfinite_out": r["nonfinite_out"],
        })
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.date.today().isoformat(), "dtype": "float32",
            "method": "as bench_decode.py (CUDA-graph replays of 10 calls, median of 15), fp32 K/V bytes read / time",
            "rows": rows}
    with open(args.out + ".json", "w") as fh:
        json.dump(meta, fh, indent=1)
    fmt = lambda x: "-" if x is None else f"{x:.0f}"
    lines = [f"# fp32 decode bandwidth — {meta['device']}, torch {meta['torch']}, CUDA {meta['cuda']}, {meta['date']}", "",
             "GB/s = fp32 K and V bytes read per second (CUDA-graph replays of 10 calls, median of 15); copy = "
             f"{copy:.0f} GB/s (read + write, 2 GiB device-to-device); torch has no paged cache: its numbers on "
             "paged rows are the dense shape's.", "",
             "| batch | keys | Hq/Hkv | layout | flashsdpa GB/s | % of copy | us | read floor GB/s | cuda-fp32 tier GB/s "
             "| torch efficient GB/s | torch math GB/s | vs best torch |",
             "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        best = max([x for x in (r["torch_efficient_gbps"], r["torch_math_gbps"]) if x is not None], default=None)
        lines.append(f"| {r['batch']} | {r['seqlen_k']} | {r['hq']}/{r['hkv']} | "
                     f"{r['layout']}{' ' + str(r['page_size']) if r['page_size'] else ''} | {fmt(r['flashsdpa_gbps'])} | "
                     f"{100 * r['flashsdpa_gbps'] / copy:.0f}% | {r['flashsdpa_us']:.1f} | {fmt(r['floor_read_gbps'])} | "
                     f"{fmt(r['cuda_fp32_tier_gbps'])} | {fmt(r['torch_efficient_gbps'])} | {fmt(r['torch_math_gbps'])} | "
                     f"{'-' if best is None else '%.2fx' % (r['flashsdpa_gbps'] / best)} |")
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
