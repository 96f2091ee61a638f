"""Gradients: dq, dk, dv and d s_aux through every flash_attn entry point.

The kernels compute in fp16/bf16/fp32 only, so "float64 gradcheck" is done in two honest halves:
  * torch.autograd.gradcheck of the float64 Python reference (its autograd gradients match finite
    differences: the reference gradients below are right), and of flashsdpa's fp32 autograd
    against finite differences of flashsdpa's own fp32 forward (eps 1e-3, atol/rtol 2e-3: fp32
    rounding of the forward limits finite differences to ~1e-4);
  * dtype runs: flashsdpa's gradients in each dtype against the float64 reference's gradients
    with the SPEC §6 rule, factor 3.
"""

import warnings

import pytest
import torch

import flashsdpa
from helpers import DTYPE_IDS, DTYPES, cu_seqlens, randn
from reference import attention_ref, check_close

BATCHED_CASES = {
    "gqa-causal-sinks-d40": (2, 13, 21, 4, 2, 40, 40, {"causal": True, "sinks": True}),
    "window-softcap": (1, 30, 30, 2, 2, 32, 16, {"window_size": (5, 2), "softcap": 2.5}),
    "alibi-sq>sk": (1, 20, 9, 4, 1, 24, 24, {"causal": True, "alibi": True, "sinks": True}),
    "decode": (3, 1, 37, 8, 8, 64, 64, {"causal": True}),
}


def _grads(fn, inputs, dout):
    for t in inputs:
        t.grad = None
    out = fn()
    (out * dout).sum().backward()
    return [t.grad.detach().clone() if t.grad is not None else None for t in inputs]


def _leaf(t, dtype=None):
    return t.detach().to(dtype or t.dtype).requires_grad_(True)


def _check_grads(call, reference, tensors, dout, factor=3.0):
    """call(*tensors) with flashsdpa, reference(*tensors, precision) with the Python reference."""
    ours = _grads(lambda: call(*tensors), tensors, dout)
    leaves64 = [_leaf(t, torch.float64) for t in tensors]
    ref64 = _grads(lambda: reference(*leaves64, "float64"), leaves64, dout.double())
    leaves_lp = [_leaf(t) for t in tensors]
    ref_lp = _grads(lambda: reference(*leaves_lp, "lowp"), leaves_lp, dout.float())
    names = ["dq", "dk", "dv", "ds_aux"]
    for name, got, r64, rlp in zip(names, ours, ref64, ref_lp):
        assert got is not None, f"{name} was not produced"
        assert got.dtype == tensors[names.index(name)].dtype
        check_close(got, r64, rlp, factor, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", list(BATCHED_CASES), ids=str)
def test_flash_attn_func_grads(case, dtype, device):
    batch, sq, sk, hq, hkv, dqk, dv, options = BATCHED_CASES[case]
    options = dict(options)
    q = randn(batch, sq, hq, dqk, dtype=dtype, device=device, requires_grad=True)
    k = randn(batch, sk, hkv, dqk, dtype=dtype, device=device, requires_grad=True)
    v = randn(batch, sk, hkv, dv, dtype=dtype, device=device, requires_grad=True)
    tensors = [q, k, v]
    if options.pop("sinks", False):
        tensors.append(torch.randn(hq, device=device, requires_grad=True))
    if options.pop("alibi", False):
        options["alibi_slopes"] = torch.rand(hq, device=device) * 0.3
    dout = randn(batch, sq, hq, dv, dtype=dtype, device=device)

    def call(q, k, v, sinks=None):
        return flashsdpa.flash_attn_func(q, k, v, s_aux=sinks, **options)

    def reference(q, k, v, sinks=None, precision="float64"):
        if isinstance(sinks, str):
            sinks, precision = None, sinks
        return attention_ref(q, k, v, sinks=sinks, precision=precision, **options)[0]

    _check_grads(call, reference, tensors, dout)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_flash_attn_varlen_func_grads(dtype, device):
    lengths_q, lengths_k = [5, 0, 19, 8], [9, 4, 19, 8]
    hq, hkv, d = 6, 2, 48
    cu_q, cu_k = cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device)
    q = randn(sum(lengths_q), hq, d, dtype=dtype, device=device, requires_grad=True)
    k = randn(sum(lengths_k), hkv, d, dtype=dtype, device=device, requires_grad=True)
    v = randn(sum(lengths_k), hkv, d, dtype=dtype, device=device, requires_grad=True)
    sinks = torch.randn(hq, device=device, requires_grad=True)
    dout = randn(sum(lengths_q), hq, d, dtype=dtype, device=device)
    options = {"causal": True, "window_size": (6, 0), "softcap": 4.0}

    def call(q, k, v, sinks):
        return flashsdpa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), s_aux=sinks,
                                                **options)

    def reference(q, k, v, sinks, precision):
        return attention_ref(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, sinks=sinks, precision=precision,
                             **options)[0]

    _check_grads(call, reference, [q, k, v, sinks], dout)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_packed_grads_reach_the_packed_tensor(dtype, device):
    qkv = randn(2, 11, 3, 4, 32, dtype=dtype, device=device, requires_grad=True)
    dout = randn(2, 11, 4, 32, dtype=dtype, device=device)
    out = flashsdpa.flash_attn_qkvpacked_func(qkv, causal=True)
    (out * dout).sum().backward()
    parts = [_leaf(t) for t in qkv.detach().unbind(dim=2)]
    expected = _grads(lambda: flashsdpa.flash_attn_func(*parts, causal=True), parts, dout)
    torch.testing.assert_close(qkv.grad, torch.stack(expected, dim=2), rtol=0, atol=0)

    lengths = [4, 9]
    cu = cu_seqlens(lengths, device)
    q = randn(13, 4, 16, dtype=dtype, device=device, requires_grad=True)
    kv = randn(13, 2, 2, 16, dtype=dtype, device=device, requires_grad=True)
    out = flashsdpa.flash_attn_varlen_kvpacked_func(q, kv, cu, cu, 9, 9, causal=True)
    out.float().square().sum().backward()
    assert kv.grad is not None and kv.grad.shape == kv.shape and bool(torch.isfinite(kv.grad).all())


def test_sink_gradient_in_parameter_dtype(device):
    # gpt-oss keeps sinks as bf16 parameters: the fp32 kernel gradient comes back in bf16.
    q = randn(1, 8, 4, 16, dtype=torch.bfloat16, device=device, requires_grad=True)
    sinks = torch.zeros(4, dtype=torch.bfloat16, device=device, requires_grad=True)
    flashsdpa.flash_attn_func(q, q, q, causal=True, s_aux=sinks).float().sum().backward()
    assert sinks.grad is not None and sinks.grad.dtype == torch.bfloat16


def test_deterministic_gradients_are_bitwise_repeatable(device):
    q = randn(2, 64, 4, 32, dtype=torch.float32, device=device, requires_grad=True)
    k = randn(2, 64, 2, 32, dtype=torch.float32, device=device, requires_grad=True)
    v = randn(2, 64, 2, 32, dtype=torch.float32, device=device, requires_grad=True)
    dout = torch.randn_like(q)
    runs = [_grads(lambda: flashsdpa.flash_attn_func(q, k, v, causal=True, deterministic=True), [q, k, v], dout)
            for _ in range(2)]
    for first, second in zip(*runs):
        torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_gradcheck_float64_reference():
    q = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 5, 1, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 5, 1, 3, dtype=torch.float64, requires_grad=True)
    sinks = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, sinks):
        return attention_ref(q, k, v, sinks=sinks, causal=True, softcap=2.0, window_size=(2, 0))[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, sinks))


@pytest.mark.parametrize("options", [{}, {"causal": True, "window_size": (1, 0)}, {"softcap": 1.5},
                                     {"causal": True, "alibi": True}],
                         ids=["plain", "causal-window", "softcap", "causal-alibi"])
def test_gradcheck_fp32(options, device):
    options = dict(options)
    if options.pop("alibi", False):
        options["alibi_slopes"] = torch.tensor([0.3, 0.7], device=device)
    q = torch.randn(1, 4, 2, 5, device=device, requires_grad=True)
    k = torch.randn(1, 6, 1, 5, device=device, requires_grad=True)
    v = torch.randn(1, 6, 1, 4, device=device, requires_grad=True)
    sinks = torch.randn(2, device=device, requires_grad=True)

    def fn(q, k, v, sinks):
        return flashsdpa.flash_attn_func(q, k, v, s_aux=sinks, **options)

    with warnings.catch_warnings():
        # gradcheck warns that fp32 inputs are not double precision: that is the point here.
        warnings.simplefilter("ignore", UserWarning)
        assert torch.autograd.gradcheck(fn, (q, k, v, sinks), eps=1e-3, atol=2e-3, rtol=2e-3)
