"""FLASHSDPA_TRACE=1: a per-(op, dtype, head dims, lengths, features, tier) summary at exit."""

import os
import subprocess
import sys
import textwrap

from conftest import PYTHON_DIR

WORKLOAD = """
    import torch, flashsdpa
    q = torch.randn(2, 5, 4, 16, dtype=torch.float16)
    k = torch.randn(2, 7, 2, 16, dtype=torch.float16)
    for _ in range(3):
        flashsdpa.flash_attn_func(q, k, k, causal=True)
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    x = torch.randn(10, 2, 8)
    flashsdpa.flash_attn_varlen_func(x, x, x, cu, cu, 7, 7, window_size=(2, 0), s_aux=torch.zeros(2))
    print("DONE")
"""


def _run(trace):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    env.pop("FLASHSDPA_TRACE", None)
    if trace is not None:
        env["FLASHSDPA_TRACE"] = trace
    return subprocess.run([sys.executable, "-c", textwrap.dedent(WORKLOAD)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_trace_summary_at_exit():
    result = _run("1")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("[FLASHSDPA_TRACE] 4 call(s), 2 distinct"), result.stderr
    assert "calls=3" in lines[1] and "fwd float16 Dqk=16 Dv=16 Sq=5 Sk=7" in lines[1], lines[1]
    assert "causal" in lines[1] and "gqa2" in lines[1] and "-> cpu/" in lines[1], lines[1]
    assert "calls=1" in lines[2] and "float32" in lines[2] and "varlen" in lines[2] and "sinks" in lines[2], lines[2]
    assert "window(2,0)" in lines[2], lines[2]


def test_no_trace_by_default():
    for value in (None, "0"):
        result = _run(value)
        assert result.returncode == 0 and "FLASHSDPA_TRACE" not in result.stderr, result.stderr
