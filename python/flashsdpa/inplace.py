"""Operations that write caller-owned tensors in place.

``flash_attention_varlen`` is the varlen kernel entry point of the metal-flash-sdpa package
(``out`` written in place, ``softcapping=1.0`` meaning off), extended with its later sinks and
sliding-window arguments. ``kv_paged_write`` writes new tokens into a paged KV cache in one call.
Neither records autograd history.
"""

from ._ops import ops

__all__ = ["flash_attention_varlen", "kv_paged_write"]


def flash_attention_varlen(out, query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           do_causal, scale, softcapping, s_aux=None, window_left=-1, window_right=-1):
    """Varlen attention into ``out`` [Tq, Hq, Dv] (any strides but a contiguous last dimension).

    query [Tq, Hq, D], key [Tk, Hkv, D], value [Tk, Hkv, Dv]; cu_seqlens int32 [B+1].
    ``scale`` multiplies q.k (None: 1/sqrt(D)); ``softcapping`` 1.0 means no softcapping, any other
    positive value c applies c * tanh(s / c). ``s_aux``: attention sinks [Hq]. Window sides are
    -1 for unbounded. Only ``out`` is written, and only when every argument is valid. Returns None.
    """
    softcap = 0.0 if softcapping is None or float(softcapping) == 1.0 else float(softcapping)
    sinks = None
    if s_aux is not None:
        sinks = s_aux.detach().float()
    ops().fwd_out(out, query, key, value, cu_seqlens_q, cu_seqlens_k, None, int(max_seqlen_q), int(max_seqlen_k),
                  None, None if scale is None else float(scale), bool(do_causal), int(window_left),
                  int(window_right), softcap, None, sinks, 0.0, False)


def kv_paged_write(k_cache, v_cache, k_new, v_new, block_table, cache_seqlens, cu_seqlens_new=None):
    """Writes new tokens into a paged cache [num_blocks, block_size, Hkv, D], in place.

    k_new/v_new are batched [B, Snew, Hkv, D] or varlen [T, Hkv, D] with cu_seqlens_new int32 [B+1].
    Token t of sequence b lands at logical position cache_seqlens[b] + t, i.e. row
    (cache_seqlens[b] + t) % block_size of block block_table[b][(cache_seqlens[b] + t) // block_size].
    Returns None.
    """
    ops().paged_kv_write(k_cache, v_cache, k_new, v_new, block_table, cache_seqlens, cu_seqlens_new, False)
