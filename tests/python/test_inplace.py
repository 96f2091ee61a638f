"""The seeds' in-place varlen op: flash_attention_varlen(out, query, key, value, ...)."""

import pytest
import torch

import flashsdpa
from helpers import DTYPE_IDS, DTYPES, check_attention, cu_seqlens, randn


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("features", ["plain", "causal-softcap", "sinks-window"])
def test_writes_only_its_slice_of_a_larger_out(features, dtype, device):
    lengths_q, lengths_k = [6, 1, 13], [9, 4, 13]
    hq, hkv, d = 4, 2, 32
    q = randn(sum(lengths_q), hq, d, dtype=dtype, device=device)
    k = randn(sum(lengths_k), hkv, d, dtype=dtype, device=device)
    v = randn(sum(lengths_k), hkv, d, dtype=dtype, device=device)
    cu_q, cu_k = cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device)
    big = torch.full((sum(lengths_q) + 7, hq + 2, d), float("nan"), dtype=dtype, device=device)
    out = big[3:3 + sum(lengths_q), 1:1 + hq]  # strided rows and heads, contiguous last dim

    causal, softcapping, scale, extra, reference = False, 1.0, 0.2, {}, {}
    if features == "causal-softcap":
        causal, softcapping = True, 2.0
        reference["softcap"] = 2.0
    elif features == "sinks-window":
        sinks = torch.randn(hq, device=device)
        extra = {"s_aux": sinks, "window_left": 3, "window_right": 1}
        reference = {"sinks": sinks, "window_size": (3, 1)}
    result = flashsdpa.flash_attention_varlen(out, q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal,
                                              scale, softcapping, **extra)
    assert result is None
    check_attention(out, None, q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal, softmax_scale=scale,
                    **reference)
    untouched = torch.ones(big.shape[:2], dtype=torch.bool, device=device)
    untouched[3:3 + sum(lengths_q), 1:1 + hq] = False
    assert bool(torch.isnan(big[untouched]).all()), "elements outside out's slice were written"
    assert not bool(torch.isnan(out).any()), "out has unwritten elements"


def test_softcapping_one_means_off(device):
    q = randn(9, 2, 16, dtype=torch.float32, device=device, scale=3.0)
    cu = cu_seqlens([9], device)
    out_off = torch.empty_like(q)
    flashsdpa.flash_attention_varlen(out_off, q, q, q, cu, cu, 9, 9, True, 0.25, 1.0)
    expected = flashsdpa.flash_attn_varlen_func(q, q, q, cu, cu, 9, 9, softmax_scale=0.25, causal=True)
    torch.testing.assert_close(out_off, expected, rtol=0, atol=0)
    out_capped = torch.empty_like(q)
    flashsdpa.flash_attention_varlen(out_capped, q, q, q, cu, cu, 9, 9, True, 0.25, 1.5)
    assert not torch.equal(out_capped, out_off)


def test_out_with_a_strided_last_dimension_is_staged(device):
    q = randn(5, 2, 8, dtype=torch.float16, device=device)
    cu = cu_seqlens([5], device)
    big = torch.full((5, 2, 16), float("nan"), dtype=torch.float16, device=device)
    out = big[..., ::2]
    flashsdpa.flash_attention_varlen(out, q, q, q, cu, cu, 5, 5, False, None, 1.0)
    check_attention(out, None, q, q, q, cu_seqlens_q=cu, cu_seqlens_k=cu)
    assert bool(torch.isnan(big[..., 1::2]).all())
