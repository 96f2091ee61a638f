"""flash_attn_with_kvcache (dense and paged, with append and rotary) and kv_paged_write.

Unused cache slots are poisoned with NaN: they must stay NaN (nothing but the new slots is
written) and must not leak into the output (nothing outside the attended keys is read).
"""

import pytest
import torch

import flashsdpa
from helpers import DTYPE_IDS, DTYPES, assert_same_bits, check_kvcache, cu_seqlens, randn, random_block_table
from reference import paged_write_ref


def _rotary_tables(rows, rotary_dim, dtype, device):
    """cos/sin tables in q's dtype (what flash-attn requires and the kernels read)."""
    angles = torch.arange(rows, dtype=torch.float64).view(rows, 1) * torch.logspace(
        0, -3, rotary_dim // 2, dtype=torch.float64).view(1, -1)
    return angles.cos().to(dtype=dtype, device=device), angles.sin().to(dtype=dtype, device=device)


def _dense_cache(batch_cache, capacity, heads, dim, filled, dtype, device):
    """A dense cache whose slots at or past filled[row] are NaN."""
    cache = randn(batch_cache, capacity, heads, dim, dtype=dtype, device=device)
    for row, length in enumerate(filled):
        cache[row, length:] = float("nan")
    return cache


def _check_caches(k_cache, v_cache, k_expected, v_expected, rotary):
    # Copies are exact. Rotated keys are computed in fp32 by the kernel and in float64 by the
    # reference: fp16/bf16 results may differ by one rounding of the cache dtype, fp32 results by
    # the few fp32 roundings of x0 * cos - x1 * sin (relative to the inputs' magnitude).
    assert_same_bits(v_cache, v_expected, "v_cache")
    if not rotary:
        assert_same_bits(k_cache, k_expected, "k_cache")
        return
    assert_same_bits(torch.isnan(k_cache), torch.isnan(k_expected), "k_cache NaN slots")
    finite = ~torch.isnan(k_expected)
    eps = torch.finfo(k_cache.dtype).eps
    expected = k_expected[finite].double()
    diff = (k_cache[finite].double() - expected).abs()
    if k_cache.dtype == torch.float32:
        bound = torch.full_like(expected, 4 * eps * float(expected.abs().max()))
    else:
        bound = eps * expected.abs()
    assert bool((diff <= bound).all()), f"rotated keys: max error {float(diff.max()):.3e} beyond rounding"


DENSE_CASES = {
    "decode-no-append": (3, 1, 0, 40, {"causal": True}, None),
    "append-causal": (2, 3, 3, 32, {"causal": True}, None),
    "append-rotary-gptj": (2, 1, 1, 48, {"causal": True}, "interleaved"),
    "append-rotary-neox-partial": (2, 4, 4, 48, {"causal": True, "rotary_dim": 32}, "neox"),
    "window-softcap-sinks": (2, 2, 2, 40, {"causal": True, "window_size": (7, 0), "softcap": 3.0, "sinks": True},
                             None),
    "batch-idx-leftpad-alibi": (2, 1, 1, 40, {"causal": True, "batch_idx": True, "leftpad": True, "alibi": True},
                                None),
    "noncausal-rotary": (2, 3, 3, 32, {}, "interleaved"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", list(DENSE_CASES), ids=str)
def test_with_kvcache_dense(case, dtype, device):
    batch, sq, snew, capacity, case_options, rotary = DENSE_CASES[case]
    options = dict(case_options)
    hq, hkv, d = 8, 2, 64
    seqlens = [9, 23][:batch] + [5] * max(0, batch - 2)
    batch_cache = batch
    rows = list(range(batch))
    if options.pop("batch_idx", False):
        batch_cache = batch + 1  # a cache with more rows than the batch, read through cache_batch_idx
        rows = [batch_cache - 1 - b for b in range(batch)]
    filled = [0] * batch_cache
    for b, row in enumerate(rows):
        filled[row] = seqlens[b]
    k_cache = _dense_cache(batch_cache, capacity, hkv, d, filled, dtype, device)
    v_cache = _dense_cache(batch_cache, capacity, hkv, d, filled, dtype, device)
    q = randn(batch, sq, hq, d, dtype=dtype, device=device)
    call = {"cache_seqlens": torch.tensor(seqlens, dtype=torch.int32, device=device)}
    if rows != list(range(batch)):
        call["cache_batch_idx"] = torch.tensor(rows, dtype=torch.int32, device=device)
    if options.pop("leftpad", False):
        call["cache_leftpad"] = torch.tensor([2] * batch, dtype=torch.int32, device=device)
    if options.pop("alibi", False):
        call["alibi_slopes"] = torch.rand(hq, device=device) * 0.3
    sinks = torch.randn(hq, device=device) if options.pop("sinks", False) else None
    rotary_dim = options.pop("rotary_dim", d)
    if snew:
        call["k"] = randn(batch, snew, hkv, d, dtype=dtype, device=device)
        call["v"] = randn(batch, snew, hkv, d, dtype=dtype, device=device)
    if rotary:
        call["rotary_cos"], call["rotary_sin"] = _rotary_tables(capacity, rotary_dim, dtype, device)
        call["rotary_interleaved"] = rotary == "interleaved"
    call.update(options)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    out, lse = flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, s_aux=sinks, return_softmax_lse=True, **call)
    assert out.shape == (batch, sq, hq, d) and lse.shape == (batch, hq, sq)
    k_expected, v_expected = check_kvcache(out, lse, q, before_k, before_v, sinks=sinks, **call)
    _check_caches(k_cache, v_cache, k_expected, v_expected, rotary)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("block_size", [16, 3], ids=lambda bs: f"block{bs}")
@pytest.mark.parametrize("rotary", [None, "neox"], ids=["copy", "rotary"])
def test_with_kvcache_paged_append(rotary, block_size, dtype, device):
    batch, snew, hq, hkv, d = 3, 2, 4, 4, 32
    seqlens = [0, 17, 30]
    capacity_blocks = -(-(max(seqlens) + snew) // block_size)
    num_blocks = batch * capacity_blocks + 2
    table = random_block_table([s + snew for s in seqlens], block_size, num_blocks, device)
    k_cache = randn(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
    v_cache = randn(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
    # Poison every slot that no sequence has filled yet.
    for b, length in enumerate(seqlens):
        for pos in range(length, table.shape[1] * block_size):
            block = int(table[b, pos // block_size])
            k_cache[block, pos % block_size] = float("nan")
            v_cache[block, pos % block_size] = float("nan")
    used_blocks = set(table.flatten().tolist())
    for block in range(num_blocks):
        if block not in used_blocks:
            k_cache[block] = float("nan")
            v_cache[block] = float("nan")
    # Keep the table's padding entries away from the poisoned pattern above: recompute the
    # filled slots of each sequence (padding entries may alias sequence 0's first block).
    for b, length in enumerate(seqlens):
        for pos in range(length):
            block = int(table[b, pos // block_size])
            k_cache[block, pos % block_size] = torch.randn(hkv, d).to(dtype)
            v_cache[block, pos % block_size] = torch.randn(hkv, d).to(dtype)
    q = randn(batch, 1, hq, d, dtype=dtype, device=device)
    k_new = randn(batch, snew, hkv, d, dtype=dtype, device=device)
    v_new = randn(batch, snew, hkv, d, dtype=dtype, device=device)
    call = {"k": k_new, "v": v_new, "cache_seqlens": torch.tensor(seqlens, dtype=torch.int32, device=device),
            "block_table": table, "causal": True}
    if rotary:
        call["rotary_cos"], call["rotary_sin"] = _rotary_tables(64, d, dtype, device)
        call["rotary_interleaved"] = False
    before_k, before_v = k_cache.clone(), v_cache.clone()
    out = flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, **call)
    k_expected, v_expected = check_kvcache(out, None, q, before_k, before_v, **call)
    _check_caches(k_cache, v_cache, k_expected, v_expected, rotary)


def test_with_kvcache_int_cache_seqlens_and_num_splits(device):
    q = randn(2, 1, 4, 32, dtype=torch.float16, device=device)
    k_cache = randn(2, 300, 4, 32, dtype=torch.float16, device=device)
    v_cache = randn(2, 300, 4, 32, dtype=torch.float16, device=device)
    for num_splits in (0, 1, 3):
        out, lse = flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=257, causal=True,
                                                     num_splits=num_splits, return_softmax_lse=True)
        check_kvcache(out, lse, q, k_cache, v_cache, cache_seqlens=257, causal=True)


def test_with_kvcache_without_cache_seqlens_uses_the_whole_cache(device):
    q = randn(2, 3, 4, 16, dtype=torch.float32, device=device)
    k_cache = randn(2, 11, 2, 16, dtype=torch.float32, device=device)
    v_cache = randn(2, 11, 2, 16, dtype=torch.float32, device=device)
    out = flashsdpa.flash_attn_with_kvcache(q, k_cache, v_cache, causal=True)
    check_kvcache(out, None, q, k_cache, v_cache, causal=True)


# ---------------------------------------------------------------------------------------------
# kv_paged_write


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("layout", ["batched", "varlen"])
def test_kv_paged_write_writes_only_the_new_slots(layout, dtype, device):
    block_size, hkv, dk, dv = 4, 2, 16, 8
    seqlens = [3, 0, 9]
    new = [2, 5, 1] if layout == "varlen" else [3, 3, 3]
    num_blocks = 12
    table = random_block_table([s + n for s, n in zip(seqlens, new)], block_size, num_blocks, device)
    k_cache = torch.full((num_blocks, block_size, hkv, dk), float("nan"), dtype=dtype, device=device)
    v_cache = torch.full((num_blocks, block_size, hkv, dv), float("nan"), dtype=dtype, device=device)
    if layout == "varlen":
        cu_new = cu_seqlens(new, device)
        k_new = randn(sum(new), hkv, dk, dtype=dtype, device=device)
        v_new = randn(sum(new), hkv, dv, dtype=dtype, device=device)
    else:
        cu_new = None
        k_new = randn(len(seqlens), new[0], hkv, dk, dtype=dtype, device=device)
        v_new = randn(len(seqlens), new[0], hkv, dv, dtype=dtype, device=device)
    lengths = torch.tensor(seqlens, dtype=torch.int32, device=device)
    k_expected, v_expected = paged_write_ref(k_cache, v_cache, k_new, v_new, table, lengths, cu_new)
    result = flashsdpa.kv_paged_write(k_cache, v_cache, k_new, v_new, table, lengths, cu_new)
    assert result is None
    assert_same_bits(k_cache, k_expected, "k_cache")
    assert_same_bits(v_cache, v_expected, "v_cache")
    written = int((~torch.isnan(k_cache[..., 0, 0])).sum())
    assert written == sum(new)
