"""flash_attn_func, flash_attn_varlen_func (incl. paged and seqused_k) and the packed variants
against the float64 reference (SPEC §6)."""

import math

import pytest
import torch

import flashsdpa
from helpers import DTYPE_IDS, DTYPES, check_attention, cu_seqlens, randn, random_block_table
from reference import attention_ref, check_close

# (B, Sq, Sk, Hq, Hkv, Dqk, Dv, options)
BATCHED_CASES = {
    "plain": (2, 33, 33, 4, 4, 64, 64, {}),
    "gqa2-causal-d59": (2, 17, 40, 8, 4, 59, 59, {"causal": True}),
    "mqa-causal-sq>sk": (1, 50, 20, 4, 1, 40, 32, {"causal": True}),
    "gqa8-window-softcap": (2, 64, 64, 8, 1, 32, 32, {"window_size": (8, 4), "softcap": 5.0}),
    "alibi-sinks-dv24": (1, 31, 47, 4, 4, 16, 24, {"alibi": "heads", "sinks": True}),
    "alibi-batch-window-left": (2, 40, 40, 2, 2, 48, 48, {"alibi": "batch", "window_size": (5, -1), "causal": True}),
    "decode-sinks-d128": (3, 1, 97, 8, 8, 128, 128, {"causal": True, "sinks": True}),
    "d111-len97": (1, 97, 97, 2, 1, 111, 111, {"softmax_scale": 0.05}),
    "window-right-only": (1, 20, 30, 2, 2, 8, 8, {"window_size": (-1, 3)}),
}


def _options(case_options, batch, heads_q, device):
    options = dict(case_options)
    alibi = options.pop("alibi", None)
    if alibi == "heads":
        options["alibi_slopes"] = torch.rand(heads_q, device=device) * 0.5
    elif alibi == "batch":
        options["alibi_slopes"] = torch.rand(batch, heads_q, device=device) * 0.5
    if options.pop("sinks", False):
        options["sinks"] = torch.randn(heads_q, device=device) * 2
    return options


def _call_options(options):
    """flash_attn_* keyword arguments from reference keyword arguments."""
    call = dict(options)
    if "sinks" in call:
        call["s_aux"] = call.pop("sinks")
    return call


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", list(BATCHED_CASES), ids=str)
def test_flash_attn_func(case, dtype, device):
    batch, sq, sk, hq, hkv, dqk, dv, case_options = BATCHED_CASES[case]
    options = _options(case_options, batch, hq, device)
    q = randn(batch, sq, hq, dqk, dtype=dtype, device=device)
    k = randn(batch, sk, hkv, dqk, dtype=dtype, device=device)
    v = randn(batch, sk, hkv, dv, dtype=dtype, device=device)
    out, lse, probs = flashsdpa.flash_attn_func(q, k, v, return_attn_probs=True, **_call_options(options))
    assert out.dtype == dtype and out.shape == (batch, sq, hq, dv)
    assert lse.dtype == torch.float32 and lse.shape == (batch, hq, sq)
    assert probs is None
    check_attention(out, lse, q, k, v, **options)


def test_flash_attn_func_returns_only_out_by_default(device):
    q = randn(1, 4, 2, 8, dtype=torch.float32, device=device)
    out = flashsdpa.flash_attn_func(q, q, q)
    assert isinstance(out, torch.Tensor) and out.shape == q.shape


def test_rows_without_keys_are_zero_with_lse_minus_inf(device):
    # causal with Sq > Sk: the first Sq - Sk query rows see no key (SPEC §2).
    q = randn(1, 6, 2, 8, dtype=torch.float32, device=device)
    k = randn(1, 2, 2, 8, dtype=torch.float32, device=device)
    out, lse, _ = flashsdpa.flash_attn_func(q, k, k, causal=True, return_attn_probs=True)
    assert bool((out[:, :4] == 0).all())
    assert bool(torch.isneginf(lse[:, :, :4]).all())
    # With a sink, such rows give out = 0 and lse = sink.
    sinks = torch.tensor([0.5, -1.0], device=device)
    out, lse, _ = flashsdpa.flash_attn_func(q, k, k, causal=True, return_attn_probs=True, s_aux=sinks)
    assert bool((out[:, :4] == 0).all())
    torch.testing.assert_close(lse[0, :, :4], sinks.view(2, 1).expand(2, 4))


def test_extreme_logits_fp32(device):
    # |s| ~ 1e4: the online softmax must not overflow.
    q = randn(1, 16, 2, 32, dtype=torch.float32, device=device, scale=30.0)
    k = randn(1, 24, 2, 32, dtype=torch.float32, device=device, scale=30.0)
    v = randn(1, 24, 2, 32, dtype=torch.float32, device=device)
    out, lse, _ = flashsdpa.flash_attn_func(q, k, v, softmax_scale=1.0, return_attn_probs=True)
    assert bool(torch.isfinite(out).all())
    check_attention(out, lse, q, k, v, softmax_scale=1.0)


def test_strided_inputs(device):
    # [B, H, S, D] storage seen as [B, S, H, D]: read in place, same result as contiguous inputs.
    q = randn(2, 3, 10, 16, dtype=torch.float32, device=device).transpose(1, 2)
    k = randn(2, 3, 12, 16, dtype=torch.float32, device=device).transpose(1, 2)
    v = randn(2, 3, 12, 16, dtype=torch.float32, device=device).transpose(1, 2)
    out = flashsdpa.flash_attn_func(q, k, v, causal=True)
    expected = flashsdpa.flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # A last dimension that is not contiguous is copied by the binding.
    wide = randn(2, 10, 3, 32, dtype=torch.float32, device=device)
    out = flashsdpa.flash_attn_func(wide[..., ::2], k, v)
    check_attention(out, None, wide[..., ::2].contiguous(), k, v)


# ---------------------------------------------------------------------------------------------
# varlen

VARLEN_CASES = {
    "plain": ([5, 17, 1], [5, 17, 1], 4, 4, 32, 32, {}),
    "causal-gqa-empty": ([9, 0, 30], [12, 7, 30], 8, 2, 40, 40, {"causal": True}),
    "window-softcap-sinks": ([33, 64], [33, 64], 4, 1, 64, 48, {"window_size": (6, 0), "softcap": 3.0,
                                                                 "sinks": True}),
    "alibi-batch": ([7, 20, 3], [15, 20, 30], 2, 2, 24, 24, {"alibi": "batch", "causal": True}),
    "hq-kv-heads": ([4, 11], [19, 2], 4, 4, 16, 16, {"sinks": True}),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", list(VARLEN_CASES), ids=str)
def test_flash_attn_varlen_func(case, dtype, device):
    lengths_q, lengths_k, hq, hkv, dqk, dv, case_options = VARLEN_CASES[case]
    options = _options(case_options, len(lengths_q), hq, device)
    q = randn(sum(lengths_q), hq, dqk, dtype=dtype, device=device)
    k = randn(sum(lengths_k), hkv, dqk, dtype=dtype, device=device)
    v = randn(sum(lengths_k), hkv, dv, dtype=dtype, device=device)
    cu_q, cu_k = cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device)
    out, lse, _ = flashsdpa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k),
                                                   return_attn_probs=True, **_call_options(options))
    assert out.shape == (sum(lengths_q), hq, dv) and lse.shape == (hq, sum(lengths_q))
    check_attention(out, lse, q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **options)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_varlen_seqused_k(dtype, device):
    lengths_q, lengths_k, used = [3, 8, 5], [10, 8, 12], [4, 0, 12]
    q = randn(sum(lengths_q), 4, 32, dtype=dtype, device=device)
    k = randn(sum(lengths_k), 2, 32, dtype=dtype, device=device)
    v = randn(sum(lengths_k), 2, 32, dtype=dtype, device=device)
    cu_q, cu_k = cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device)
    seqused = torch.tensor(used, dtype=torch.int32, device=device)
    out, lse, _ = flashsdpa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 8, 12, causal=True, seqused_k=seqused,
                                                   return_attn_probs=True)
    check_attention(out, lse, q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, seqused_k=seqused, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("block_size", [16, 5], ids=lambda bs: f"block{bs}")
def test_varlen_paged_kv(block_size, dtype, device):
    lengths_q, lengths_k = [1, 6, 2], [37, 6, 50]
    hq, hkv, d = 8, 2, 64
    num_blocks = sum(-(-n // block_size) for n in lengths_k) + 3
    k_cache = randn(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
    v_cache = randn(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
    table = random_block_table(lengths_k, block_size, num_blocks, device)
    q = randn(sum(lengths_q), hq, d, dtype=dtype, device=device)
    cu_q, cu_k = cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device)
    sinks = torch.randn(hq, device=device)
    out, lse, _ = flashsdpa.flash_attn_varlen_func(q, k_cache, v_cache, cu_q, cu_k, max(lengths_q), max(lengths_k),
                                                   causal=True, block_table=table, s_aux=sinks,
                                                   return_attn_probs=True)
    check_attention(out, lse, q, k_cache, v_cache, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, block_table=table,
                    causal=True, sinks=sinks)


# ---------------------------------------------------------------------------------------------
# packed variants: the packed views are read in place and give what the unpacked call gives


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_qkvpacked(dtype, device):
    qkv = randn(2, 21, 3, 4, 32, dtype=dtype, device=device)
    out = flashsdpa.flash_attn_qkvpacked_func(qkv, causal=True, window_size=(7, 0))
    q, k, v = qkv.unbind(dim=2)
    torch.testing.assert_close(out, flashsdpa.flash_attn_func(q, k, v, causal=True, window_size=(7, 0)),
                               rtol=0, atol=0)
    check_attention(out, None, q, k, v, causal=True, window_size=(7, 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_kvpacked(dtype, device):
    q = randn(2, 9, 8, 32, dtype=dtype, device=device)
    kv = randn(2, 30, 2, 2, 32, dtype=dtype, device=device)
    sinks = torch.randn(8, device=device)
    out = flashsdpa.flash_attn_kvpacked_func(q, kv, causal=True, s_aux=sinks)
    check_attention(out, None, q, kv[:, :, 0], kv[:, :, 1], causal=True, sinks=sinks)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_varlen_qkvpacked(dtype, device):
    lengths = [7, 1, 25]
    qkv = randn(sum(lengths), 3, 4, 40, dtype=dtype, device=device)
    cu = cu_seqlens(lengths, device)
    out = flashsdpa.flash_attn_varlen_qkvpacked_func(qkv, cu, max(lengths), causal=True, softcap=4.0)
    check_attention(out, None, qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens_q=cu, cu_seqlens_k=cu, causal=True,
                    softcap=4.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_varlen_kvpacked(dtype, device):
    lengths_q, lengths_k = [3, 12], [16, 12]
    q = randn(sum(lengths_q), 6, 24, dtype=dtype, device=device)
    kv = randn(sum(lengths_k), 2, 3, 24, dtype=dtype, device=device)
    cu_q, cu_k = cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device)
    out, lse, _ = flashsdpa.flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, 12, 16, window_size=(4, 4),
                                                            return_attn_probs=True)
    check_attention(out, lse, q, kv[:, 0], kv[:, 1], cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, window_size=(4, 4))


def test_reference_agrees_with_plain_softmax(device):
    # The test reference itself, against the textbook formula on a case with no special features.
    q = torch.randn(1, 5, 2, 8, dtype=torch.float64, device=device)
    k = torch.randn(1, 7, 2, 8, dtype=torch.float64, device=device)
    v = torch.randn(1, 7, 2, 8, dtype=torch.float64, device=device)
    out, lse = attention_ref(q, k, v)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    expected = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(lse, scores.logsumexp(-1))
    check_close(out, expected, expected, 0.0)


def test_exact_fp32_forward_with_one_key_returns_v(device):
    # One key: p = 1 and out = v exactly in fp32 products; exact_fp32 (the op's last argument, set by
    # the autograd path) must keep it so, whatever tier the selector would take otherwise.
    q = randn(2, 5, 2, 64, dtype=torch.float32, device=device)
    k = randn(2, 1, 2, 64, dtype=torch.float32, device=device)
    v = randn(2, 1, 2, 64, dtype=torch.float32, device=device)
    out, _ = flashsdpa._ops.ops().fwd(q, k, v, None, None, None, -1, -1, None, None, False, -1, -1, 0.0, None, None,
                                      0.0, False, True)
    assert torch.equal(out, v.expand(2, 5, 2, 64))
    default = flashsdpa.flash_attn_func(q, k, v)  # any fp32 tier: within fp32 rounding of v
    assert (default - v).abs().max().item() <= 1e-6 * max(1.0, v.abs().max().item())


def test_fp32_gradients_of_a_lone_key_vanish(device):
    # With one key the softmax is constant: dk = 0 exactly in exact arithmetic; the forward that
    # feeds the backward runs with exact fp32 products, so rowsum(dout * out) matches dout . v.
    q = randn(1, 7, 2, 64, dtype=torch.float32, device=device).requires_grad_()
    k = randn(1, 1, 2, 64, dtype=torch.float32, device=device).requires_grad_()
    v = randn(1, 1, 2, 64, dtype=torch.float32, device=device).requires_grad_()
    out = flashsdpa.flash_attn_func(q, k, v)
    out.backward(randn(*out.shape, dtype=torch.float32, device=device))
    assert k.grad.abs().max().item() <= 1e-6
    assert q.grad.abs().max().item() <= 1e-6
