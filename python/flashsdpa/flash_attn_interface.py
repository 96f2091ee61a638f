"""The flash_attn 2.x Python API, served by flashsdpa.

Names, arguments, defaults and return conventions follow flash_attn.flash_attn_interface, so code
written for flash-attn runs unchanged. Each function also takes ``s_aux``: per-query-head attention
sinks ([Hq], converted to fp32), a logit with no value vector that joins the softmax denominator
(gpt-oss). Extensions over flash-attn 2: ``seqused_k`` on the varlen function, ``s_aux`` everywhere.

Tensors are [batch, seqlen, heads, head_dim] (batched) or [total_tokens, heads, head_dim] (varlen).
``causal`` is aligned to the bottom-right corner of the score matrix, as in flash-attn >= 2.1.
Autograd gives dq, dk, dv and d s_aux; ``flash_attn_with_kvcache`` is inference-only, as in
flash-attn. Dropout is not supported: ``dropout_p > 0`` raises NotImplementedError.
"""

import operator

import torch

from ._ops import ops

__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]


def _window(window_size):
    try:
        left, right = window_size
        if isinstance(left, bool) or isinstance(right, bool):
            raise TypeError
        return operator.index(left), operator.index(right)
    except (TypeError, ValueError):
        raise TypeError(f"window_size must be a pair (left, right) of ints; got {window_size!r}") from None


def _check_dropout(dropout_p):
    if dropout_p:
        raise NotImplementedError(f"dropout is not supported; got dropout_p = {dropout_p}, expected 0")


def _sinks(s_aux):
    # The kernels read fp32 sinks; the cast stays in the autograd graph so d s_aux reaches a
    # bf16/fp16 parameter in its own dtype.
    if s_aux is None:
        return None
    if not isinstance(s_aux, torch.Tensor):
        raise TypeError(f"s_aux must be a tensor of shape [num_heads_q]; got {type(s_aux).__name__}")
    return s_aux if s_aux.dtype == torch.float32 else s_aux.to(torch.float32)


def _softcap(softcap):
    return 0.0 if softcap is None else float(softcap)


class _AttentionFunction(torch.autograd.Function):
    """One autograd node for every non-cache layout: batched, varlen, paged (block_table)."""

    @staticmethod
    def forward(ctx, q, k, v, s_aux, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k,
                block_table, softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
                deterministic):
        # exact_fp32: out and lse feed the backward (AttnParams::exact_fp32 says why).
        out, lse = ops().fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k,
                             block_table, softmax_scale, causal, window_left, window_right, softcap,
                             alibi_slopes, s_aux, 0.0, False, True)
        ctx.save_for_backward(q, k, v, out, lse, s_aux, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table,
                              alibi_slopes)
        ctx.options = (max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left, window_right, softcap,
                       deterministic)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, s_aux, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, alibi_slopes = (
            ctx.saved_tensors)
        max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left, window_right, softcap, deterministic = (
            ctx.options)
        dq, dk, dv, ds_aux = ops().bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k,
                                       max_seqlen_q, max_seqlen_k, block_table, softmax_scale, causal,
                                       window_left, window_right, softcap, alibi_slopes, s_aux,
                                       deterministic, False)
        return (dq, dk, dv, ds_aux if s_aux is not None else None) + (None,) * 13


def _attention(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, seqused_k=None, max_seqlen_q=-1,
               max_seqlen_k=-1, block_table=None, dropout_p=0.0, softmax_scale=None, causal=False,
               window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False, s_aux=None):
    """Returns (out, softmax_lse); differentiable in q, k, v and s_aux."""
    _check_dropout(dropout_p)
    window_left, window_right = _window(window_size)
    sinks = _sinks(s_aux)
    softcap = _softcap(softcap)
    max_seqlen_q = -1 if max_seqlen_q is None else int(max_seqlen_q)
    max_seqlen_k = -1 if max_seqlen_k is None else int(max_seqlen_k)
    softmax_scale = None if softmax_scale is None else float(softmax_scale)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, sinks))
    if needs_grad:
        return _AttentionFunction.apply(q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
                                        max_seqlen_k, block_table, softmax_scale, bool(causal), window_left,
                                        window_right, softcap, alibi_slopes, bool(deterministic))
    return ops().fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, block_table,
                     softmax_scale, bool(causal), window_left, window_right, softcap, alibi_slopes, sinks, 0.0,
                     False)


def _result(out, lse, return_attn_probs):
    # flash-attn returns (out, softmax_lse, S_dmask); S_dmask exists only with dropout.
    return (out, lse, None) if return_attn_probs else out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, s_aux=None):
    """q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, Dv] -> out [B, Sq, Hq, Dv].

    Hq must be a multiple of Hkv (GQA/MQA). With return_attn_probs, returns
    (out, softmax_lse [B, Hq, Sq], None).
    """
    out, lse = _attention(q, k, v, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                          window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                          deterministic=deterministic, s_aux=s_aux)
    return _result(out, lse, return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
                              s_aux=None):
    """qkv [B, S, 3, H, D] -> out [B, S, H, D]. The q, k, v views are read in place."""
    _require_packed(qkv, "qkv", 5, 2, 3)
    return flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale, causal,
                           window_size, softcap, alibi_slopes, deterministic, return_attn_probs, s_aux)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
                             s_aux=None):
    """q [B, Sq, Hq, D], kv [B, Sk, 2, Hkv, D] -> out [B, Sq, Hq, D]."""
    _require_packed(kv, "kv", 5, 2, 2)
    return flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs, s_aux)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, seqused_k=None,
                           s_aux=None):
    """Packed sequences: q [Tq, Hq, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv], cu_seqlens int32 [B+1].

    With block_table (int32 [B, max_blocks_per_seq]), k and v are paged caches
    [num_blocks, block_size, Hkv, D] and sequence b has cu_seqlens_k[b+1] - cu_seqlens_k[b] keys.
    seqused_k (int32 [B]) limits sequence b to its first seqused_k[b] keys.
    With return_attn_probs, returns (out, softmax_lse [Hq, Tq], None).
    """
    out, lse = _attention(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, seqused_k=seqused_k,
                          max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, block_table=block_table,
                          dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                          softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic, s_aux=s_aux)
    return _result(out, lse, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False, s_aux=None):
    """qkv [T, 3, H, D] with cu_seqlens int32 [B+1] -> out [T, H, D]."""
    _require_packed(qkv, "qkv", 4, 1, 3)
    return flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                                  deterministic, return_attn_probs, s_aux=s_aux)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False, s_aux=None):
    """q [Tq, Hq, D], kv [Tk, 2, Hkv, D] -> out [Tq, Hq, D]."""
    _require_packed(kv, "kv", 4, 1, 2)
    return flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                                  deterministic, return_attn_probs, s_aux=s_aux)


def _require_packed(t, name, rank, dim, count):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor; got {type(t).__name__}")
    if t.dim() != rank or t.shape[dim] != count:
        expected = {("qkv", 5): "[B, S, 3, H, D]", ("kv", 5): "[B, Sk, 2, Hkv, D]",
                    ("qkv", 4): "[T, 3, H, D]", ("kv", 4): "[Tk, 2, Hkv, D]"}[(name, rank)]
        raise ValueError(f"{name} must have shape {expected}; got {list(t.shape)}")


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False,
                            s_aux=None):
    """Decoding / chunked prefill against a KV cache, flash-attn 2.x semantics.

    q [B, Sq, Hq, D]; k_cache/v_cache dense [B_cache, S_max, Hkv, D] or, with block_table,
    paged [num_blocks, block_size, Hkv, D]. With k, v ([B, Snew, Hkv, D]) the new tokens are
    first written into the cache in place at cache_seqlens[b] .. cache_seqlens[b] + Snew - 1 (rotary
    applied to k when rotary_cos/rotary_sin [S_ro, rotary_dim / 2] are given), then q attends to keys
    [cache_leftpad[b], cache_seqlens[b] + Snew). cache_seqlens is an int or int32 [B]; the caller
    advances it. Returns out [B, Sq, Hq, Dv], or (out, softmax_lse [B, Hq, Sq]).
    """
    window_left, window_right = _window(window_size)
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (the new tokens to append); got only "
                         + ("k" if v is None else "v"))
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    cache_seqlens_tensor, cache_seqlen = None, -1
    if isinstance(cache_seqlens, torch.Tensor):
        cache_seqlens_tensor = cache_seqlens
    elif cache_seqlens is not None:
        if isinstance(cache_seqlens, bool) or not isinstance(cache_seqlens, int):
            raise TypeError(f"cache_seqlens must be an int or an int32 tensor [B]; got {type(cache_seqlens).__name__}")
        if cache_seqlens < 0:
            raise ValueError(f"cache_seqlens must be >= 0; got {cache_seqlens}")
        cache_seqlen = cache_seqlens
    out, lse = ops().fwd_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens_tensor,
                                 cache_seqlen, cache_batch_idx, cache_leftpad, block_table,
                                 None if softmax_scale is None else float(softmax_scale), bool(causal), window_left,
                                 window_right, _softcap(softcap), bool(rotary_interleaved), alibi_slopes,
                                 int(num_splits), _sinks(s_aux), False)
    return (out, lse) if return_softmax_lse else out
