"""A plain PyTorch reference of SPEC §2–3 for the Python tests, independent of the C++ one.

Scores are materialised per sequence; clarity over speed. Two precisions:
  "float64"  everything in float64: the ref64 of SPEC §6;
  "lowp"     the same computation as a plain framework implementation in the input dtype would do
             it: fp32 arithmetic with scores, probabilities and outputs rounded to the input dtype
             after each step (fp32 inputs give plain fp32). This is ref_lowp of SPEC §6.
Both are differentiable (autograd through the plain math), which gives the backward references.

Layouts follow flash-attn: batched [B, S, H, D], varlen [T, H, D] with cu_seqlens, paged caches
[num_blocks, block_size, Hkv, D] with a block table, dense caches [B_cache, S_max, Hkv, D].
"""

import math

import torch

PRECISIONS = ("float64", "lowp")


class _Math:
    """The arithmetic of one precision: which dtype computes, and where values get rounded."""

    def __init__(self, precision, input_dtype):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        self.compute = torch.float64 if precision == "float64" else torch.float32
        rounds = precision == "lowp" and input_dtype in (torch.float16, torch.bfloat16)
        self.round_to = input_dtype if rounds else None

    def load(self, t):
        return None if t is None else t.to(self.compute)

    def round(self, t):
        return t if self.round_to is None else t.to(self.round_to).to(self.compute)


def rotate(x, cos, sin, positions, interleaved):
    """Rotary embedding of rows x [N, H, D] at integer positions [N] with tables [S_ro, rd / 2]."""
    rotary_dim = 2 * cos.shape[1]
    c = cos.to(x.dtype)[positions].unsqueeze(1)
    s = sin.to(x.dtype)[positions].unsqueeze(1)
    head = x[..., :rotary_dim]
    if interleaved:
        x0, x1 = head[..., 0::2], head[..., 1::2]
        rotated = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    else:
        half = rotary_dim // 2
        x0, x1 = head[..., :half], head[..., half:]
        rotated = torch.cat((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return torch.cat((rotated, x[..., rotary_dim:]), dim=-1)


def attend(q, k, v, m, *, scale, k_begin=0, window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None,
           sinks=None):
    """One sequence. q [Sq, Hq, D]; k [Sk, Hkv, D], v [Sk, Hkv, Dv] hold logical keys 0..Sk-1, of
    which keys before k_begin are not attended. Already converted to m.compute.
    Returns out [Sq, Hq, Dv] and lse [Hq, Sq] (natural log, sink included).
    """
    sq, heads_q = q.shape[0], q.shape[1]
    sk, heads_kv = k.shape[0], k.shape[1]
    group = heads_q // heads_kv
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    s = m.round(torch.einsum("qhd,khd->hqk", q, k) * scale)
    if softcap > 0:
        s = m.round(softcap * torch.tanh(s / softcap))
    i = torch.arange(sq, device=q.device).view(sq, 1)
    j = torch.arange(sk, device=q.device).view(1, sk)
    diag = sk - sq  # bottom-right alignment: query row i lines up with key i + diag
    if alibi_slopes is not None:
        distance = (i + diag - j).abs().to(s.dtype)
        s = m.round(s - alibi_slopes.to(s.dtype).view(heads_q, 1, 1) * distance)
    allowed = j >= k_begin
    if window_left >= 0:
        allowed = allowed & (j >= i + diag - window_left)
    if window_right >= 0:
        allowed = allowed & (j <= i + diag + window_right)
    allowed = allowed.unsqueeze(0).expand(heads_q, sq, sk)
    neg_inf = torch.full((), -math.inf, dtype=s.dtype, device=s.device)
    s = torch.where(allowed, s, neg_inf)
    row_max = s.amax(dim=-1) if sk > 0 else torch.full((heads_q, sq), -math.inf, dtype=s.dtype, device=s.device)
    if sinks is not None:
        sink = sinks.to(s.dtype).view(heads_q, 1).expand(heads_q, sq)
        row_max = torch.maximum(row_max, sink)
    # Rows that see nothing keep row_max = -inf; shift by 0 there so no inf - inf appears.
    shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    p = m.round(torch.exp(s - shift.unsqueeze(-1)))
    p = torch.where(allowed, p, torch.zeros_like(p))
    z = p.sum(dim=-1)
    if sinks is not None:
        z = z + torch.exp(sink - shift)
    numerator = torch.einsum("hqk,khd->qhd", p, v)
    z_q = z.transpose(0, 1).unsqueeze(-1)  # [Sq, Hq, 1]
    safe_z = torch.where(z_q > 0, z_q, torch.ones_like(z_q))
    out = m.round(torch.where(z_q > 0, numerator / safe_z, torch.zeros_like(numerator)))
    safe_zl = torch.where(z > 0, z, torch.ones_like(z))
    lse = torch.where(z > 0, shift + torch.log(safe_zl), torch.full_like(z, -math.inf))
    return out, lse


def _scale(softmax_scale, head_dim):
    return 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)


def _window(causal, window_size):
    left, right = window_size
    return left, (0 if causal else right)


def _slopes_for(alibi_slopes, b, m):
    if alibi_slopes is None:
        return None
    slopes = m.load(alibi_slopes)
    return slopes[b] if slopes.dim() == 2 else slopes


def _lengths(cu):
    cu = cu.tolist()
    return [(cu[b], cu[b + 1]) for b in range(len(cu) - 1)]


def _paged_rows(cache, block_table_row, length):
    block_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    blocks = block_table_row.to(torch.long)[pos // block_size]
    return cache[blocks, pos % block_size]


def attention_ref(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, seqused_k=None, max_seqlen_q=None,
                  max_seqlen_k=None, block_table=None, softmax_scale=None, causal=False, window_size=(-1, -1),
                  softcap=0.0, alibi_slopes=None, sinks=None, precision="float64"):
    """The reference of flash_attn_func / flash_attn_varlen_func (incl. paged k/v and seqused_k).

    Returns (out, lse) shaped like flashsdpa's: out like q with v's head dim, lse [B, Hq, Sq] or
    [Hq, Tq]; dtype float64 ("float64") or float32 ("lowp").
    """
    m = _Math(precision, q.dtype)
    qm, km, vm = m.load(q), m.load(k), m.load(v)
    sinks_m = m.load(sinks)
    scale = _scale(softmax_scale, q.shape[-1])
    wl, wr = _window(causal, window_size)
    varlen_q = q.dim() == 3
    if varlen_q:
        q_ranges = _lengths(cu_seqlens_q)
    else:
        q_ranges = [(b * q.shape[1], (b + 1) * q.shape[1]) for b in range(q.shape[0])]
        qm = qm.reshape((-1,) + tuple(q.shape[2:]))
    batch = len(q_ranges)
    outs, lses = [], []
    for b in range(batch):
        q0, q1 = q_ranges[b]
        if block_table is not None:
            if cu_seqlens_k is not None:
                k0, k1 = _lengths(cu_seqlens_k)[b]
                length = k1 - k0
            else:
                length = block_table.shape[1] * k.shape[1]
            if seqused_k is not None:
                length = int(seqused_k[b])
            kb = _paged_rows(km, block_table[b], length)
            vb = _paged_rows(vm, block_table[b], length)
        elif k.dim() == 3:
            k0, k1 = _lengths(cu_seqlens_k)[b]
            if seqused_k is not None:
                k1 = k0 + int(seqused_k[b])
            kb, vb = km[k0:k1], vm[k0:k1]
        else:
            length = k.shape[1] if seqused_k is None else int(seqused_k[b])
            kb, vb = km[b, :length], vm[b, :length]
        out, lse = attend(qm[q0:q1], kb, vb, m, scale=scale, window_left=wl, window_right=wr, softcap=softcap,
                          alibi_slopes=_slopes_for(alibi_slopes, b, m), sinks=sinks_m)
        outs.append(out)
        lses.append(lse)
    out = torch.cat(outs, dim=0)
    if varlen_q:
        return out, torch.cat(lses, dim=1)
    return out.reshape(q.shape[0], q.shape[1], *out.shape[1:]), torch.stack(lses, dim=0)


def kvcache_ref(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                cache_batch_idx=None, cache_leftpad=None, block_table=None, softmax_scale=None, causal=False,
                window_size=(-1, -1), softcap=0.0, rotary_interleaved=True, alibi_slopes=None, sinks=None,
                precision="float64"):
    """The reference of flash_attn_with_kvcache. The caches are not modified.

    Returns (out, lse [B, Hq, Sq], k_cache_after, v_cache_after): the caches as the kernel must
    leave them (new tokens, rotated, rounded to the cache dtype), computed in float64.
    """
    m = _Math(precision, q.dtype)
    batch, sq = q.shape[0], q.shape[1]
    snew = 0 if k is None else k.shape[1]
    paged = block_table is not None
    if cache_seqlens is None:
        capacity = block_table.shape[1] * k_cache.shape[1] if paged else k_cache.shape[1]
        seqlens = [capacity - snew] * batch
    elif isinstance(cache_seqlens, int):
        seqlens = [cache_seqlens] * batch
    else:
        seqlens = [int(x) for x in cache_seqlens.tolist()]
    rows = list(range(batch)) if cache_batch_idx is None else [int(x) for x in cache_batch_idx.tolist()]
    leftpad = [0] * batch if cache_leftpad is None else [int(x) for x in cache_leftpad.tolist()]

    # The append, in float64, then stored in the cache dtype.
    k_after = k_cache.clone()
    v_after = v_cache.clone()
    for b in range(batch):
        if snew == 0:
            break
        pos = torch.arange(seqlens[b], seqlens[b] + snew, device=q.device)
        kb = k[b].double()
        if rotary_cos is not None:
            kb = rotate(kb, rotary_cos.double(), rotary_sin.double(), pos, rotary_interleaved)
        if paged:
            bs = k_cache.shape[1]
            blocks = block_table[b].to(torch.long)[pos // bs]
            k_after[blocks, pos % bs] = kb.to(k_cache.dtype)
            v_after[blocks, pos % bs] = v[b].to(v_cache.dtype)
        else:
            k_after[rows[b], pos] = kb.to(k_cache.dtype)
            v_after[rows[b], pos] = v[b].to(v_cache.dtype)

    scale = _scale(softmax_scale, q.shape[-1])
    wl, wr = _window(causal, window_size)
    sinks_m = m.load(sinks)
    outs, lses = [], []
    for b in range(batch):
        k_end = seqlens[b] + snew
        if paged:
            kb = _paged_rows(k_after, block_table[b], k_end)
            vb = _paged_rows(v_after, block_table[b], k_end)
        else:
            kb, vb = k_after[rows[b], :k_end], v_after[rows[b], :k_end]
        kb, vb = m.load(kb), m.load(vb)
        qb = m.load(q[b])
        if rotary_cos is not None:
            if causal or wl >= 0 or wr >= 0:
                qpos = torch.arange(seqlens[b], seqlens[b] + sq, device=q.device)
            else:
                qpos = torch.full((sq,), seqlens[b], device=q.device, dtype=torch.long)
            qb = m.round(rotate(qb, m.load(rotary_cos), m.load(rotary_sin), qpos, rotary_interleaved))
        out, lse = attend(qb, kb, vb, m, scale=scale, k_begin=leftpad[b], window_left=wl, window_right=wr,
                          softcap=softcap, alibi_slopes=_slopes_for(alibi_slopes, b, m), sinks=sinks_m)
        outs.append(out)
        lses.append(lse)
    return torch.stack(outs, dim=0), torch.stack(lses, dim=0), k_after, v_after


def paged_write_ref(k_cache, v_cache, k_new, v_new, block_table, cache_seqlens, cu_seqlens_new=None):
    """The caches after kv_paged_write (copies)."""
    k_after, v_after = k_cache.clone(), v_cache.clone()
    bs = k_cache.shape[1]
    seqlens = [int(x) for x in cache_seqlens.tolist()]
    for b in range(block_table.shape[0]):
        if cu_seqlens_new is None:
            kb, vb = k_new[b], v_new[b]
        else:
            t0, t1 = int(cu_seqlens_new[b]), int(cu_seqlens_new[b + 1])
            kb, vb = k_new[t0:t1], v_new[t0:t1]
        pos = torch.arange(seqlens[b], seqlens[b] + kb.shape[0], device=k_cache.device)
        blocks = block_table[b].to(torch.long)[pos // bs]
        k_after[blocks, pos % bs] = kb
        v_after[blocks, pos % bs] = vb
    return k_after, v_after


def max_abs_diff(a, b):
    """max |a - b| over elements where both are finite (0 for empty tensors)."""
    a, b = a.double(), b.double()
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not bool(finite.any()):
        return 0.0
    return float((a - b).abs()[finite].max())


def check_close(got, ref64, ref_lowp, factor=2.0, name="out"):
    """SPEC §6: max|got - ref64| <= factor * max|ref_lowp - ref64| + 1e-6 over finite elements, and
    every non-finite ref64 element matched exactly (NaN by NaN, inf by the same inf).
    Raises AssertionError naming the worst element."""
    got64, ref64 = got.detach().double().cpu(), ref64.detach().double().cpu()
    ref_lowp = ref_lowp.detach().double().cpu()
    assert got64.shape == ref64.shape, f"{name}: shape {list(got64.shape)} != reference {list(ref64.shape)}"
    ref_finite = torch.isfinite(ref64)
    bad_nonfinite = ~ref_finite & ~((got64 == ref64) | (torch.isnan(got64) & torch.isnan(ref64)))
    assert not bool(bad_nonfinite.any()), (
        f"{name}: non-finite reference values not matched at {bad_nonfinite.nonzero()[:5].tolist()}")
    got_nonfinite = ref_finite & ~torch.isfinite(got64)
    assert not bool(got_nonfinite.any()), (
        f"{name}: non-finite output where the reference is finite at {got_nonfinite.nonzero()[:5].tolist()}")
    if ref64.numel() == 0 or not bool(ref_finite.any()):
        return
    tolerance = factor * max_abs_diff(ref_lowp, ref64) + 1e-6
    err = (got64 - ref64).abs()
    err[~ref_finite] = 0
    worst = int(err.flatten().argmax())
    worst_err = float(err.flatten()[worst])
    assert worst_err <= tolerance, (
        f"{name}: max|got - ref64| = {worst_err:.3e} > tolerance {tolerance:.3e} "
        f"({factor} * max|ref_lowp - ref64| + 1e-6) at flat index {worst}: got "
        f"{float(got64.flatten()[worst])!r}, ref64 {float(ref64.flatten()[worst])!r}")
