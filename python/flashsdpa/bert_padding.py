"""Padding helpers with the flash_attn.bert_padding API (flash-attn >= 2.7 conventions).

``unpad_input`` gathers the valid tokens of a padded batch into the varlen layout the
``flash_attn_varlen_*`` functions take; ``pad_input`` scatters them back. Both are differentiable.
"""

import torch

__all__ = ["index_first_axis", "index_put_first_axis", "pad_input", "unpad_input"]


def index_first_axis(input, indices):
    """input[indices] along the first axis (the rows of a [N, ...] tensor)."""
    return input.index_select(0, indices)


def index_put_first_axis(values, indices, first_axis_dim):
    """A zero tensor [first_axis_dim, ...] with values scattered to rows `indices`."""
    out = values.new_zeros((first_axis_dim,) + tuple(values.shape[1:]))
    return out.index_copy(0, indices, values)


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """hidden_states [B, S, ...], attention_mask [B, S] (nonzero = valid token).

    ``unused_mask`` [B, S] marks tokens that are kept in the packed layout but not attended
    (their count is reported separately in ``seqused``).
    Returns (hidden_states [T, ...], indices [T] into the flattened B*S rows, cu_seqlens int32 [B+1],
    max_seqlen_in_batch (int), seqused int32 [B]).
    """
    valid = attention_mask.bool()
    kept = valid | unused_mask.bool() if unused_mask is not None else valid
    seqlens = kept.sum(dim=-1, dtype=torch.int32)
    seqused = valid.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(kept.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max().item()) if seqlens.numel() else 0
    cu_seqlens = torch.zeros(seqlens.numel() + 1, dtype=torch.int32, device=seqlens.device)
    cu_seqlens[1:] = torch.cumsum(seqlens, dim=0, dtype=torch.int32)
    rows = hidden_states.reshape((-1,) + tuple(hidden_states.shape[2:]))
    return index_first_axis(rows, indices), indices, cu_seqlens, max_seqlen, seqused


def pad_input(hidden_states, indices, batch, seqlen):
    """hidden_states [T, ...] at flattened positions `indices` -> [batch, seqlen, ...], zeros elsewhere."""
    out = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return out.reshape((batch, seqlen) + tuple(hidden_states.shape[1:]))
