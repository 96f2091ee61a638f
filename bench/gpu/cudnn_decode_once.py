"""One decode call of torch SDPA's cuDNN backend inside a CUDA profiler range, for profiling it
beside flashsdpa's decode kernel on the same shape:

    ncu --profile-from-start off ... python3 bench/gpu/cudnn_decode_once.py B S HQ HKV HD

bf16, query length 1, K/V laid out as flashsdpa's dense cache ([B, S, Hkv, D], viewed as
[B, Hkv, S, D]); K/V expanded to the query heads where the backend refuses enable_gqa (printed).
Five warm-up calls run outside the range."""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

b, s, hq, hkv, hd = (int(x) for x in sys.argv[1:6])
q = torch.randn(b, 1, hq, hd, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
k = torch.randn(b, s, hkv, hd, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
v = torch.randn(b, s, hkv, hd, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
kwargs = {"enable_gqa": True}
with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
    try:
        F.scaled_dot_product_attention(q, k, v, **kwargs)
    except RuntimeError:
        k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
        kwargs = {}
        print("expanded K/V")
    for _ in range(5):
        F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
