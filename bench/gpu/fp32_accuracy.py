"""How accurate torch's fp32 SDPA backends are under the SPEC §6 rule.

The fp32 bar of the CUDA forward compares cuda-fp32 (exact FFMA, every score one fp32 fmaf chain)
with torch's efficient backend at fp32. On compute capability 8.0 and newer that backend runs its
GEMMs on tensor cores with CUTLASS's OpMultiplyAddFastF32 (three TF32 products per fp32 product), not
in fp32 FMA. This script measures what that means for accuracy, on the rule every flashsdpa fp32
test applies:

    max|out - ref64| <= 2 * max|ref_fp32 - ref64| + 1e-6

ref64 is attention in float64, ref_fp32 the same plain computation in fp32 (cuBLAS SGEMM with TF32
off). Inputs: ordinary logits (q, k ~ N(0, 1)) and extreme ones (|s| ~ 1e4, as the tests' extreme
logits cases). Prints one line per case: the error of each backend, the rule's bound, pass/fail.

    python3 bench/gpu/fp32_accuracy.py [--json OUT.json]
"""
import argparse
import json
import math

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    from torch.nn.attention import SDPBackend
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(7)
    rows = []
    for hd in (64, 128, 256):
        for scale_name, sigma in (("ordinary", 1.0), ("extreme", 100.0)):
            for causal in (False, True):
                b, h, s = 2, 4, 1024
                q = torch.randn(b, h, s, hd, device="cuda", generator=gen)
                k = torch.randn(b, h, s, hd, device="cuda", generator=gen)
                v = torch.randn(b, h, s, hd, device="cuda", generator=gen)
                q, k = q * sigma, k * sigma  # scores' standard deviation sigma^2: 1e4 for "extreme"
                ref64 = attention(q.double(), k.double(), v.double(), causal)
                ref32 = attention(q, k, v, causal)
                bound = 2 * (ref32.double() - ref64).abs().max().item() + 1e-6
                row = {"hd": hd, "logits": scale_name, "causal": causal, "bound": bound,
                       "ref_fp32_err": (ref32.double() - ref64).abs().max().item()}
                for name, backend in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)):
                    try:
                        out = backend_out(backend, q, k, v, causal)
                        err = (out.double() - ref64).abs().max().item()
                        row[name + "_err"] = err
                        row[name + "_pass"] = err <= bound
                    except RuntimeError as e:
                        row[name + "_err"] = None
                        row[name + "_pass"] = None
                        print(f"# {name} hd={hd}: {e}")
                rows.append(row)
                print(f"hd {hd:3d} {scale_name:8s} causal={str(causal):5s} bound {bound:.3g}  "
                      f"efficient {row['efficient_err']:.3g} ({'pass' if row['efficient_pass'] else 'FAIL'}, "
                      f"{row['efficient_err'] / bound:.1f}x bound)  math {row['math_err']:.3g}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "cuda": torch.version.cuda, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
