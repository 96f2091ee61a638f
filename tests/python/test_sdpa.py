"""flashsdpa.sdpa: the F.scaled_dot_product_attention patch.

The routing (what is served, what passes through, that nothing raises where the original would
not) is tested on every torch against `sdpa_math`, a plain implementation of torch's documented
SDPA semantics; the install()/uninstall() of the real function needs torch >= 2.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import flashsdpa.sdpa as fs_sdpa
from conftest import TORCH_VERSION
from helpers import randn


def sdpa_math(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """torch's SDPA semantics in float64: top-left causal, True = attend, additive float masks."""
    if attn_mask is not None and is_causal:
        raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")
    if dropout_p > 0:
        torch.manual_seed(1234)
    q, k, v = query.double(), key.double(), value.double()
    if enable_gqa and q.shape[-3] != k.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    length_q, length_k = q.shape[-2], k.shape[-2]
    if is_causal:
        scores = scores.masked_fill(~torch.ones(length_q, length_k, dtype=torch.bool, device=q.device).tril(),
                                    -math.inf)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = scores.softmax(-1)
    if dropout_p > 0:
        weights = torch.nn.functional.dropout(weights, dropout_p)
    return (weights @ v).to(query.dtype)


@pytest.fixture
def patched():
    fs_sdpa.reset_stats()
    return fs_sdpa.make_patched(sdpa_math)


def _served(patched, *args, **kwargs):
    before = fs_sdpa.stats()["served"]
    out = patched(*args, **kwargs)
    return out, fs_sdpa.stats()["served"] - before


def _tensors(device, batch=2, hq=4, hkv=4, length_q=9, length_k=9, dim=16, dtype=torch.float32):
    return (randn(batch, hq, length_q, dim, dtype=dtype, device=device),
            randn(batch, hkv, length_k, dim, dtype=dtype, device=device),
            randn(batch, hkv, length_k, dim, dtype=dtype, device=device))


SERVED = {
    "plain": ({}, {}),
    "causal-square": ({}, {"is_causal": True}),
    "causal-top-left-L>S": ({"length_q": 12, "length_k": 5}, {"is_causal": True}),
    "scale": ({"length_k": 20}, {"scale": 0.3}),
    "gqa": ({"hq": 8, "hkv": 2}, {"enable_gqa": True, "is_causal": True}),
    "bool-causal-mask": ({}, {"attn_mask": "tril"}),
    "bool-band-mask": ({"length_q": 10, "length_k": 14}, {"attn_mask": "band"}),
    "additive-causal-mask": ({}, {"attn_mask": "additive"}),
    "3d": ({"batch": None}, {"is_causal": True}),
}


def _mask(kind, length_q, length_k, device):
    i = torch.arange(length_q, device=device).view(-1, 1)
    j = torch.arange(length_k, device=device).view(1, -1)
    if kind == "tril":
        return (j <= i).view(1, 1, length_q, length_k)
    if kind == "band":  # bottom-right band: 3 keys left of the diagonal, 1 right
        diag = length_k - length_q
        return (j >= i + diag - 3) & (j <= i + diag + 1)
    if kind == "additive":
        return torch.zeros(length_q, length_k, device=device).masked_fill(j > i, torch.finfo(torch.float32).min)
    raise ValueError(kind)


@pytest.mark.parametrize("case", list(SERVED), ids=str)
def test_served_calls_match_the_original(case, patched, device):
    shape, call = SERVED[case]
    shape, call = dict(shape), dict(call)
    three_d = "batch" in shape and shape.pop("batch") is None
    q, k, v = _tensors(device, **shape)
    if three_d:
        q, k, v = q[0], k[0], v[0]
    if isinstance(call.get("attn_mask"), str):
        call["attn_mask"] = _mask(call["attn_mask"], q.shape[-2], k.shape[-2], device)
    out, served = _served(patched, q, k, v, **call)
    assert served == 1, f"{case} was not served"
    torch.testing.assert_close(out, sdpa_math(q, k, v, **call), rtol=2e-5, atol=2e-5)


PASSED_THROUGH = {
    "dropout": ({}, {"dropout_p": 0.1}),
    "causal-L<S": ({"length_q": 3, "length_k": 8}, {"is_causal": True}),
    "float64": ({"dtype": torch.float64}, {}),
    "per-batch-padding-mask": ({}, {"attn_mask": "padding"}),
    "fully-masked-row": ({}, {"attn_mask": "empty-row"}),
    "additive-bias": ({}, {"attn_mask": "bias"}),
    "non-contiguous-band": ({}, {"attn_mask": "holes"}),
}


def _odd_mask(kind, length_q, length_k, device):
    if kind == "padding":
        mask = torch.ones(2, 1, length_q, length_k, dtype=torch.bool, device=device)
        mask[1, :, :, :3] = False
        return mask
    if kind == "empty-row":
        mask = torch.ones(length_q, length_k, dtype=torch.bool, device=device)
        mask[2] = False
        return mask
    if kind == "bias":
        return torch.randn(length_q, length_k, device=device)
    if kind == "holes":
        mask = torch.ones(length_q, length_k, dtype=torch.bool, device=device)
        mask[:, 4] = False
        return mask
    raise ValueError(kind)


@pytest.mark.parametrize("case", list(PASSED_THROUGH), ids=str)
def test_other_calls_pass_through_unchanged(case, patched, device):
    shape, call = PASSED_THROUGH[case]
    call = dict(call)
    q, k, v = _tensors(device, **shape)
    if isinstance(call.get("attn_mask"), str):
        call["attn_mask"] = _odd_mask(call["attn_mask"], q.shape[-2], k.shape[-2], device)
    out, served = _served(patched, q, k, v, **call)
    assert served == 0, f"{case} was served"
    # The original's result, bit for bit (NaN rows included).
    torch.testing.assert_close(out, sdpa_math(q, k, v, **call), rtol=0, atol=0, equal_nan=True)


def test_errors_are_the_originals(patched, device):
    q, k, v = _tensors(device)
    with pytest.raises(RuntimeError, match="is_causal"):
        patched(q, k, v, attn_mask=torch.ones(9, 9, dtype=torch.bool, device=device), is_causal=True)
    with pytest.raises(TypeError):
        patched(q, k)  # missing value: the original's own TypeError
    with pytest.raises(RuntimeError):
        patched(q, k[..., :8], v)  # the original's shape error, not flashsdpa's
    q8 = randn(2, 8, 9, 16, dtype=torch.float32, device=device)
    with pytest.raises(RuntimeError):
        patched(q8, k[:, :2], v[:, :2])  # grouped heads without enable_gqa
    assert fs_sdpa.stats()["served"] == 0


def test_min_seqlen_gate(device):
    patched = fs_sdpa.make_patched(sdpa_math, min_seqlen=64)
    q, k, v = _tensors(device)
    _, served = _served(patched, q, k, v)
    assert served == 0


def test_band_of_mask():
    band = fs_sdpa._band_of_mask
    i = torch.arange(6).view(-1, 1)
    j = torch.arange(6).view(1, -1)
    assert band(j <= i, 6, 6) == (-1, 0)
    assert band((j <= i) & (j >= i - 2), 6, 6) == (2, 0)
    assert band(torch.ones(6, 6, dtype=torch.bool), 6, 6) == (-1, -1)
    assert band((j - i).abs() <= 1, 6, 6) == (1, 1)
    assert band(j > i, 6, 6) is None  # row 5 is empty
    assert band(j >= i, 6, 6) == (0, -1)
    assert band(j[:, :6] >= i[:4] + 3, 4, 6) is None  # starts right of the bottom-right diagonal


def test_gradients_flow_through_a_served_call(patched, device):
    q, k, v = (t.requires_grad_(True) for t in _tensors(device))
    out, served = _served(patched, q, k, v, is_causal=True)
    assert served == 1
    out.sum().backward()
    expected = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    sdpa_math(*expected, is_causal=True).sum().backward()
    for got, want in zip((q, k, v), expected):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(TORCH_VERSION < (2, 0), reason="F.scaled_dot_product_attention needs torch >= 2.0")
def test_install_and_uninstall_the_real_function(device):
    original = F.scaled_dot_product_attention
    fs_sdpa.install()
    try:
        assert fs_sdpa.installed() and F.scaled_dot_product_attention is not original
        fs_sdpa.install()  # idempotent
        q, k, v = _tensors(device, hq=8, hkv=8)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert fs_sdpa.stats()["served"] == 1
        torch.testing.assert_close(out, original(q, k, v, is_causal=True), rtol=1e-4, atol=1e-4)
        F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
        assert fs_sdpa.stats()["passed_through"] == 1
    finally:
        fs_sdpa.uninstall()
    assert F.scaled_dot_product_attention is original and not fs_sdpa.installed()


@pytest.mark.skipif(TORCH_VERSION >= (2, 0), reason="torch >= 2 has F.scaled_dot_product_attention")
def test_install_explains_itself_on_old_torch():
    with pytest.raises(RuntimeError, match="scaled_dot_product_attention"):
        fs_sdpa.install()
