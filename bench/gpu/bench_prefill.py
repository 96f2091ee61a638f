#!/usr/bin/env python3
"""Prefill benchmark: flashsdpa against torch SDPA's flash, efficient and cuDNN backends and
compiled FlexAttention, on the same inputs.

flashsdpa is timed by the C++ benchmark (bench/gpu/bench_prefill.cpp, CUDA events through the
public API; its JSON lines are read from --flashsdpa-jsonl or produced by running --flashsdpa-bin).
torch's backends are timed here, on tensors filled with the very same values: both sides fill
q, k, v from the counter hash bench_input_value(seed, index) (seeds 1, 2, 3), reproduced below
with int64 torch arithmetic. TFLOP/s use the exact causal FLOP count 4 * B * H * D * pairs, pairs
= S (S + 1) / 2 causal, S^2 otherwise; times are medians of CUDA-event timings.

Writes <prefix>.json (device, torch, cuda, date, rows), <prefix>.md and <prefix>.png.
"""
import argparse
import datetime
import json
import math
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

GRID_HD = (64, 128, 256)
GRID_SEQLEN = (1024, 4096, 16384)
TOKENS = 16384
HIDDEN = 2048


def bench_input(seed, shape, dtype):
    """The C++ benchmark's bench_input_value over a row-major tensor of `shape`."""
    n = math.prod(shape)
    x = torch.arange(n, device="cuda", dtype=torch.int64)
    x = (x * 2654435761 + seed * 40503) & 0xFFFFFFFF
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    u = x.to(torch.float64) / 4294967296.0
    return ((u - 0.5) * math.sqrt(12.0)).to(torch.float32).to(dtype).view(shape)


def flops(b, h, s, d, causal):
    pairs = s * (s + 1) / 2 if causal else s * s
    return 4.0 * b * h * pairs * d


def time_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


_flex_cache = {}


def flex_runner(q, k, v, causal):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _flex_cache:
        # Dynamic shapes: one compile per head dim, dtype and mask rather than per sequence length.
        # The grid still needs more than dynamo's default 8 recompiles; past that limit flex_attention
        # silently runs unfused (and materialises the scores), which is not the number we want.
        torch._dynamo.config.recompile_limit = 256
        torch._dynamo.config.accumulated_recompile_limit = 1024
        _flex_cache["fn"] = torch.compile(flex_attention, dynamic=True)
    fn = _flex_cache["fn"]
    block_mask = None
    if causal:
        s = q.shape[2]
        block_mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, s, s, device="cuda")
    return lambda: fn(q, k, v, block_mask=block_mask)


def torch_peers(dtype_name, hd, seqlen, causal, iters, with_flex):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    b, h = TOKENS // seqlen, HIDDEN // hd
    shape = (b, seqlen, h, hd)
    # [B, S, H, D] storage as in flashsdpa, viewed [B, H, S, D] for SDPA (last dim contiguous).
    q, k, v = (bench_input(seed, shape, dtype).transpose(1, 2) for seed in (1, 2, 3))
    fl = flops(b, h, seqlen, hd, causal)
    result = {}
    backends = [("torch_efficient_tflops", SDPBackend.EFFICIENT_ATTENTION)]
    if dtype != torch.float32:
        backends = [("torch_flash_tflops", SDPBackend.FLASH_ATTENTION)] + backends + [
            ("cudnn_tflops", SDPBackend.CUDNN_ATTENTION)]
    for key, backend in backends:
        try:
            with sdpa_kernel([backend]):
                ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), iters)
            result[key] = round(fl / (ms * 1e-3) / 1e12, 2)
        except Exception as e:  # a backend that refuses the shape is reported as null
            print(f"# {key} {dtype_name} hd={hd} s={seqlen} causal={causal}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            result[key] = None
    if with_flex and dtype != torch.float32:
        try:
            run = flex_runner(q, k, v, causal)
            ms = time_ms(run, iters)
            result["flex_tflops"] = round(fl / (ms * 1e-3) / 1e12, 2)
        except Exception as e:
            print(f"# flex {dtype_name} hd={hd} s={seqlen} causal={causal}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            result["flex_tflops"] = None
    return result


def load_flashsdpa(args):
    lines = []
    if args.flashsdpa_jsonl:
        with open(args.flashsdpa_jsonl) as f:
            lines = f.read().splitlines()
    else:
        proc = subprocess.run([args.flashsdpa_bin], capture_output=True, text=True, check=True)
        lines = proc.stdout.splitlines()
    rows = {}
    for line in lines:
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("memory"):
            continue
        rows[(r["dtype"], r["hd"], r["seqlen"], r["causal"])] = r
    return rows


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def write_markdown(path, meta, rows):
    with open(path, "w") as f:
        f.write(f"# Prefill forward on {meta['device']} ({meta['date']})\n\n")
        f.write(f"torch {meta['torch']}, CUDA {meta['cuda']}. TFLOP/s with the exact causal FLOP count, medians of "
                "CUDA-event timings. 16k tokens per batch (B = 16384 / S), H = 2048 / hd. flashsdpa timed by "
                "bench/gpu/bench_prefill.cpp, torch's backends by bench_prefill.py on identical input values.\n\n")
        f.write("| dtype | hd | S | B | H | causal | flashsdpa | torch flash | torch efficient | cuDNN | flex | "
                "vs flash | vs efficient | vs cuDNN | flashsdpa tier |\n")
        f.write("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            cells = [r["dtype"], r["hd"], r["seqlen"], r["batch"], r["heads"], "yes" if r["causal"] else "no"]
            cells += [r.get(k) if r.get(k) is not None else "-" for k in
                      ("flashsdpa_tflops", "torch_flash_tflops", "torch_efficient_tflops", "cudnn_tflops", "flex_tflops")]
            cells += [ratio(r["flashsdpa_tflops"], r.get("torch_flash_tflops")),
                      ratio(r["flashsdpa_tflops"], r.get("torch_efficient_tflops")),
                      ratio(r["flashsdpa_tflops"], r.get("cudnn_tflops")), r.get("flashsdpa_tier") or "-"]
            f.write("| " + " | ".join(str(c) for c in cells) + " |\n")


def write_plot(path, meta, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = [d for d in ("bf16", "fp16", "fp32") if any(r["dtype"] == d for r in rows)]
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(14, 4.2 * len(dtypes)), squeeze=False)
    series = [("flashsdpa_tflops", "flashsdpa"), ("torch_flash_tflops", "torch flash"),
              ("torch_efficient_tflops", "torch efficient"), ("cudnn_tflops", "cuDNN"), ("flex_tflops", "flex")]
    for ax, dt in zip(axes[:, 0], dtypes):
        sub = [r for r in rows if r["dtype"] == dt]
        labels = [f"hd{r['hd']}\n{r['seqlen'] // 1024}k{' c' if r['causal'] else ''}" for r in sub]
        present = [(k, n) for k, n in series if any(r.get(k) for r in sub)]
        width = 0.8 / max(len(present), 1)
        for n, (key, name) in enumerate(present):
            xs = [i + (n - (len(present) - 1) / 2) * width for i in range(len(sub))]
            ax.bar(xs, [r.get(key) or 0 for r in sub], width, label=name)
        ax.set_xticks(range(len(sub)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"{dt} prefill forward, {meta['device']}")
        ax.legend(fontsize=8, ncol=len(present))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flashsdpa-bin", default="build-gpu/flashsdpa_gpu_bench")
    ap.add_argument("--flashsdpa-jsonl", help="JSON lines already produced by the C++ benchmark")
    ap.add_argument("--prefix", required=True, help="output path without extension")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--flex-budget", type=float, default=float("inf"),
                    help="seconds after which FlexAttention (compiled once per shape) is no longer timed")
    ap.add_argument("--dtypes", default="bf16,fp16,fp32")
    args = ap.parse_args()

    fs = load_flashsdpa(args)
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.date.today().isoformat(),
        "inputs": "identical values on both sides (counter hash, seeds 1/2/3, uniform with unit variance)",
        "timing": "median of CUDA-event timings per call; flashsdpa via bench/gpu/bench_prefill.cpp",
    }
    rows = []
    start = time.time()
    for dt in args.dtypes.split(","):
        for hd in GRID_HD:
            for s in GRID_SEQLEN:
                for causal in (False, True):
                    mine = fs.get((dt, hd, s, causal))
                    if mine is None:
                        continue
                    iters = max(3, args.iters // 4) if dt == "fp32" else args.iters
                    row = {"hd": hd, "seqlen": s, "batch": TOKENS // s, "heads": HIDDEN // hd, "causal": causal,
                           "dtype": dt, "flashsdpa_tflops": mine["tflops"], "flashsdpa_tier": mine.get("tier"),
                           "torch_flash_tflops": None,
                           "torch_efficient_tflops": None, "cudnn_tflops": None, "flex_tflops": None}
                    with_flex = not args.no_flex and time.time() - start < args.flex_budget
                    row.update(torch_peers(dt, hd, s, causal, iters, with_flex))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    torch.cuda.empty_cache()
    meta["rows"] = rows
    with open(args.prefix + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    write_markdown(args.prefix + ".md", meta, rows)
    write_plot(args.prefix + ".png", meta, rows)


if __name__ == "__main__":
    main()
