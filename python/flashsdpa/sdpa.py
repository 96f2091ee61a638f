"""Route ``torch.nn.functional.scaled_dot_product_attention`` to flashsdpa where it is exact.

    import flashsdpa.sdpa
    flashsdpa.sdpa.install()     # opt-in, process-wide
    ...
    flashsdpa.sdpa.uninstall()

A call is served only when flashsdpa computes exactly what the original would:
  * query/key/value are dense fp16/bf16/fp32 tensors of one dtype on one CPU or CUDA device,
    [B, H, L, E] or [H, L, E], with equal batch dims;
  * dropout_p == 0 (torch applies dropout whenever it is > 0, training or not);
  * heads equal, or enable_gqa=True with Hq a multiple of Hkv;
  * is_causal keeps torch's top-left alignment (query i sees keys j <= i): served when L >= S,
    where it is a window, and passed through when L < S;
  * attn_mask is None, or one [L, S] boolean/additive pattern shared by every batch and head that
    is a band (a sliding window, causal or not) with no fully masked row. Masks are inspected only
    outside torch.compile tracing and CUDA graph capture (inspection reads the mask on the host).
Everything else, and any call flashsdpa refuses, goes to the original function, so the patch never
raises where the original would not. ``stats()`` counts both.
"""

import functools
import math
import os
import threading

import torch
import torch.nn.functional as F

from .flash_attn_interface import flash_attn_func

__all__ = ["install", "uninstall", "installed", "stats", "reset_stats", "make_patched"]

_SERVED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = {"cpu": 512, "cuda": 256}

_lock = threading.Lock()
_original = None
_counts = {"served": 0, "passed_through": 0}


def stats():
    """{'served': n, 'passed_through': n} since install() or reset_stats()."""
    return dict(_counts)


def reset_stats():
    _counts["served"] = 0
    _counts["passed_through"] = 0


def installed():
    return _original is not None


def install(min_seqlen=None):
    """Patches F.scaled_dot_product_attention (idempotent). Calls with max(L, S) < min_seqlen stay
    on the original (default: $FLASHSDPA_SDPA_MIN_SEQ, else 0)."""
    global _original
    if not hasattr(F, "scaled_dot_product_attention"):
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.nn.functional.scaled_dot_product_attention (torch >= 2.0)")
    if min_seqlen is None:
        min_seqlen = int(os.environ.get("FLASHSDPA_SDPA_MIN_SEQ", "0"))
    with _lock:
        if _original is not None:
            return
        _original = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = make_patched(_original, min_seqlen=min_seqlen)
        reset_stats()


def uninstall():
    """Restores the original function (no-op when not installed)."""
    global _original
    with _lock:
        if _original is None:
            return
        F.scaled_dot_product_attention = _original
        _original = None


def _parse(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


def _tracing():
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return True
    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is not None and hasattr(dynamo, "is_compiling") and dynamo.is_compiling():
        return True
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _band_of_mask(mask, length_q, length_k):
    """(window_left, window_right) in flashsdpa's bottom-right convention when the [.., L, S] mask is
    one band with no empty row; None otherwise."""
    if mask.dim() < 2 or tuple(mask.shape[-2:]) != (length_q, length_k):
        return None
    if any(extent != 1 for extent in mask.shape[:-2]):
        return None
    pattern = mask.reshape(length_q, length_k)
    if pattern.dtype == torch.bool:
        allowed = pattern
    elif pattern.is_floating_point():
        # Additive masks: 0 keeps a key; -inf (or the dtype's lowest value, which exp() flushes to
        # exactly 0 next to any kept score) drops it. Any other value is a bias: not a band.
        dropped = pattern <= torch.finfo(pattern.dtype).min
        allowed = pattern == 0
        if not bool((allowed | dropped).all()):
            return None
    else:
        return None
    count = allowed.sum(dim=1)
    if not bool((count > 0).all()):
        return None  # a fully masked row: torch gives NaN or uniform weights, not 0
    cols = torch.arange(length_k, device=mask.device)
    first = torch.where(allowed, cols, torch.full_like(cols, length_k)).amin(dim=1)
    last = torch.where(allowed, cols, torch.full_like(cols, -1)).amax(dim=1)
    if not bool((count == last - first + 1).all()):
        return None
    rows = torch.arange(length_q, device=mask.device)
    diag = length_k - length_q
    bounds = torch.stack((rows + diag - first, last - rows - diag)).tolist()
    lefts, rights = bounds
    first, last = first.tolist(), last.tolist()

    def side(offsets, clipped):
        # Rows whose band is cut by the matrix edge only bound the window from below.
        exact = {o for o, c in zip(offsets, clipped) if not c}
        if len(exact) > 1:
            return None
        if not exact:
            return -1
        value = exact.pop()
        if value < 0 or any(o > value for o, c in zip(offsets, clipped) if c):
            return None
        return value

    window_left = side(lefts, [f == 0 for f in first])
    window_right = side(rights, [l == length_k - 1 for l in last])
    if window_left is None or window_right is None:
        return None
    return window_left, window_right


def _plan(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, min_seqlen):
    """The flash_attn_func arguments that reproduce this call exactly, or None."""
    tensors = (query, key, value)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    if any(getattr(t, "is_nested", False) or t.layout != torch.strided for t in tensors):
        return None
    if query.dtype not in _SERVED_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return None
    device = query.device
    if device.type not in _MAX_HEAD_DIM or key.device != device or value.device != device:
        return None
    if query.dim() not in (3, 4) or key.dim() != query.dim() or value.dim() != query.dim():
        return None
    if query.shape[:-3] != key.shape[:-3] or key.shape[:-3] != value.shape[:-3]:
        return None
    if dropout_p != 0.0:
        return None
    heads_q, length_q, dim_qk = query.shape[-3:]
    heads_kv, length_k, dim_k = key.shape[-3:]
    if value.shape[-3] != heads_kv or value.shape[-2] != length_k or dim_k != dim_qk:
        return None
    if heads_q != heads_kv and not (enable_gqa and heads_kv > 0 and heads_q % heads_kv == 0):
        return None
    limit = _MAX_HEAD_DIM[device.type]
    if not (1 <= dim_qk <= limit and 1 <= value.shape[-1] <= limit):
        return None
    if max(length_q, length_k) < min_seqlen or length_q == 0:
        return None
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        return None

    causal, window = False, (-1, -1)
    if is_causal:
        if attn_mask is not None or length_q < length_k:
            return None
        # Top-left: j <= i  ==  bottom-right j <= i + (S - L) + (L - S).
        if length_q == length_k:
            causal = True
        else:
            window = (-1, length_q - length_k)
    elif attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor) or attn_mask.device != device or _tracing():
            return None
        band = _band_of_mask(attn_mask, length_q, length_k)
        if band is None:
            return None
        window = band
    return {"softmax_scale": scale, "causal": causal, "window_size": window}


def _serve(query, key, value, plan):
    squeeze = query.dim() == 3
    if squeeze:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    # [B, H, L, E] views as [B, L, H, E]: a transpose, no copy (flashsdpa reads any strides).
    out = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), **plan)
    out = out.transpose(1, 2)
    return out.squeeze(0) if squeeze else out


def make_patched(original, min_seqlen=0):
    """A drop-in for `original` (torch's SDPA) that serves the calls flashsdpa computes exactly."""

    @functools.wraps(original)
    def scaled_dot_product_attention(*args, **kwargs):
        try:
            parsed = _parse(*args, **kwargs)
        except TypeError:
            parsed = None  # not a call we understand; the original reports it
        plan = _plan(*parsed, min_seqlen) if parsed is not None else None
        if plan is not None:
            try:
                out = _serve(parsed[0], parsed[1], parsed[2], plan)
            except (ValueError, TypeError, NotImplementedError, RuntimeError):
                out = None
            if out is not None:
                _counts["served"] += 1
                return out
        _counts["passed_through"] += 1
        return original(*args, **kwargs)

    scaled_dot_product_attention.__flashsdpa_original__ = original
    return scaled_dot_product_attention
