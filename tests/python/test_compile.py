"""torch.compile(fullgraph=True) through the flashsdpa ops (fake implementations, torch >= 2.4), and
CUDA graph capture of the calls."""

import pytest
import torch

import flashsdpa
from helpers import randn

needs_fake = pytest.mark.skipif(
    not hasattr(torch.library, "register_fake"),
    reason=f"torch.compile through custom ops needs torch.library.register_fake (torch >= 2.4); "
           f"this is torch {torch.__version__}")


def _fresh():
    torch._dynamo.reset()


@needs_fake
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_flash_attn_func_compiles_without_graph_break(backend, device):
    _fresh()
    q = randn(2, 33, 8, 64, dtype=torch.float16, device=device, requires_grad=True)
    k = randn(2, 33, 2, 64, dtype=torch.float16, device=device, requires_grad=True)
    v = randn(2, 33, 2, 64, dtype=torch.float16, device=device, requires_grad=True)
    sinks = torch.randn(8, device=device, requires_grad=True)

    def layer(q, k, v, sinks):
        out = flashsdpa.flash_attn_func(q, k, v, causal=True, window_size=(16, 0), softcap=20.0, s_aux=sinks)
        return (out.float() * 2).square().sum()

    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    loss = compiled(q, k, v, sinks)
    grads = torch.autograd.grad(loss, (q, k, v, sinks))
    expected_loss = layer(q, k, v, sinks)
    expected = torch.autograd.grad(expected_loss, (q, k, v, sinks))
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@needs_fake
def test_varlen_and_kvcache_compile_without_graph_break(device):
    _fresh()
    cu = torch.tensor([0, 5, 12], dtype=torch.int32, device=device)
    x = randn(12, 4, 32, dtype=torch.bfloat16, device=device)
    k_cache = torch.zeros(2, 16, 2, 32, dtype=torch.bfloat16, device=device)
    v_cache = torch.zeros(2, 16, 2, 32, dtype=torch.bfloat16, device=device)
    k_new = randn(2, 1, 2, 32, dtype=torch.bfloat16, device=device)
    seqlens = torch.tensor([3, 9], dtype=torch.int32, device=device)
    q = randn(2, 1, 4, 32, dtype=torch.bfloat16, device=device)

    def step(x, q, k_cache, v_cache, k_new, seqlens):
        prefill = flashsdpa.flash_attn_varlen_func(x, x, x, cu, cu, 7, 7, causal=True)
        decode = flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, k_new, cache_seqlens=seqlens,
                                                   causal=True)
        return prefill, decode

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    caches = (k_cache.clone(), v_cache.clone())
    prefill, decode = compiled(x, q, *caches, k_new, seqlens)
    expected = step(x, q, k_cache, v_cache, k_new, seqlens)
    torch.testing.assert_close(prefill, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(decode, expected[1], rtol=0, atol=0)
    # The in-place append survives functionalization: the caller's caches are written.
    torch.testing.assert_close(caches[0], k_cache, rtol=0, atol=0)
    assert bool((caches[0][0, 3] == k_new[0, 0]).all())


def test_cuda_graph_capture(device):
    if device.type != "cuda":
        pytest.skip("CUDA graphs need --device cuda")
    q = randn(2, 64, 8, 128, dtype=torch.float16, device=device)
    k = randn(2, 64, 8, 128, dtype=torch.float16, device=device)
    # 1024 slots: the decode step splits its keys, so its partials come from torch's allocator
    # inside the capture (ExecContext::scratch).
    k_cache = randn(2, 1024, 8, 128, dtype=torch.float16, device=device)
    v_cache = randn(2, 1024, 8, 128, dtype=torch.float16, device=device)
    q_step = randn(2, 1, 8, 128, dtype=torch.float16, device=device)
    k_step = randn(2, 1, 8, 128, dtype=torch.float16, device=device)
    seqlens = torch.tensor([10, 700], dtype=torch.int32, device=device)

    def run():
        prefill = flashsdpa.flash_attn_func(q, k, k, causal=True)
        decode = flashsdpa.flash_attn_with_kvcache(q_step, k_cache, v_cache, k_step, k_step, cache_seqlens=seqlens,
                                                   causal=True)
        return prefill, decode

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    q.copy_(randn(2, 64, 8, 128, dtype=torch.float16, device=device))
    seqlens.copy_(torch.tensor([20, 900], dtype=torch.int32, device=device))
    graph.replay()
    torch.cuda.synchronize()
    expected = run()
    torch.testing.assert_close(captured[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(captured[1], expected[1], rtol=0, atol=0)
