#!/usr/bin/env python3
"""flashsdpa's CPU backend against torch's CPU scaled_dot_product_attention.

For each point of the grid (head dim 64 / 128, 2k / 4k tokens, causal or not, fp32 / bf16) this
runs `flashsdpa bench --json` (the CLI) and times torch.nn.functional.scaled_dot_product_attention
on the same shapes with the same thread count, then prints a table of GFLOP/s and the ratio
flashsdpa / torch, and writes bench/results/<date>-cpu.json and .md.

FLOPs are counted exactly for both: allowed (query, key) pairs x batch x heads x 2 x (Dqk + Dv)
(the CLI reports this count; torch is credited with the same number). With Sq == Sk, torch's
top-left causal mask and flashsdpa's bottom-right one are the same mask.

Usage:
    python3 bench/cpu_vs_torch.py --threads 16
    python3 bench/cpu_vs_torch.py --flashsdpa build/flashsdpa --batch 1 --heads 16 --iters 10
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def find_cli(explicit):
    if explicit:
        return Path(explicit)
    for candidate in ("build/flashsdpa", "build-cpu/flashsdpa", "build/tools/flashsdpa"):
        path = REPO / candidate
        if path.exists():
            return path
    sys.exit("flashsdpa CLI not found; build it (cmake --build build --target flashsdpa_cli) or pass --flashsdpa")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores():
    """Physical cores (hyperthreads not counted) where lscpu can tell, else logical CPUs."""
    try:
        out = subprocess.run(["lscpu", "-p=core,socket"], capture_output=True, text=True, check=True).stdout
        cores = {line for line in out.splitlines() if line and not line.startswith("#")}
        if cores:
            return len(cores)
    except (OSError, subprocess.CalledProcessError):
        pass
    return os.cpu_count()


def allowed_pairs(seqlen_q, seqlen_k, causal):
    if not causal:
        return seqlen_q * seqlen_k
    # bottom-right aligned: row i sees keys [0, i + Sk - Sq], clipped to [0, Sk)
    diag = seqlen_k - seqlen_q
    return sum(max(0, min(seqlen_k, i + diag + 1)) for i in range(seqlen_q))


def run_flashsdpa(cli, point, args):
    cmd = [
        str(cli), "bench", "--json", "--backend", "cpu",
        "--batch", str(args.batch), "--hq", str(args.heads), "--hkv", str(args.heads_kv or args.heads),
        "--seqlen-q", str(point["seqlen"]), "--seqlen-k", str(point["seqlen"]),
        "--head-dim", str(point["head_dim"]), "--dtype", point["dtype"],
        "--threads", str(args.threads), "--iters", str(args.iters), "--warmup", str(args.warmup),
    ]
    if point["causal"]:
        cmd.append("--causal")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr}")
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("{")]
    return json.loads(lines[-1])


def run_torch(torch, point, args):
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[point["dtype"]]
    heads_kv = args.heads_kv or args.heads
    gen = torch.Generator().manual_seed(0)
    shape_q = (args.batch, args.heads, point["seqlen"], point["head_dim"])
    shape_kv = (args.batch, heads_kv, point["seqlen"], point["head_dim"])
    q = torch.randn(shape_q, generator=gen).to(dtype)
    k = torch.randn(shape_kv, generator=gen).to(dtype)
    v = torch.randn(shape_kv, generator=gen).to(dtype)
    kwargs = {"is_causal": point["causal"]}
    if heads_kv != args.heads:
        kwargs["enable_gqa"] = True
    with torch.inference_mode():
        for _ in range(args.warmup):
            F.scaled_dot_product_attention(q, k, v, **kwargs)
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, **kwargs)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flashsdpa", help="path of the flashsdpa CLI (default: build/flashsdpa)")
    parser.add_argument("--threads", type=int, default=0, help="threads for both (default: torch.get_num_threads())")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16, help="query heads")
    parser.add_argument("--heads-kv", type=int, default=0, help="kv heads (default: --heads)")
    parser.add_argument("--seqlens", default="2048,4096")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--causal", default="0,1", help="which of non-causal (0) / causal (1) to run")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()

    import torch

    if args.threads <= 0:
        args.threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    cli = find_cli(args.flashsdpa)

    grid = [
        {"head_dim": hd, "seqlen": s, "causal": bool(int(c)), "dtype": dt}
        for dt in args.dtypes.split(",")
        for hd in (int(x) for x in args.head_dims.split(","))
        for s in (int(x) for x in args.seqlens.split(","))
        for c in args.causal.split(",")
    ]

    rows = []
    header = f"{'dtype':5} {'hd':>4} {'seqlen':>6} {'causal':>6} | {'flashsdpa ms':>12} {'GFLOP/s':>8} | " \
             f"{'torch ms':>9} {'GFLOP/s':>8} | {'ratio':>6}"
    print(f"flashsdpa CPU vs torch {torch.__version__} SDPA, {args.threads} threads, "
          f"batch {args.batch}, heads {args.heads}/{args.heads_kv or args.heads}, {cpu_model()}")
    print(header)
    print("-" * len(header))
    for point in grid:
        ours = run_flashsdpa(cli, point, args)
        torch_ms = run_torch(torch, point, args)
        pairs = allowed_pairs(point["seqlen"], point["seqlen"], point["causal"])
        flops = ours.get("flops") or pairs * args.batch * args.heads * 2 * (2 * point["head_dim"])
        ours_gflops = flops / (ours["median_ms"] * 1e6)
        torch_gflops = flops / (torch_ms * 1e6)
        row = {
            **point,
            "batch": args.batch,
            "heads_q": args.heads,
            "heads_kv": args.heads_kv or args.heads,
            "threads": args.threads,
            "flops": flops,
            "flashsdpa_ms": ours["median_ms"],
            "flashsdpa_gflops": ours_gflops,
            "flashsdpa_scratch_bytes": ours.get("scratch_bytes"),
            "torch_ms": torch_ms,
            "torch_gflops": torch_gflops,
            "ratio": ours_gflops / torch_gflops,
        }
        rows.append(row)
        print(f"{point['dtype']:5} {point['head_dim']:>4} {point['seqlen']:>6} {str(point['causal']):>6} | "
              f"{ours['median_ms']:>12.2f} {ours_gflops:>8.1f} | {torch_ms:>9.2f} {torch_gflops:>8.1f} | "
              f"{row['ratio']:>6.2f}")

    ratios = [r["ratio"] for r in rows]
    geomean = 1.0
    for r in ratios:
        geomean *= r
    geomean **= 1.0 / len(ratios)
    print(f"ratio flashsdpa / torch: min {min(ratios):.2f}, geomean {geomean:.2f}, max {max(ratios):.2f}")

    today = datetime.date.today().isoformat()
    result = {
        "device": "cpu",
        "cpu_model": cpu_model(),
        "cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "date": today,
        "flashsdpa_cli": str(cli),
        "ratio_min": min(ratios),
        "ratio_geomean": geomean,
        "rows": rows,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{today}-cpu.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# flashsdpa CPU vs torch SDPA ({today})",
        "",
        f"- CPU: {result['cpu_model']} ({result['cores']} cores, {result['logical_cpus']} logical CPUs)",
        f"- threads: {args.threads} for both; torch {torch.__version__}",
        f"- batch {args.batch}, heads {args.heads} (kv {args.heads_kv or args.heads}); median of {args.iters} "
        f"runs after {args.warmup} warm-up",
        "- GFLOP/s = allowed (query, key) pairs x batch x heads x 2 x (Dqk + Dv) / median time",
        "",
        "| dtype | head dim | seqlen | causal | flashsdpa ms | flashsdpa GFLOP/s | torch ms | torch GFLOP/s | ratio |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        md.append(f"| {r['dtype']} | {r['head_dim']} | {r['seqlen']} | {r['causal']} | {r['flashsdpa_ms']:.2f} | "
                  f"{r['flashsdpa_gflops']:.1f} | {r['torch_ms']:.2f} | {r['torch_gflops']:.1f} | {r['ratio']:.2f} |")
    md += ["", f"Ratio flashsdpa / torch: min {min(ratios):.2f}, geomean {geomean:.2f}, max {max(ratios):.2f}.", ""]
    (out_dir / f"{today}-cpu.md").write_text("\n".join(md))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
