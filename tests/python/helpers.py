"""Tensor builders and SPEC §6 comparisons shared by the Python tests."""

import torch

from reference import attention_ref, check_close, kvcache_ref

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPE_IDS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def randn(*shape, dtype, device, scale=1.0, requires_grad=False):
    t = (torch.randn(shape, dtype=torch.float32) * scale).to(dtype=dtype, device=device)
    return t.requires_grad_(requires_grad)


def cu_seqlens(lengths, device):
    cu = [0]
    for length in lengths:
        cu.append(cu[-1] + length)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def random_block_table(lengths, block_size, num_blocks, device, extra_blocks=0):
    """A shuffled block table: sequence b owns ceil(len / block_size) (+ extra) distinct blocks."""
    per_seq = [-(-length // block_size) + extra_blocks for length in lengths]
    width = max(per_seq + [1])
    assert sum(per_seq) <= num_blocks, "not enough blocks for the table"
    order = torch.randperm(num_blocks).tolist()
    table = torch.zeros(len(lengths), width, dtype=torch.int32)
    used = 0
    for b, count in enumerate(per_seq):
        for slot in range(width):
            if slot < count:
                table[b, slot] = order[used]
                used += 1
            else:
                table[b, slot] = order[0]  # padding entries: never reached for this length
    return table.to(device)


def check_attention(out, lse, q, k, v, factor=2.0, **kwargs):
    """out and lse against the float64 reference with the SPEC §6 rule."""
    out64, lse64 = attention_ref(q, k, v, precision="float64", **kwargs)
    out_lp, lse_lp = attention_ref(q, k, v, precision="lowp", **kwargs)
    check_close(out, out64, out_lp, factor, "out")
    if lse is not None:
        check_close(lse, lse64, lse_lp, factor, "softmax_lse")


def check_kvcache(out, lse, q, k_cache, v_cache, factor=2.0, **kwargs):
    """out/lse of flash_attn_with_kvcache against the reference; returns the expected caches.
    k_cache/v_cache must be the caches as they were before the call."""
    out64, lse64, k_after, v_after = kvcache_ref(q, k_cache, v_cache, precision="float64", **kwargs)
    out_lp, lse_lp, _, _ = kvcache_ref(q, k_cache, v_cache, precision="lowp", **kwargs)
    check_close(out, out64, out_lp, factor, "out")
    if lse is not None:
        check_close(lse, lse64, lse_lp, factor, "softmax_lse")
    return k_after, v_after


def assert_same_bits(a, b, name):
    """Equal element for element, NaN matching NaN."""
    assert a.shape == b.shape, f"{name}: shape {list(a.shape)} != {list(b.shape)}"
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    assert bool(same.all()), f"{name}: {int((~same).sum())} elements differ, first at {(~same).nonzero()[:3].tolist()}"
