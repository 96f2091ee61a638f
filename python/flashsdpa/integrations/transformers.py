"""flashsdpa as a transformers attention backend.

    import flashsdpa.integrations.transformers as fs_tf
    fs_tf.register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="flashsdpa")

register() adds "flashsdpa" to transformers' AttentionInterface, and, where transformers has an
AttentionMaskInterface (>= 4.53), registers the flash-attention mask format for it: no mask when
nothing is padded (causal and sliding windows are computed in the kernel), else the 2D padding
mask, which this backend turns into varlen sequences. Sliding windows (``sliding_window``),
logit softcapping (``softcap``) and attention sinks (``s_aux``, gpt-oss) are passed through.

Models receive query [B, Hq, L, D] and key/value [B, Hkv, S, D] with the cache already appended;
``causal`` is bottom-right aligned, which is what decoding with a cache needs. A 4D mask (a model
or caller that builds its own) cannot be expressed as windows in general: such calls go to
transformers' SDPA implementation, as does dropout during training.

The ``flashsdpa`` module itself also has the shape of a hub attention kernel: its
``flash_attn_func``, ``flash_attn_varlen_func`` and ``flash_attn_with_kvcache`` advertise
``s_aux``, ``window_size``, ``softcap`` (and ``block_table``) in their signatures.
"""

import torch

from ..flash_attn_interface import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

__all__ = ["ATTN_IMPLEMENTATION", "flashsdpa_attention_forward", "register"]

ATTN_IMPLEMENTATION = "flashsdpa"

_registered_names = set()


def _is_tracing():
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def _window(sliding_window):
    # transformers' sliding window W keeps keys with q - k < W: flash-attn's (W - 1, W - 1), and
    # causal cuts the right side to 0.
    if sliding_window is None or sliding_window <= 0:
        return (-1, -1)
    return (int(sliding_window) - 1, int(sliding_window) - 1)


def _cu_seqlens(lengths):
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = torch.cumsum(lengths, dim=0)
    return cu


def _packed_from_position_ids(position_ids, length):
    """cu_seqlens of sequences packed into one row (positions restart at each sequence), or None."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    positions = position_ids[0, :length]
    if positions.numel() != length or length < 2:
        return None
    starts = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    if starts.numel() == 0:
        return None
    bounds = torch.cat((starts.new_zeros(1), starts, starts.new_full((1,), length)))
    return bounds.to(torch.int32), int((bounds[1:] - bounds[:-1]).max())


def _fallback(module, query, key, value, attention_mask, dropout, scaling, reason, softcap=None, s_aux=None,
              **kwargs):
    # transformers' SDPA function has no softcap and no sinks: handing it those would be silently wrong.
    if s_aux is not None or softcap:
        raise NotImplementedError(
            f"attn_implementation='{ATTN_IMPLEMENTATION}' cannot serve {reason} for a layer with "
            + ("attention sinks (s_aux)" if s_aux is not None else "logit softcapping")
            + "; use attn_implementation='eager' for this model")
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def flashsdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                sliding_window=None, softcap=None, s_aux=None, **kwargs):
    """The AttentionInterface function: returns (attn_output [B, L, Hq, Dv], None)."""
    if dropout and module is not None and getattr(module, "training", False):
        return _fallback(module, query, key, value, attention_mask, dropout, scaling, "dropout",
                         sliding_window=sliding_window, softcap=softcap, s_aux=s_aux, **kwargs)
    if attention_mask is not None and attention_mask.dim() != 2:
        return _fallback(module, query, key, value, attention_mask, 0.0, scaling, "a 4D attention mask",
                         sliding_window=sliding_window, softcap=softcap, s_aux=s_aux, **kwargs)

    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    options = {
        "softmax_scale": scaling,
        "causal": bool(is_causal),
        "window_size": _window(sliding_window),
        "softcap": 0.0 if softcap is None else float(softcap),
        "s_aux": s_aux,
    }
    batch, _, length_q, _ = query.shape
    length_k = key.shape[2]
    q = query.transpose(1, 2)  # [B, L, Hq, D]: a view; flashsdpa reads strided tensors
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)

    cu_seqlens_q = kwargs.get("cu_seq_lens_q")
    cu_seqlens_k = kwargs.get("cu_seq_lens_k")
    if attention_mask is None and cu_seqlens_q is not None and cu_seqlens_k is not None and batch == 1:
        # Packed sequences described by the caller (transformers' flattening collators).
        max_q = kwargs.get("max_length_q") or length_q
        max_k = kwargs.get("max_length_k") or length_k
        out = flash_attn_varlen_func(q[0], k[0], v[0], cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32),
                                     int(max_q), int(max_k), **options)
        return out.unsqueeze(0), None

    if attention_mask is None:
        packed = None
        if batch == 1 and length_q == length_k and not _is_tracing():
            packed = _packed_from_position_ids(kwargs.get("position_ids"), length_q)
        if packed is None:
            return flash_attn_func(q, k, v, **options), None
        cu_seqlens, max_len = packed
        out = flash_attn_varlen_func(q[0], k[0], v[0], cu_seqlens, cu_seqlens, max_len, max_len, **options)
        return out.unsqueeze(0), None

    # A 2D padding mask [B, S_mask] (True/1 = real token), aligned to the right end of the keys.
    keep_k = attention_mask[:, -length_k:].to(torch.bool)
    if keep_k.shape[1] != length_k:
        return _fallback(module, query, key, value, attention_mask, 0.0, scaling,
                         "a padding mask shorter than the keys", sliding_window=sliding_window, softcap=softcap,
                         s_aux=s_aux, **kwargs)
    keep_q = keep_k[:, -length_q:]  # the queries are the last L positions
    index_k = torch.nonzero(keep_k.flatten()).flatten()
    index_q = torch.nonzero(keep_q.flatten()).flatten()
    lengths_k = keep_k.sum(dim=1, dtype=torch.int32)
    lengths_q = keep_q.sum(dim=1, dtype=torch.int32)
    heads_q, dim_v = q.shape[2], v.shape[3]
    q_rows = q.reshape(batch * length_q, heads_q, q.shape[3]).index_select(0, index_q)
    k_rows = k.reshape(batch * length_k, k.shape[2], k.shape[3]).index_select(0, index_k)
    v_rows = v.reshape(batch * length_k, v.shape[2], dim_v).index_select(0, index_k)
    out_rows = flash_attn_varlen_func(q_rows, k_rows, v_rows, _cu_seqlens(lengths_q), _cu_seqlens(lengths_k),
                                      int(lengths_q.max()), int(lengths_k.max()), **options)
    # Padded query positions get zeros, as transformers' flash-attention path returns.
    out = out_rows.new_zeros((batch * length_q, heads_q, dim_v)).index_copy(0, index_q, out_rows)
    return out.reshape(batch, length_q, heads_q, dim_v), None


def _keep_registered_names():
    """transformers 5 reads meaning into implementation names: one containing "flash" is taken for a
    flash-attention kernel (imported at model init, from the hub when transformers does not know it,
    and swapped for another by models that list `_compatible_flash_implementations`), one containing
    "sdpa" for torch's SDPA (refused by models without SDPA support). "flashsdpa" is neither, so
    for the names registered here the model-init check accepts the name as it does any other
    registered backend, and transformers' flash-attention loader resolves them to flashsdpa's
    flash_attn functions for the code paths that ask it. Versions without these hooks need nothing.
    """
    try:
        from transformers.modeling_utils import PreTrainedModel
    except ImportError:
        return
    check = getattr(PreTrainedModel, "_check_and_adjust_attn_implementation", None)
    if check is not None and not getattr(check, "__flashsdpa__", False):
        def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
            if isinstance(attn_implementation, str) and attn_implementation in _registered_names:
                return attn_implementation
            return check(self, attn_implementation, *args, **kwargs)

        _check_and_adjust_attn_implementation.__flashsdpa__ = True
        PreTrainedModel._check_and_adjust_attn_implementation = _check_and_adjust_attn_implementation

    try:
        import transformers.modeling_flash_attention_utils as fa_utils
    except ImportError:
        return
    lazy_imports = getattr(fa_utils, "_lazy_imports", None)
    if lazy_imports is not None and not getattr(lazy_imports, "__flashsdpa__", False):
        def _lazy_imports(implementation, *args, **kwargs):
            if implementation in _registered_names:
                from ..bert_padding import pad_input, unpad_input

                return (flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache,
                        getattr(fa_utils, "_pad_input", pad_input), getattr(fa_utils, "_unpad_input", unpad_input))
            return lazy_imports(implementation, *args, **kwargs)

        _lazy_imports.__flashsdpa__ = True
        fa_utils._lazy_imports = _lazy_imports


def register(name=ATTN_IMPLEMENTATION):
    """Makes attn_implementation=name (default "flashsdpa") available. Idempotent; returns name."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, flashsdpa_attention_forward)
    _registered_names.add(name)
    _keep_registered_names()
    try:
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError:
        # Before transformers 4.53 the models build their own masks: 2D padding masks reach the
        # attention function for flash-style backends, 4D ones go to the SDPA fallback above.
        return name
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
