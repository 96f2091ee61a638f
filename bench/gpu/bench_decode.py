#!/usr/bin/env python3
"""Decode bandwidth: flashsdpa's cuda-decode vs torch SDPA (flash, cuDNN) and a device copy.

Runs the C++ benchmark (flashsdpa_decode_bench, CUDA-event timings of the kv-cache call on
dense and paged caches) and times torch's backends here on identically shaped bf16 inputs with
the same method: CUDA events around loops of calls, median of 15 repetitions. Bandwidth is the
bytes of K and V one decode step must read (batch x keys x kv heads x head dim x 2 tensors x 2
bytes) over the time, for every backend alike; the copy is a 2 GiB device-to-device copy
counted as bytes read plus bytes written.

torch's SDPA has no paged cache: paged rows carry the dense shape's torch numbers. When a torch
backend refuses grouped-query attention (enable_gqa), it runs on K/V expanded to the query heads
(expansion not timed) and the row says so.

With --variants auto,pair,... flashsdpa runs once per kernel variant (the benchmark's --variant;
torch's backends once): the first variant fills the main table and the plot, and a second table
compares every variant's time per shape.

    python3 bench/gpu/bench_decode.py --bench build/flashsdpa_decode_bench --out bench/results/DATE-GPU-decode
"""
import argparse
import datetime
import json
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

MAIN_SHAPES = [(1, 32768), (8, 8192), (32, 4096), (64, 16384)]
MAIN_LAYOUTS = [("dense", 0), ("paged", 16), ("paged", 256)]
WIDE_BATCHES = [1, 2, 4, 8, 16, 32, 64]
WIDE_SEQLENS = [8192, 32768]  # Hq 64 / Hkv 8: dense and paged 16 at 8k keys, dense at 32k


def time_us(fn, reps=15):
    """Median per-call time of ~2 ms loops of fn, CUDA events, after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def loop(iters):
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        return 1000.0 * start.elapsed_time(stop) / iters

    once = loop(1)
    iters = int(min(max(2000.0 / max(once, 1.0), 3), 50))
    samples = sorted(loop(iters) for _ in range(reps))
    return samples[len(samples) // 2]


def graph_time_us(fn, calls=10):
    """Per-call time with `calls` calls captured into one CUDA graph and replayed (the launch
    overhead of eager PyTorch leaves the measurement); None when the calls cannot be captured."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        return time_us(graph.replay) / calls
    except RuntimeError as e:
        print(f"  graph capture failed: {str(e).splitlines()[0]}", file=sys.stderr)
        return None


def kv_bytes(b, s, hkv, hd, element=2):
    return 2.0 * b * s * hkv * hd * element


def torch_backend_gbps(backend, b, s, hq, hkv, hd, dtype=torch.bfloat16):
    """(eager GB/s, graph GB/s or None, note) of one torch SDPA backend at a decode shape; the
    note is '' or 'expanded K/V'. (None, None, 'unavailable') when the backend refuses it."""
    element = torch.finfo(dtype).bits // 8
    q = torch.randn(b, 1, hq, hd, device="cuda", dtype=dtype).transpose(1, 2)
    # As in the C++ benchmark: caches below 1 GiB get a second copy, alternated call by call, so
    # no call finds the previous one's K/V in the 50 MB L2 (a 33 MB cache read twice in a row
    # would be served partly from L2).
    sets = 2 if 2 * kv_bytes(b, s, hkv, hd, element) < (1 << 30) else 1
    kv = [(torch.randn(b, s, hkv, hd, device="cuda", dtype=dtype).transpose(1, 2),
           torch.randn(b, s, hkv, hd, device="cuda", dtype=dtype).transpose(1, 2)) for _ in range(sets)]
    note, kwargs = "", {"enable_gqa": True}
    with sdpa_kernel([backend]):
        try:
            F.scaled_dot_product_attention(q, kv[0][0], kv[0][1], **kwargs)
        except RuntimeError:
            kv = [(k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)) for k, v in kv]
            note, kwargs = "expanded K/V", {}
            try:
                F.scaled_dot_product_attention(q, kv[0][0], kv[0][1])
            except RuntimeError as e:
                print(f"  {backend} unavailable at {(b, s, hq, hkv, hd)}: {str(e).splitlines()[0]}", file=sys.stderr)
                return None, None, "unavailable"
        calls = [0]

        def fn():
            k, v = kv[calls[0] % sets]
            calls[0] += 1
            return F.scaled_dot_product_attention(q, k, v, **kwargs)

        eager = time_us(fn)
        graph = graph_time_us(fn)
    del q, kv
    torch.cuda.empty_cache()
    nbytes = kv_bytes(b, s, hkv, hd, element)
    return nbytes / eager * 1e-3, (nbytes / graph * 1e-3 if graph else None), note


def copy_gbps():
    n = 2 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    us = time_us(lambda: dst.copy_(src), reps=9)
    del src, dst
    torch.cuda.empty_cache()
    return 2.0 * n / us * 1e-3


def run_flashsdpa(bench, shapes, variant, floor=False):
    """flashsdpa's rows by shape, and with floor=True the benchmark's --floor lines by shape too."""
    args = [bench, "--variant", variant] + (["--floor"] if floor else []) + [
        f"{b},{s},{hq},{hkv},{hd},{layout},{page}" for (b, s, hq, hkv, hd, layout, page) in shapes]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    rows, floors = {}, {}
    for line in done.stdout.splitlines():
        r = json.loads(line)
        key = (r["batch"], r["seqlen_k"], r["hq"], r["hkv"], r["hd"], r["layout"], r["page_size"])
        (floors if r.get("floor") else rows)[key] = r
    return rows, floors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="path of flashsdpa_decode_bench")
    ap.add_argument("--out", required=True, help="output path without extension (.json, .md, .png)")
    ap.add_argument("--variants", default="auto", help="comma-separated kernel variants, the first one the main table's")
    args = ap.parse_args()
    variants = args.variants.split(",")

    shapes = [(b, s, 32, 8, 128, layout, page) for (b, s) in MAIN_SHAPES for (layout, page) in MAIN_LAYOUTS]
    shapes += [(b, WIDE_SEQLENS[0], 64, 8, 128, layout, page) for b in WIDE_BATCHES for (layout, page) in MAIN_LAYOUTS[:2]]
    shapes += [(b, WIDE_SEQLENS[1], 64, 8, 128, "dense", 0) for b in WIDE_BATCHES]
    ours, floors = {}, {}
    for n, v in enumerate(variants):
        ours[v], found = run_flashsdpa(args.bench, shapes, v, floor=n == 0)
        floors.update(found)
    copy = copy_gbps()
    print(f"device-to-device copy: {copy:.0f} GB/s (read + write)")

    peers = {}
    for (b, s, hq, hkv, hd, _, _) in shapes:
        key = (b, s, hq, hkv, hd)
        if key not in peers:
            peers[key] = {
                "flash": torch_backend_gbps(SDPBackend.FLASH_ATTENTION, b, s, hq, hkv, hd),
                "cudnn": torch_backend_gbps(SDPBackend.CUDNN_ATTENTION, b, s, hq, hkv, hd),
            }

    # Primary numbers come from CUDA-graph replays when every backend of the row could be
    # captured (the same method for all), else from eager loops.
    rows = []
    for variant, shape in [(v, shape) for v in variants for shape in shapes]:
        b, s, hq, hkv, hd, layout, page = shape
        r = ours[variant][shape]
        flash_eager, flash_graph, flash_note = peers[(b, s, hq, hkv, hd)]["flash"]
        cudnn_eager, cudnn_graph, cudnn_note = peers[(b, s, hq, hkv, hd)]["cudnn"]
        graphed = r["graph_gbps"] > 0 and all(
            g is not None for g, e in ((flash_graph, flash_eager), (cudnn_graph, cudnn_eager)) if e is not None)
        rows.append({
            "variant": variant, "batch": b, "seqlen_k": s, "hq": hq, "hkv": hkv, "hd": hd, "layout": layout,
            "page_size": page,
            "flashsdpa_gbps": r["graph_gbps"] if graphed else r["gbps"],
            "torch_flash_gbps": flash_graph if graphed else flash_eager,
            "cudnn_gbps": cudnn_graph if graphed else cudnn_eager,
            "copy_gbps": copy,
            "timing": "cuda-graph" if graphed else "eager",
            "flashsdpa_us": r["graph_us"] if graphed else r["us"],
            "flashsdpa_eager_gbps": r["gbps"], "torch_flash_eager_gbps": flash_eager, "cudnn_eager_gbps": cudnn_eager,
            "torch_flash_note": flash_note, "cudnn_note": cudnn_note,
            # What any kernel reading these bytes needs (bench_decode.cu --floor): a plain streaming
            # read of K and V, and a device copy moving the same bytes (read + write), graph-timed.
            "floor_read_gbps": floors[shape]["read_gbps"] if shape in floors else None,
            "floor_copy_gbps": floors[shape]["copy_gbps"] if shape in floors else None,
            # The same bytes read in decode's order (one CTA per sequence and kv head, as the unsplit
            # decode grid, then split; paged caches through the block table, in the benchmark's page
            # placement), us per call keyed "splits/threads".
            "floor_decode_order_us": floors[shape].get("head_read_us") if shape in floors else None,
        })

    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.date.today().isoformat(),
        "dtype": "bfloat16",
        "method": "CUDA events around ~2 ms loops, median of 15, of CUDA-graph replays of 10 calls (timing "
                  "'cuda-graph'; eager loops of calls where a backend could not be captured, timing 'eager', and "
                  "the *_eager_gbps fields always); flashsdpa through its C++ benchmark (core::prepare_kvcache + "
                  "cuda::kvcache, no append; split-KV partials from a preallocated buffer through ExecContext::scratch, as "
                  "the PyTorch ops take them from torch's allocator), torch SDPA on identically shaped random inputs; GB/s = bytes of K and "
                  "V read / time; copy = (read + write) / time of a 2 GiB device-to-device copy; every backend alternates "
                  "two copies of K/V below 1 GiB so that no call reads the previous one's K/V from L2; read floor = "
                  "a plain streaming read of the same K/V bytes (16-byte loads, fastest of 1-8 CTAs per SM), same "
                  "timing, the least time any kernel reading them needs",
        "variants": variants,
        "rows": rows,
    }
    with open(args.out + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    write_table(meta, args.out + ".md")
    write_plot(meta, args.out + ".png")
    print(open(args.out + ".md").read())


def fmt(x):
    return "n/a" if x is None else f"{x:.0f}"


def write_table(meta, path):
    lines = [
        f"# Decode bandwidth — {meta['device']}, torch {meta['torch']}, CUDA {meta['cuda']}, {meta['date']}",
        "",
        meta["method"] + ".",
        "",
        "| batch | keys | Hq/Hkv | layout | flashsdpa GB/s | % of copy | torch flash GB/s | cuDNN GB/s | vs cuDNN | us | timing | flashsdpa eager GB/s | read floor GB/s (% of copy) | % of floor |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    main = [r for r in meta["rows"] if r["variant"] == meta["variants"][0]]
    if len(meta["variants"]) > 1:
        lines.insert(2, f"Kernel variant of this table: {meta['variants'][0]} (every variant: the table after it).")
        lines.insert(3, "")
    for r in main:
        layout = r["layout"] + (f" {r['page_size']}" if r["layout"] == "paged" else "")
        flash = fmt(r["torch_flash_gbps"]) + (" (expanded)" if r["torch_flash_note"] == "expanded K/V" else "")
        cudnn = fmt(r["cudnn_gbps"]) + (" (expanded)" if r["cudnn_note"] == "expanded K/V" else "")
        vs = "n/a" if not r["cudnn_gbps"] else f"{r['flashsdpa_gbps'] / r['cudnn_gbps']:.2f}x"
        floor = r.get("floor_read_gbps")
        floor_cells = ("n/a | n/a" if not floor else
                       f"{floor:.0f} ({100 * floor / r['copy_gbps']:.0f}%) | {100 * r['flashsdpa_gbps'] / floor:.0f}%")
        lines.append(f"| {r['batch']} | {r['seqlen_k']} | {r['hq']}/{r['hkv']} | {layout} | {r['flashsdpa_gbps']:.0f} | "
                     f"{100 * r['flashsdpa_gbps'] / r['copy_gbps']:.0f}% | {flash} | {cudnn} | {vs} | {r['flashsdpa_us']:.1f} | "
                     f"{r['timing']} | {r['flashsdpa_eager_gbps']:.0f} | {floor_cells} |")
    lines.append("")
    lines.append(f"Device-to-device copy: {meta['rows'][0]['copy_gbps']:.0f} GB/s (read + write). torch's SDPA has no "
                 "paged cache: its numbers on paged rows are those of the dense shape.")
    ordered = [r for r in main if r.get("floor_decode_order_us")]
    if ordered:
        lines += ["", "The same bytes read in decode's order (bench_decode.cu head_floor_kernel: one CTA per sequence "
                  "and kv head with 1024 / 512 / 256 threads, 128 KB in flight each, then 8 and 32 splits per head; "
                  "paged caches through the block table, pages placed as in the table above): us per call against "
                  "the plain read floor, flashsdpa and cuDNN's dense call; 'best read vs cuDNN' = cuDNN's time over the "
                  "fastest decode-order read: about the most a decode kernel on this layout and placement can reach "
                  "against cuDNN's dense call (a reference, not a strict bound: the reads are one access pattern "
                  "among several).", "",
                  "| batch | keys | Hq/Hkv | layout | read floor | " + " | ".join(
                      f"{k} (splits/threads)" for k in ordered[0]["floor_decode_order_us"]) +
                  " | flashsdpa | cuDNN (dense) | best read vs cuDNN |",
                  "| ---: | ---: | ---: | --- | ---: | " + " | ".join("---:" for _ in ordered[0]["floor_decode_order_us"]) +
                  " | ---: | ---: | ---: |"]
        for r in ordered:
            kv_bytes = 2.0 * r["batch"] * r["seqlen_k"] * r["hkv"] * r["hd"] * 2
            floor_us = kv_bytes / r["floor_read_gbps"] * 1e-3
            cudnn_us = kv_bytes / r["cudnn_gbps"] * 1e-3 if r["cudnn_gbps"] else None
            best = min(r["floor_decode_order_us"].values())
            layout = r["layout"] + (f" {r['page_size']}" if r["layout"] == "paged" else "")
            cudnn_cells = "n/a | n/a" if cudnn_us is None else f"{cudnn_us:.1f} | {cudnn_us / best:.2f}x"
            lines.append(f"| {r['batch']} | {r['seqlen_k']} | {r['hq']}/{r['hkv']} | {layout} | {floor_us:.1f} | " +
                         " | ".join(f"{v:.1f}" for v in r["floor_decode_order_us"].values()) +
                         f" | {r['flashsdpa_us']:.1f} | {cudnn_cells} |")
    if len(meta["variants"]) > 1:
        lines += ["", "Every kernel variant: us per call (% of copy, vs cuDNN); the fastest in bold.", "",
                  "| batch | keys | Hq/Hkv | layout | " + " | ".join(meta["variants"]) + " |",
                  "| ---: | ---: | ---: | --- | " + " | ".join("---:" for _ in meta["variants"]) + " |"]
        by_key = {}
        for r in meta["rows"]:
            key = (r["batch"], r["seqlen_k"], r["hq"], r["hkv"], r["layout"], r["page_size"])
            by_key.setdefault(key, {})[r["variant"]] = r
        for (b, s, hq, hkv, layout, page), per in by_key.items():
            best = min(per[v]["flashsdpa_us"] for v in meta["variants"])
            cells = []
            for v in meta["variants"]:
                r = per[v]
                vs = "" if not r["cudnn_gbps"] else f", {r['flashsdpa_gbps'] / r['cudnn_gbps']:.2f}x"
                cell = f"{r['flashsdpa_us']:.1f} ({100 * r['flashsdpa_gbps'] / r['copy_gbps']:.0f}%{vs})"
                cells.append(f"**{cell}**" if r["flashsdpa_us"] == best else cell)
            name = layout + (f" {page}" if layout == "paged" else "")
            lines.append(f"| {b} | {s} | {hq}/{hkv} | {name} | " + " | ".join(cells) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plot(meta, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    rows = [r for r in meta["rows"] if r["hq"] == 32 and r["variant"] == meta["variants"][0]]
    labels = [f"B{r['batch']} S{r['seqlen_k'] // 1024}k\n{r['layout']}{'' if r['layout'] == 'dense' else r['page_size']}"
              for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.8), 4.5))
    w = 0.27
    ax.bar([i - w for i in x], [r["flashsdpa_gbps"] for r in rows], w, label="flashsdpa cuda-decode")
    ax.bar(list(x), [r["torch_flash_gbps"] or 0 for r in rows], w, label="torch SDPA flash")
    ax.bar([i + w for i in x], [r["cudnn_gbps"] or 0 for r in rows], w, label="torch SDPA cuDNN")
    copy = rows[0]["copy_gbps"]
    ax.axhline(copy, color="k", lw=1, ls="--", label=f"D2D copy {copy:.0f} GB/s")
    ax.axhline(0.85 * copy, color="gray", lw=1, ls=":", label="85% of copy")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("K/V bytes read per second (GB/s)")
    ax.set_title(f"Decode, Hq 32 / Hkv 8, hd 128, bf16 — {meta['device']}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
