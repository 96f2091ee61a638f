#!/usr/bin/env python3
"""Backward benchmark: flashsdpa's CUDA backward (dq, dk, dv) against torch SDPA's flash,
efficient and cuDNN backends on the same inputs.

flashsdpa is timed by `flashsdpa_gpu_bench --backward` (bench/gpu/bench_prefill.cpp: q, k, v, dout
from the counter hash with seeds 1-4, the forward first, then medians of CUDA-event timings of
attention_backward); torch's backends here, on tensors with the very same values, timing
torch.autograd.grad of one SDPA output. TFLOP/s with FlashAttention-2's count for the backward,
2.5x the forward's 4 * B * H * D * pairs. Grid: bf16 and fp32, hd 64 / 128, S 1k / 4k, causal or
not, 16k tokens per batch, hidden 2048.

Writes <prefix>.json (device, torch, cuda, date, rows) and <prefix>.md.
"""
import argparse
import datetime
import json
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench_prefill import HIDDEN, TOKENS, bench_input, flops, time_ms

PEERS = [("torch_flash_tflops", SDPBackend.FLASH_ATTENTION), ("torch_efficient_tflops", SDPBackend.EFFICIENT_ATTENTION),
         ("cudnn_tflops", SDPBackend.CUDNN_ATTENTION)]


def torch_backward(dtype_name, hd, seqlen, causal, iters):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    b, h = TOKENS // seqlen, HIDDEN // hd
    shape = (b, seqlen, h, hd)
    q, k, v, dout = (bench_input(seed, shape, dtype).transpose(1, 2) for seed in (1, 2, 3, 4))
    fl = 2.5 * flops(b, h, seqlen, hd, causal)
    result = {}
    for key, backend in PEERS:
        if dtype == torch.float32 and backend != SDPBackend.EFFICIENT_ATTENTION:
            result[key] = None
            continue
        try:
            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
                ms = time_ms(lambda: torch.autograd.grad(out, (qq, kk, vv), dout, retain_graph=True), iters)
            result[key] = round(fl / (ms * 1e-3) / 1e12, 3)
        except Exception as e:
            print(f"# {key} {dtype_name} hd={hd} s={seqlen} causal={causal}: {type(e).__name__}: {e}", file=sys.stderr)
            result[key] = None
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flashsdpa-bin", default="build-gpu/flashsdpa_gpu_bench")
    ap.add_argument("--prefix", required=True, help="output path without extension")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    proc = subprocess.run([args.flashsdpa_bin, "--backward"], capture_output=True, text=True, check=True)
    rows = []
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        mine = json.loads(line)
        dt, hd, s, causal = mine["dtype"], mine["hd"], mine["seqlen"], mine["causal"]
        row = {"dtype": dt, "hd": hd, "seqlen": s, "batch": mine["batch"], "heads": mine["heads"], "causal": causal,
               "flashsdpa_tier": mine["tier"], "flashsdpa_ms": mine["ms"], "flashsdpa_tflops": mine["tflops"]}
        row.update(torch_backward(dt, hd, s, causal, args.iters))
        rows.append(row)
        print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.date.today().isoformat(), "rows": rows}
    with open(args.prefix + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    with open(args.prefix + ".md", "w") as f:
        f.write(f"# Backward on {meta['device']} ({meta['date']})\n\ntorch {meta['torch']}, CUDA {meta['cuda']}. "
                "TFLOP/s with FlashAttention-2's backward count (2.5x the forward's), medians of CUDA-event "
                "timings, identical inputs.\n\n"
                "| dtype | hd | S | causal | flashsdpa (tier) | torch flash | torch efficient | cuDNN | vs best peer |\n"
                "|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            peers = [r[k] for k, _ in PEERS if r.get(k)]
            vs_best = f"{r['flashsdpa_tflops'] / max(peers):.3f}x" if peers else "-"
            cell = lambda x: "-" if x is None else f"{x:.2f}"
            f.write(f"| {r['dtype']} | {r['hd']} | {r['seqlen']} | {'yes' if r['causal'] else 'no'} | "
                    f"{r['flashsdpa_tflops']:.2f} ({r['flashsdpa_tier']}) | {cell(r.get('torch_flash_tflops'))} | "
                    f"{cell(r.get('torch_efficient_tflops'))} | {cell(r.get('cudnn_tflops'))} | {vs_best} |\n")

if __name__ == "__main__":
    main()
