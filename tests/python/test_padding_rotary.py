"""flashsdpa.bert_padding and flashsdpa.layers.rotary (the flash_attn helper modules)."""

import pytest
import torch

import flashsdpa
from flashsdpa.bert_padding import index_first_axis, pad_input, unpad_input
from flashsdpa.layers.rotary import apply_rotary_emb
from helpers import check_attention, randn
from reference import rotate


def test_unpad_pad_round_trip(device):
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], device=device)
    x = torch.randn(3, 4, 2, 5, device=device, requires_grad=True)
    rows, indices, cu, max_len, used = unpad_input(x, mask)
    assert rows.shape == (6, 2, 5)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 3, 6] and max_len == 3 and used.tolist() == [3, 0, 3]
    back = pad_input(rows, indices, 3, 4)
    torch.testing.assert_close(back, x * mask.view(3, 4, 1, 1))
    back.sum().backward()
    torch.testing.assert_close(x.grad, mask.view(3, 4, 1, 1).float().expand_as(x))
    torch.testing.assert_close(index_first_axis(x.detach().reshape(12, 2, 5), indices), rows.detach())


def test_unused_mask_keeps_tokens_but_reports_them(device):
    mask = torch.tensor([[1, 1, 0, 0]], device=device)
    unused = torch.tensor([[0, 0, 1, 0]], device=device)
    _, indices, cu, max_len, used = unpad_input(torch.zeros(1, 4, 3, device=device), mask, unused)
    assert indices.tolist() == [0, 1, 2] and cu.tolist() == [0, 3] and max_len == 3 and used.tolist() == [2]


def test_unpadded_varlen_attention_matches_per_sequence_attention(device):
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], device=device)
    q = randn(2, 5, 4, 16, dtype=torch.float16, device=device)
    q_rows, indices, cu, max_len, _ = unpad_input(q, mask)
    out = flashsdpa.flash_attn_varlen_func(q_rows, q_rows, q_rows, cu, cu, max_len, max_len, causal=True)
    check_attention(out, None, q_rows, q_rows, q_rows, cu_seqlens_q=cu, cu_seqlens_k=cu, causal=True)
    padded = pad_input(out, indices, 2, 5)
    assert bool((padded[1, :2] == 0).all())


@pytest.mark.parametrize("interleaved", [True, False], ids=["gptj", "neox"])
@pytest.mark.parametrize("rotary_dim", [16, 10])
def test_apply_rotary_emb(interleaved, rotary_dim, device):
    x = torch.randn(2, 7, 3, 16, dtype=torch.float64, device=device)
    angles = torch.rand(12, rotary_dim // 2, dtype=torch.float64, device=device) * 6
    cos, sin = angles.cos(), angles.sin()
    offsets = torch.tensor([0, 5], device=device)
    out = apply_rotary_emb(x.float(), cos.float(), sin.float(), interleaved=interleaved, seqlen_offsets=offsets)
    for b in range(2):
        positions = torch.arange(7, device=device) + int(offsets[b])
        in_range = positions < 12
        expected = x[b].clone()
        expected[in_range] = rotate(x[b][in_range], cos, sin, positions[in_range], interleaved)
        torch.testing.assert_close(out[b].double(), expected, rtol=1e-5, atol=1e-5)


def test_apply_rotary_emb_varlen_and_inplace(device):
    x = torch.randn(9, 2, 8, device=device)
    angles = torch.rand(16, 4, device=device)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32, device=device)
    expected = torch.cat([apply_rotary_emb(x[None, :4], angles.cos(), angles.sin())[0],
                          apply_rotary_emb(x[None, 4:], angles.cos(), angles.sin())[0]])
    result = apply_rotary_emb(x.clone(), angles.cos(), angles.sin(), cu_seqlens=cu, max_seqlen=5)
    torch.testing.assert_close(result, expected)
    target = x.clone()
    returned = apply_rotary_emb(target, angles.cos(), angles.sin(), cu_seqlens=cu, inplace=True)
    assert returned is target
    torch.testing.assert_close(target, expected)


def test_kvcache_rotary_matches_rotating_first(device):
    # flash_attn_with_kvcache's fused rotary equals apply_rotary_emb then plain attention.
    q = randn(1, 3, 2, 16, dtype=torch.float32, device=device)
    k_new = randn(1, 3, 2, 16, dtype=torch.float32, device=device)
    k_cache = torch.zeros(1, 8, 2, 16, device=device)
    v_cache = torch.zeros(1, 8, 2, 16, device=device)
    angles = torch.rand(8, 8, device=device)
    out = flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, k_new, rotary_cos=angles.cos(),
                                            rotary_sin=angles.sin(), cache_seqlens=2, causal=True,
                                            rotary_interleaved=False)
    k_rot = apply_rotary_emb(k_new, angles.cos(), angles.sin(), seqlen_offsets=2)
    torch.testing.assert_close(k_cache[:, 2:5], k_rot, rtol=1e-6, atol=1e-6)
    q_rot = apply_rotary_emb(q, angles.cos(), angles.sin(), seqlen_offsets=2)
    expected = flashsdpa.flash_attn_func(q_rot, k_cache[:, :5], v_cache[:, :5], causal=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
