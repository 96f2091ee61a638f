"""Loads the compiled operators (torch.ops.flashsdpa) and registers what torch needs around them.

The extension module is looked up, in order, at $FLASHSDPA_LIB (the .so itself or a directory
holding it) and next to this package. scripts/build_torch_ext.sh builds it there.

On torch >= 2.4 each op also gets a fake implementation (shapes only), so torch.compile traces
through the calls with no graph break.
"""

import atexit
import os
import sys

import torch

LIBRARY_NAME = "_flashsdpa_ops.so"

_loaded_from = None


def _candidate_paths():
    override = os.environ.get("FLASHSDPA_LIB")
    if override:
        yield os.path.join(override, LIBRARY_NAME) if os.path.isdir(override) else override
        return
    yield os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def load_library():
    """Loads the extension once; returns the path it was loaded from."""
    global _loaded_from
    if _loaded_from is not None:
        return _loaded_from
    tried = []
    for path in _candidate_paths():
        if os.path.isfile(path):
            torch.ops.load_library(path)
            _loaded_from = path
            _register_fakes()
            _register_trace_report()
            return path
        tried.append(path)
    raise ImportError(
        "flashsdpa: the compiled extension was not found (looked at: "
        + ", ".join(tried)
        + "). Build it with scripts/build_torch_ext.sh, or point FLASHSDPA_LIB at "
        + LIBRARY_NAME
        + "."
    )


def ops():
    """The torch.ops.flashsdpa namespace, loading the extension on first use."""
    load_library()
    return torch.ops.flashsdpa


def build_info():
    """A dict of the build: version, cuda_built, cuda_available, torch_cuda, path."""
    info = {"path": load_library()}
    for item in torch.ops.flashsdpa.build_info().split():
        key, _, value = item.partition("=")
        info[key] = value if key == "version" else value == "1"
    return info


# ---------------------------------------------------------------------------------------------
# Fake implementations: output shapes and dtypes only, for FakeTensor tracing (torch.compile,
# torch.export). torch.library.register_fake appeared in torch 2.4.


def _lse_shape(q):
    # [B, Sq, Hq, D] -> [B, Hq, Sq];  [Tq, Hq, D] -> [Hq, Tq]
    if q.dim() == 4:
        return (q.shape[0], q.shape[2], q.shape[1])
    return (q.shape[1], q.shape[0])


def _register_fakes():
    register_fake = getattr(torch.library, "register_fake", None)
    if register_fake is None:
        return

    @register_fake("flashsdpa::fwd")
    def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, block_table,
                  softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, s_aux, dropout_p, check,
                  exact_fp32=False):
        out = q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],))
        lse = q.new_empty(_lse_shape(q), dtype=torch.float32)
        return out, lse

    @register_fake("flashsdpa::fwd_out")
    def _fwd_out_fake(out, q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, block_table,
                      softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, s_aux, dropout_p,
                      check):
        return None

    @register_fake("flashsdpa::bwd")
    def _bwd_fake(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
                  max_seqlen_k, block_table, softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
                  s_aux, deterministic, check):
        ds_aux = q.new_empty((q.shape[-2] if s_aux is not None else 0,), dtype=torch.float32)
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), ds_aux

    @register_fake("flashsdpa::fwd_kvcache")
    def _fwd_kvcache_fake(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_seqlen,
                          cache_batch_idx, cache_leftpad, block_table, softmax_scale, causal, window_left,
                          window_right, softcap, rotary_interleaved, alibi_slopes, num_splits, s_aux, check):
        out = q.new_empty(tuple(q.shape[:-1]) + (v_cache.shape[-1],))
        lse = q.new_empty(_lse_shape(q), dtype=torch.float32)
        return out, lse

    @register_fake("flashsdpa::paged_kv_write")
    def _paged_kv_write_fake(k_cache, v_cache, k_new, v_new, block_table, cache_seqlens, cu_seqlens_new, check):
        return None


# ---------------------------------------------------------------------------------------------
# FLASHSDPA_TRACE=1: the C++ side counts calls; print its summary when the interpreter exits.


def _trace_requested():
    return os.environ.get("FLASHSDPA_TRACE", "").strip().lower() not in ("", "0", "off", "false", "no")


def _print_trace_report():
    try:
        report = torch.ops.flashsdpa.trace_report()
    except Exception:  # the interpreter is shutting down; never fail the exit over a report
        return
    if report:
        sys.stderr.write(report)
        sys.stderr.flush()


def _register_trace_report():
    if _trace_requested():
        torch.ops.flashsdpa.trace_enable(True)
        atexit.register(_print_trace_report)
