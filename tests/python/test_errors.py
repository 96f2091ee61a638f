"""Bad input raises ValueError / TypeError / NotImplementedError with a message naming the argument,
and nothing is written: outputs, caches and their guard regions keep their NaN poison."""

import pytest
import torch

import flashsdpa
from helpers import assert_same_bits, cu_seqlens, randn, random_block_table


def _raises(kind, *words):
    """pytest.raises for `kind` whose message contains every word (case-insensitive)."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(kind)
            self._info = self._ctx.__enter__()
            return self._info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            message = str(self._info.value).lower()
            for word in words:
                assert word.lower() in message, f"message {str(self._info.value)!r} does not mention {word!r}"
            return handled

    return _Check()


def _qkv(device, dtype=torch.float16, batch=2, sq=5, sk=7, hq=4, hkv=2, d=16):
    return (randn(batch, sq, hq, d, dtype=dtype, device=device), randn(batch, sk, hkv, d, dtype=dtype, device=device),
            randn(batch, sk, hkv, d, dtype=dtype, device=device))


def test_unsupported_dtype_is_a_type_error(device):
    q, k, v = _qkv(device)
    with _raises(TypeError, "q", "float64"):
        flashsdpa.flash_attn_func(q.double(), k, v)
    with _raises(TypeError, "dtype"):
        flashsdpa.flash_attn_func(q, k.to(torch.bfloat16), v)
    with _raises(TypeError, "s_aux"):
        flashsdpa.flash_attn_func(q, k, v, s_aux=[1.0, 2.0, 3.0, 4.0])
    with _raises(TypeError, "window_size"):
        flashsdpa.flash_attn_func(q, k, v, window_size=4)


def test_index_tensors_must_be_int32(device):
    q = randn(12, 2, 16, dtype=torch.float16, device=device)
    cu = torch.tensor([0, 5, 12], dtype=torch.int64, device=device)
    with _raises(TypeError, "cu_seqlens_q", "int32"):
        flashsdpa.flash_attn_varlen_func(q, q, q, cu, cu.int(), 7, 7)


def test_bad_shapes_are_value_errors(device):
    q, k, v = _qkv(device)
    with _raises(ValueError, "k"):
        flashsdpa.flash_attn_func(q, k[..., :8], v)  # head dims of q and k differ
    with _raises(ValueError):
        flashsdpa.flash_attn_func(q, k[:, :, :1].expand(2, 7, 3, 16), v)  # 3 kv heads vs v's 2
    with _raises(ValueError, "q"):
        flashsdpa.flash_attn_func(q.unsqueeze(0), k, v)
    with _raises(ValueError, "s_aux"):
        flashsdpa.flash_attn_func(q, k, v, s_aux=torch.zeros(3, device=device))
    with _raises(ValueError, "alibi"):
        flashsdpa.flash_attn_func(q, k, v, alibi_slopes=torch.zeros(5, device=device))
    with _raises(ValueError, "qkv"):
        flashsdpa.flash_attn_qkvpacked_func(torch.stack((q, q), dim=2))


def test_heads_must_group(device):
    q = randn(1, 4, 6, 16, dtype=torch.float16, device=device)
    k = randn(1, 4, 4, 16, dtype=torch.float16, device=device)
    with _raises(ValueError, "head"):
        flashsdpa.flash_attn_func(q, k, k)


def test_dropout_is_not_implemented(device):
    q, k, v = _qkv(device)
    with _raises(NotImplementedError, "dropout"):
        flashsdpa.flash_attn_func(q, k, v, dropout_p=0.1)


def test_head_dim_beyond_the_supported_range(device):
    limit = 512 if device.type == "cpu" else 256
    q = randn(1, 2, 1, limit + 1, dtype=torch.float16, device=device)
    with pytest.raises((ValueError, NotImplementedError)) as info:
        flashsdpa.flash_attn_func(q, q, q)
    assert str(limit) in str(info.value), f"message {str(info.value)!r} does not name the supported range"


def test_bad_cu_seqlens_write_nothing(device):
    q = randn(12, 2, 16, dtype=torch.float16, device=device)
    big = torch.full((14, 2, 16), float("nan"), dtype=torch.float16, device=device)
    out = big[1:13]
    decreasing = torch.tensor([0, 8, 5, 12], dtype=torch.int32, device=device)
    check_mode = device.type != "cpu"  # device-resident index values are read only in checked mode
    with _raises(ValueError, "cu_seqlens_q"):
        flashsdpa._ops.ops().fwd_out(out, q, q, q, decreasing, decreasing, None, 8, 8, None, None, False, -1, -1,
                                     0.0, None, None, 0.0, check_mode)
    assert bool(torch.isnan(big).all()), "out was written although the call raised"
    wrong_total = torch.tensor([0, 5, 11], dtype=torch.int32, device=device)
    with _raises(ValueError, "cu_seqlens"):
        flashsdpa._ops.ops().fwd_out(out, q, q, q, wrong_total, wrong_total, None, 6, 6, None, None, False, -1, -1,
                                     0.0, None, None, 0.0, check_mode)
    assert bool(torch.isnan(big).all())
    if device.type == "cpu":
        # The public function: host index tensors are always validated.
        with _raises(ValueError, "cu_seqlens_q"):
            flashsdpa.flash_attention_varlen(out, q, q, q, decreasing, decreasing, 8, 8, False, None, 1.0)
        assert bool(torch.isnan(big).all())


def _poisoned_paged_cache(device, num_blocks=6, block_size=4, hkv=2, d=16):
    k_cache = torch.full((num_blocks, block_size, hkv, d), float("nan"), dtype=torch.float16, device=device)
    v_cache = torch.full((num_blocks, block_size, hkv, d), float("nan"), dtype=torch.float16, device=device)
    return k_cache, v_cache


def _checked_on_device(device, monkeypatch):
    """Device-resident index tensors are read back (a sync per call) only with FLASHSDPA_CHECK=1."""
    if device.type != "cpu":
        monkeypatch.setenv("FLASHSDPA_CHECK", "1")


def test_kvcache_overflow_writes_nothing(device, monkeypatch):
    _checked_on_device(device, monkeypatch)
    q = randn(2, 1, 4, 16, dtype=torch.float16, device=device)
    k_cache = torch.full((2, 8, 2, 16), float("nan"), dtype=torch.float16, device=device)
    v_cache = k_cache.clone()
    k_new = randn(2, 3, 2, 16, dtype=torch.float16, device=device)
    seqlens = torch.tensor([2, 6], dtype=torch.int32, device=device)  # 6 + 3 > 8 slots
    with _raises(ValueError, "cache_seqlens"):
        flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, k_new, cache_seqlens=seqlens)
    assert bool(torch.isnan(k_cache).all()) and bool(torch.isnan(v_cache).all())
    with _raises(ValueError, "k and v"):
        flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, cache_seqlens=seqlens)
    with _raises(TypeError, "cache_seqlens"):
        flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=2.5)


def test_kvcache_overflow_unchecked_stays_in_bounds(device, monkeypatch):
    """Without checked mode a device-resident overflow is not reported, but nothing outside the
    caches is touched: they are slices of larger NaN buffers whose guard rows must stay NaN."""
    if device.type == "cpu":
        pytest.skip("host-resident lengths are always checked")
    monkeypatch.delenv("FLASHSDPA_CHECK", raising=False)
    q = randn(2, 1, 4, 16, dtype=torch.float16, device=device)
    k_buf = torch.full((4, 8, 2, 16), float("nan"), dtype=torch.float16, device=device)
    v_buf = k_buf.clone()
    k_new = randn(2, 3, 2, 16, dtype=torch.float16, device=device)
    seqlens = torch.tensor([2, 6], dtype=torch.int32, device=device)  # 6 + 3 > 8 slots
    flashsdpa.flash_attn_with_kvcache(q, k_buf[1:3], v_buf[1:3], k_new, k_new, cache_seqlens=seqlens)
    torch.cuda.synchronize()
    for buf in (k_buf, v_buf):
        assert bool(torch.isnan(buf[0]).all()) and bool(torch.isnan(buf[3]).all())


def test_kvcache_block_table_out_of_range_writes_nothing(device, monkeypatch):
    _checked_on_device(device, monkeypatch)
    k_cache, v_cache = _poisoned_paged_cache(device)
    q = randn(1, 1, 4, 16, dtype=torch.float16, device=device)
    k_new = randn(1, 2, 2, 16, dtype=torch.float16, device=device)
    table = torch.tensor([[0, 9]], dtype=torch.int32, device=device)  # block 9 of 6
    seqlens = torch.tensor([3], dtype=torch.int32, device=device)
    with _raises(ValueError, "block_table"):
        flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, k_new, cache_seqlens=seqlens, block_table=table)
    assert bool(torch.isnan(k_cache).all()) and bool(torch.isnan(v_cache).all())


def test_kv_paged_write_bad_input_writes_nothing(device, monkeypatch):
    k_cache, v_cache = _poisoned_paged_cache(device)
    k_new = randn(2, 3, 2, 16, dtype=torch.float16, device=device)
    table = random_block_table([6, 6], 4, 6, device)
    seqlens = torch.tensor([1, 3], dtype=torch.int32, device=device)
    before = k_cache.clone()
    with _raises(TypeError, "k_new"):
        flashsdpa.kv_paged_write(k_cache, v_cache, k_new.float(), k_new, table, seqlens)
    with _raises(TypeError, "cache_seqlens", "int32"):
        flashsdpa.kv_paged_write(k_cache, v_cache, k_new, k_new, table, seqlens.long())
    with monkeypatch.context() as checked:
        _checked_on_device(device, checked)
        overflow = torch.tensor([1, 7], dtype=torch.int32, device=device)  # 7 + 3 > 2 blocks of 4
        with _raises(ValueError):
            flashsdpa.kv_paged_write(k_cache, v_cache, k_new, k_new, table, overflow)
    with _raises(ValueError, "cu_seqlens_new"):
        flashsdpa.kv_paged_write(k_cache, v_cache, k_new, k_new, table, seqlens,
                                 cu_seqlens([3, 3, 3], device))
    assert_same_bits(k_cache, before, "k_cache")
    assert bool(torch.isnan(v_cache).all())


def test_tensors_on_another_device(device):
    if device.type != "cuda":
        pytest.skip("needs a second device type")
    q = randn(8, 2, 16, dtype=torch.float16, device=device)
    cu = torch.tensor([0, 8], dtype=torch.int32)  # on the CPU
    with _raises(ValueError, "cu_seqlens_q", "device"):
        flashsdpa.flash_attn_varlen_func(q, q, q, cu, cu.to(device), 8, 8)


def test_backward_op_checks_its_inputs(device):
    q, k, v = _qkv(device)
    out, lse = flashsdpa._ops.ops().fwd(q, k, v, None, None, None, -1, -1, None, None, False, -1, -1, 0.0, None, None,
                                        0.0, False)
    with _raises(TypeError, "softmax_lse"):
        flashsdpa._ops.ops().bwd(out, q, k, v, out, lse.half(), None, None, None, -1, -1, None, None, False, -1, -1,
                                 0.0, None, None, False, False)
