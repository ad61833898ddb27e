"""fork_attention: K candidate tokens attend to their row's shared prefix plus their own entry.

Math, for row b, query head h (kv head c = h // g, g = Hq // Hkv), candidate j:
    s_l    = scale * q[b,h,j] . k_cache[b,c,l]     for l in [cache_start[b], cache_end[b])
    s_self = scale * q[b,h,j] . k_new[b,c,j]
    out[b,h,j] = (sum_l e^{s_l} v_cache[b,c,l] + e^{s_self} v_new[b,c,j]) / (sum_l e^{s_l} + e^{s_self})
Shapes: q [B, Hq, K, D]; k_cache, v_cache [B, Hkv, L, D]; k_new, v_new [B, Hkv, K, D];
cache_start, cache_end int32/int64 [B]; out [B, Hq, K, D] in q's dtype.  Any strides
with a unit last stride (views of a larger cache buffer are read in place).  Softmax
and accumulation in fp32; D up to 256 (padded to a power of two >= 16 on chip).

Design.  The g*K query rows that read one kv head (g heads x K candidates) form a
single query block, GQA-style, so each (b, kv head) streams its prefix once — never
k times — through a flash-attention loop (tl.dot on tensor cores, online softmax in
the exp2 domain).  Each candidate's self entry is a single key, so it is merged at the
end exactly by log-sum-exp (a one-column softmax merge, as a cascade merge_state).
The prefix is the same for all rows of the block, so candidates never see each other.

Decode-time grids are small (B * Hkv programs, e.g. 8 for B = 1), so for long
prefixes the prefix is split over SPLIT programs per block (flash-decoding): each
writes its partial (max, sum, unnormalised output) to a workspace and takes a ticket
from an atomic per-block counter; the last to arrive merges the SPLIT partials and the
self entry and writes the output, so it stays one launch (CUDA-graph capturable).  The
counters follow the rule of `rgk.kernels._workspace` (per family, device and stream; the
last program resets them; SPLIT = 1 when a capture would need a new buffer).  fp32
inputs use input_precision="tf32x3" (three tf32 tensor-core products, ~1e-6 relative
error, where "ieee" would run as register-hungry FMA loops).  Launch plans (tiles, the
most splits the GPU wants) are cached per (device, B, Hq, Hkv, K, D, L, dtype): the
per-layer decode loop calls this with the same shapes every layer.

SPLIT is sized from the longest prefix the launch can meet: the caller's host-side bound
`max_valid_len` of every row's end when given, else the capacity L (so a short prompt in
a long cache does not launch programs that find no key), rounded down to a power of two
so that a bound growing every decode step compiles at most a handful of SPLIT variants.
The bound only sizes the grid: each program's range is cut from its row's own
[start, end), so a bound below some row's end costs parallelism, never a key.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rgk.kernels import _workspace
from rgk.kernels._launch import last_dim_contiguous, sm_count as _sm_count


@triton.jit
def _scale_from(m_old, m_new):
    """exp2(m_old - m_new) with exp2(-inf - (-inf)) read as 0."""
    return tl.where(m_old > -float("inf"), tl.exp2(m_old - m_new), 0.0)


@triton.jit
def _fork_attention_kernel(
    q_ptr, kc_ptr, vc_ptr, kn_ptr, vn_ptr, start_ptr, end_ptr, out_ptr,
    ws_acc_ptr, ws_m_ptr, ws_l_ptr, ticket_ptr,
    sq_b, sq_h, sq_k,
    skc_b, skc_h, skc_l,
    svc_b, svc_h, svc_l,
    skn_b, skn_h, skn_k,
    svn_b, svn_h, svn_k,
    Hkv, G, K, L, n_mblk, qk_scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    part = tl.program_id(1)
    mb = tile % n_mblk
    bc = tile // n_mblk
    b = (bc // Hkv).to(tl.int64)
    c = (bc % Hkv).to(tl.int64)

    r = mb * BLOCK_M + tl.arange(0, BLOCK_M)  # query row in the block: head-in-group * K + candidate
    row_ok = r < G * K
    hq = c * G + r // K
    j = r % K
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    rd_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * sq_b + hq[:, None] * sq_h + j[:, None] * sq_k + d[None, :], mask=rd_ok, other=0.0)

    # the self score now, so that q is the only row-sized operand live in the loop
    kn = tl.load(kn_ptr + b * skn_b + c * skn_h + j[:, None] * skn_k + d[None, :], mask=rd_ok, other=0.0)
    s_self = tl.sum(q.to(tl.float32) * kn.to(tl.float32), axis=1) * qk_scale

    start = tl.maximum(tl.load(start_ptr + b).to(tl.int32), 0)
    end = tl.minimum(tl.load(end_ptr + b).to(tl.int32), L)
    per = tl.cdiv(tl.cdiv(tl.maximum(end - start, 0), SPLIT), BLOCK_N) * BLOCK_N
    lo = start + part * per
    hi = tl.minimum(end, lo + per)

    kc_base = kc_ptr + b * skc_b + c * skc_h
    vc_base = vc_ptr + b * svc_b + c * svc_h
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < hi
        kt = tl.load(kc_base + n[:, None] * skc_l + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(kt), input_precision=DOT_PREC) * qk_scale
        s = tl.where(n_ok[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: the tile has a valid column
        alpha = _scale_from(m_i, m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vt = tl.load(vc_base + n[:, None] * svc_l + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=DOT_PREC)
        m_i = m_new

    out_ptrs = out_ptr + ((b * Hkv + c) * G * K + r)[:, None] * D + d[None, :]
    if SPLIT == 1:
        _finish(s_self, m_i, l_i, acc, vn_ptr + b * svn_b + c * svn_h, svn_k, j, d, rd_ok, out_ptrs)
    else:
        slot = tile.to(tl.int64) * SPLIT + part
        rr = tl.arange(0, BLOCK_M)
        tl.store(ws_m_ptr + slot * BLOCK_M + rr, m_i)
        tl.store(ws_l_ptr + slot * BLOCK_M + rr, l_i)
        tl.store(ws_acc_ptr + (slot * BLOCK_M + rr)[:, None] * BLOCK_D + d[None, :], acc)
        tl.debug_barrier()  # every thread's partial is stored before the ticket releases it
        ticket = tl.atomic_add(ticket_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT - 1:
            m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for sp in range(SPLIT):
                other = tile.to(tl.int64) * SPLIT + sp
                m_p = tl.load(ws_m_ptr + other * BLOCK_M + rr, cache_modifier=".cg")
                l_p = tl.load(ws_l_ptr + other * BLOCK_M + rr, cache_modifier=".cg")
                acc_p = tl.load(ws_acc_ptr + (other * BLOCK_M + rr)[:, None] * BLOCK_D + d[None, :],
                                cache_modifier=".cg")
                m_new = tl.maximum(m_i, m_p)
                a = _scale_from(m_i, m_new)
                ap = _scale_from(m_p, m_new)
                l_i = l_i * a + l_p * ap
                acc = acc * a[:, None] + acc_p * ap[:, None]
                m_i = m_new
            _finish(s_self, m_i, l_i, acc, vn_ptr + b * svn_b + c * svn_h, svn_k, j, d, rd_ok, out_ptrs)
            tl.atomic_xchg(ticket_ptr + tile, 0)  # ready for the next launch


@triton.jit
def _finish(s_self, m_i, l_i, acc, vn_base, svn_k, j, d, rd_ok, out_ptrs):
    """Merge candidate j's own entry (score s_self, value v_new[j]) into the prefix state; store."""
    m_f = tl.maximum(m_i, s_self)
    a = _scale_from(m_i, m_f)
    p_self = tl.exp2(s_self - m_f)
    l_f = l_i * a + p_self
    vn = tl.load(vn_base + j[:, None] * svn_k + d[None, :], mask=rd_ok, other=0.0).to(tl.float32)
    o = (acc * a[:, None] + p_self[:, None] * vn) / l_f[:, None]
    tl.store(out_ptrs, o.to(out_ptrs.dtype.element_ty), mask=rd_ok)


_PLANS: dict = {}


def _plan(B, Hq, Hkv, K, D, L, dtype, device) -> tuple:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, n_mblk, tiles, split on this device)."""
    G = Hq // Hkv
    BLOCK_D = max(16, triton.next_power_of_2(D))
    # tile sizes that compile without register spills on sm_90 (checked with ptxas)
    if dtype == torch.float32:
        max_m, BLOCK_N, wide_warps = (32, 32, 8) if BLOCK_D <= 128 else (16, 16, 4)
    elif BLOCK_D <= 64:
        max_m, BLOCK_N, wide_warps = 128, 64, 8
    elif BLOCK_D <= 128:
        max_m, BLOCK_N, wide_warps = 64, 64, 8
    else:
        max_m, BLOCK_N, wide_warps = 32, 32, 8
    BLOCK_M = min(max(16, triton.next_power_of_2(G * K)), max_m)
    num_warps = wide_warps if BLOCK_M * BLOCK_D >= 4096 else 4
    n_mblk = triton.cdiv(G * K, BLOCK_M)
    tiles = B * Hkv * n_mblk
    want = 1
    if device.type == "cuda":
        want = max(1, min(triton.cdiv(2 * _sm_count(device), tiles), 32))  # ~2 waves of programs
    return BLOCK_M, BLOCK_N, BLOCK_D, num_warps, n_mblk, tiles, want


def split_count(want: int, span: int, block_n: int) -> int:
    """Programs per query block along the prefix: at most `want` (the GPU's), at least
    4 * block_n keys of the longest prefix `span` each, a power of two (see the module
    docstring); 1 for an empty span."""
    by_len = max(1, span // (4 * block_n))
    return max(1, min(want, 1 << (by_len.bit_length() - 1)))


def fork_attention_triton(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale, *,
                          split: int | None = None, max_valid_len: int | None = None):
    """[B, Hq, K, D] output in q's dtype.  `split` forces the number of programs per query
    block along the prefix, otherwise chosen from the GPU's size and the longest prefix:
    `max_valid_len` (a host-side bound of every cache_end[b], None or 0: L), else L."""
    B, Hq, K, D = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    dev = q.device
    out = torch.empty(B, Hq, K, D, dtype=q.dtype, device=dev)
    if out.numel() == 0:
        return out
    q, k_cache, v_cache, k_new, v_new = map(last_dim_contiguous, (q, k_cache, v_cache, k_new, v_new))
    key = (dev, B, Hq, Hkv, K, D, L, q.dtype)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 4096:  # e.g. a cache whose length grows every step
            _PLANS.clear()
        plan = _PLANS[key] = _plan(B, Hq, Hkv, K, D, L, q.dtype, dev)
    BLOCK_M, BLOCK_N, BLOCK_D, num_warps, n_mblk, tiles, want = plan
    if split is None:
        span = L if not max_valid_len else min(int(max_valid_len), L)
        split = split_count(want, span, BLOCK_N)
    tickets = _workspace.tickets("fork_attention", dev, tiles, 4096) if split > 1 else None
    if tickets is None:
        split = 1
        tickets = torch.empty(1, dtype=torch.int32, device=dev)
    n_ws = tiles * split if split > 1 else 1
    ws_acc = torch.empty(n_ws * BLOCK_M * BLOCK_D, dtype=torch.float32, device=dev)
    ws_m = torch.empty(n_ws * BLOCK_M, dtype=torch.float32, device=dev)
    ws_l = torch.empty_like(ws_m)

    _fork_attention_kernel[(tiles, split)](
        q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, out,
        ws_acc, ws_m, ws_l, tickets,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        k_new.stride(0), k_new.stride(1), k_new.stride(2),
        v_new.stride(0), v_new.stride(1), v_new.stride(2),
        Hkv, Hq // Hkv, K, L, n_mblk, float(scale) * 1.4426950408889634,  # scores in the exp2 domain
        D=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, SPLIT=split,
        DOT_PREC="tf32x3" if q.dtype == torch.float32 else "tf32", num_warps=num_warps, num_stages=2,
    )
    return out
