"""How accurate the fp32 attention backends are under the SPEC §6 rule: torch's, and flashsdpa's three
fp32 tiers (cuda-3xtf32-sm90, cuda-dmma-sm90 and cuda-fp32) when the flashsdpa package is importable.

The fp32 bar of the CUDA forward compares cuda-fp32 (exact FFMA, every score one fp32 fmaf chain)
with torch's efficient backend at fp32. On compute capability 8.0 and newer that backend runs its
GEMMs on tensor cores with CUTLASS's OpMultiplyAddFastF32 (three TF32 products per fp32 product), not
in fp32 FMA. This script measures what that means for accuracy, on the rule every flashsdpa fp32
test applies:

    max|out - ref64| <= 2 * max|ref_fp32 - ref64| + 1e-6

ref64 is attention in float64, ref_fp32 the same plain computation in fp32 (cuBLAS SGEMM with TF32
off). Inputs: ordinary logits (q, k ~ N(0, 1)) and extreme ones (|s| ~ 1e4, as the tests' extreme
logits cases), at 1k keys, plus ordinary logits at 8k keys at head dim 128 (long rows: many key
tiles accumulated). Prints one line per case: the error of each backend, the rule's bound, pass/fail.

    python3 bench/gpu/fp32_accuracy.py [--json OUT.json]
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def attention(q, k, v, causal):
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        sq, sk = s.shape[-2], s.shape[-1]
        allowed = torch.ones(sq, sk, dtype=torch.bool, device=s.device).tril(sk - sq)
        s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def backend_out(backend, q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def flashsdpa_out(tier, q, k, v, causal):
    import os
    import flashsdpa
    os.environ["FLASHSDPA_CUDA_FORWARD_TIER"] = tier
    try:  # flash_attn layout [B, S, H, D]
        out = flashsdpa.flash_attn_func(q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
                                        v.transpose(1, 2).contiguous(), causal=causal)
        return out.transpose(1, 2)
    finally:
        del os.environ["FLASHSDPA_CUDA_FORWARD_TIER"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    from torch.nn.attention import SDPBackend
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(7)
    try:
        import flashsdpa  # noqa: F401
        backends = [("3xtf32", "cuda-3xtf32-sm90"), ("dmma", "cuda-dmma-sm90"), ("ffma", "cuda-fp32")]
    except ImportError as e:
        print(f"# flashsdpa not importable ({e}): torch's backends only")
        backends = []
    backends += [("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)]
    cases = [(hd, name, sigma, causal, 1024) for hd in (64, 128, 256)
             for name, sigma in (("ordinary", 1.0), ("extreme", 100.0)) for causal in (False, True)]
    cases += [(128, "ordinary", 1.0, causal, 8192) for causal in (False, True)]
    rows = []
    for hd, scale_name, sigma, causal, s in cases:
        b, h = (2, 4) if s <= 1024 else (1, 2)
        q = torch.randn(b, h, s, hd, device="cuda", generator=gen)
        k = torch.randn(b, h, s, hd, device="cuda", generator=gen)
        v = torch.randn(b, h, s, hd, device="cuda", generator=gen)
        q, k = q * sigma, k * sigma  # scores' standard deviation sigma^2: 1e4 for "extreme"
        ref64 = attention(q.double(), k.double(), v.double(), causal)
        ref32 = attention(q, k, v, causal)
        bound = 2 * (ref32.double() - ref64).abs().max().item() + 1e-6
        row = {"hd": hd, "seqlen": s, "logits": scale_name, "causal": causal, "bound": bound,
               "ref_fp32_err": (ref32.double() - ref64).abs().max().item()}
        for name, backend in backends:
            if isinstance(backend, str) and ((backend == "cuda-3xtf32-sm90" and hd > 128) or
                                             (backend == "cuda-dmma-sm90" and hd <= 128)):
                continue  # head dims each Hopper tier does not serve
            try:
                out = (flashsdpa_out(backend, q, k, v, causal) if isinstance(backend, str)
                       else backend_out(backend, q, k, v, causal))
                err = (out.double() - ref64).abs().max().item()
                row[name + "_err"] = err
                row[name + "_pass"] = err <= bound
            except RuntimeError as e:
                row[name + "_err"] = None
                row[name + "_pass"] = None
                print(f"# {name} hd={hd}: {e}")
        rows.append(row)
        line = f"hd {hd:3d} S {s:5d} {scale_name:8s} causal={str(causal):5s} bound {bound:.3g}"
        for name, _ in backends:
            if row.get(name + "_err") is not None:
                line += (f"  {name} {row[name + '_err']:.3g} ({'pass' if row[name + '_pass'] else 'FAIL'}, "
                         f"{row[name + '_err'] / bound:.2f}x)")
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                       "cuda": torch.version.cuda, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
