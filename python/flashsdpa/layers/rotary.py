"""Rotary position embedding with the flash_attn.layers.rotary API.

The rotation is the one the KV-cache kernels apply (SPEC §3): cos/sin tables [S_ro, rotary_dim / 2],
interleaved=True rotates pairs (0,1),(2,3),... (GPT-J), False rotates the two halves of the first
rotary_dim dims (GPT-NeoX); dims past rotary_dim pass through. Computed in fp32, returned in x's
dtype. Positions at or past S_ro are left unrotated, as flash-attn's kernel does.
"""

import torch

__all__ = ["apply_rotary_emb", "apply_rotary_emb_func"]


def _positions(x, seqlen_offsets, cu_seqlens, max_seqlen):
    """Position of every row of x: [B, S] for batched x, [T] for varlen x."""
    device = x.device
    if cu_seqlens is None:
        batch, seqlen = x.shape[0], x.shape[1]
        pos = torch.arange(seqlen, device=device).unsqueeze(0).expand(batch, seqlen)
        if isinstance(seqlen_offsets, torch.Tensor):
            return pos + seqlen_offsets.to(device=device, dtype=torch.long).reshape(batch, 1)
        return pos + int(seqlen_offsets)
    total = x.shape[0]
    token = torch.arange(total, device=device)
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    seq = torch.searchsorted(cu[1:], token, right=True)
    pos = token - cu[seq]
    if isinstance(seqlen_offsets, torch.Tensor):
        return pos + seqlen_offsets.to(device=device, dtype=torch.long)[seq]
    return pos + int(seqlen_offsets)


def apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
                     max_seqlen=None):
    """x [B, S, H, D] (or [T, H, D] with cu_seqlens int32 [B+1]); cos, sin [S_ro, rotary_dim / 2].

    seqlen_offsets: int or [B] tensor, the position of each sequence's first row (decoding with a
    KV cache). inplace=True writes the result into x and returns x.
    """
    if cos.shape != sin.shape or cos.dim() != 2:
        raise ValueError(f"cos and sin must both be [S_ro, rotary_dim / 2]; got {list(cos.shape)} and {list(sin.shape)}")
    rotary_dim = 2 * cos.shape[1]
    head_dim = x.shape[-1]
    if rotary_dim > head_dim:
        raise ValueError(f"rotary_dim (2 * cos.shape[1] = {rotary_dim}) must be <= head_dim ({head_dim})")
    expected_rank = 3 if cu_seqlens is not None else 4
    if x.dim() != expected_rank:
        layout = "[T, H, D] with cu_seqlens" if cu_seqlens is not None else "[B, S, H, D]"
        raise ValueError(f"x must be {layout}; got shape {list(x.shape)}")

    pos = _positions(x, seqlen_offsets, cu_seqlens, max_seqlen)
    in_range = pos < cos.shape[0]
    safe = torch.where(in_range, pos, torch.zeros_like(pos))
    c = torch.where(in_range.unsqueeze(-1), cos.float()[safe], torch.ones((), device=x.device))
    s = torch.where(in_range.unsqueeze(-1), sin.float()[safe], torch.zeros((), device=x.device))
    c, s = c.unsqueeze(-2), s.unsqueeze(-2)  # broadcast over heads

    rot = x[..., :rotary_dim].float()
    if interleaved:
        x0, x1 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    else:
        x0, x1 = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2:]
        rotated = torch.cat((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    rotated = rotated.to(x.dtype)
    if inplace:
        x[..., :rotary_dim].copy_(rotated)
        return x
    if rotary_dim == head_dim:
        return rotated
    return torch.cat((rotated, x[..., rotary_dim:]), dim=-1)


# The name flash-attn's older releases exported.
apply_rotary_emb_func = apply_rotary_emb
