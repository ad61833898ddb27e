"""topk_logprobs: log-softmax and top-k of each row of logits, in one launch.

Math, per row x = logits[b, :V], by the rule in `rgk.ops`'s docstring (ties, NaN, inf):
    x        = sanitised fp32 logits (NaN -> -inf, +inf -> FLT_MAX), on every load
    m, s     = max_v x_v, sum_v exp(x_v - m)
    top      = the k first entries in the order (value desc, index asc)
    logp[b]  = (top - m) - log(s)  (-inf where top = -inf)
    ids[b]   = their vocabulary indices; slots past the finite entries take the lowest
               -inf entries' indices, ascending
Shapes: logits [B, V] fp32/bf16/fp16 (unit stride along V) -> logp [B, k] fp32,
ids [B, k] int64, 1 <= k <= 64.

Design.  A value and its index are packed into one int64 sort key (an order-preserving
int32 image of the float in the high half, -0.0 read as +0.0, the inverted index in the
low half), so Triton's value-only bitonic `tl.topk`/`tl.bitonic_merge` sort (value, id)
pairs in exactly the total order above.
Bitonic top-k over a whole tile costs O(BLOCK log^2 k) per tile, far more than reading
it, so each program instead streams its share of the row twice:

  pass 1  running maximum per lane (lane j sees x[j], x[j + BLOCK], ...): one max per
          element, no reduction; then folded to LANES = max(128, 4 K_PAD) lanes.  The
          k-th largest lane maximum T is a lower bound of the k-th largest value (the
          lanes hold k distinct elements >= T).
  pass 2  sum of exp(x - max) (the max is known now, so no rescaling) and a stream
          compaction of the finite elements >= T into a small scratch list (CAP keys);
          for data without massive ties only ~k + k^2/(2 LANES) elements qualify.
  select  one `tl.topk` over the CAP scratch keys.  If more than CAP elements
          qualified (ties, e.g. a constant row), a third pass merges each tile's
          top-k into a running sorted list instead: slow but exact.

The second read of the share hits L2 (the share was just read).  For small B one
program per row cannot pull a 128k-entry row at HBM speed, so the vocabulary is split
over SPLIT programs per row (grid B x SPLIT, about two programs per SM in total):
each writes its partial (max, sum-exp, sorted top-k) to a workspace, takes a ticket
from a per-row atomic counter, and the last to arrive merges the SPLIT sorted lists
by a bitonic merge tree, combines the log-sum-exps and writes the row — still one
launch, no host sync, CUDA-graph capturable.  The counters follow the rule of
`rgk.kernels._workspace` (per family, device and stream; the last program resets them;
SPLIT = 1 when a capture would need a new buffer).  Launch plans (tiles, SPLIT) are
cached per (device, B, V, k, dtype).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from rgk.kernels import _workspace
from rgk.kernels._launch import sm_count as _sm_count

_EMPTY = tl.constexpr(-(2**63) + 1)  # below the key of every real element
_LOG2E = tl.constexpr(1.4426950408889634)
_FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _load_clean(ptrs, mask):
    """Logits as fp32, sanitised: NaN -> -inf, +inf -> FLT_MAX (masked lanes: -inf)."""
    x = tl.load(ptrs, mask=mask, other=-float("inf")).to(tl.float32)
    return tl.where(x == x, tl.minimum(x, _FLT_MAX), -float("inf"))


@triton.jit
def _pack(x, idx):
    """int64 key ordered by (x, -idx): larger value first, lower index first on ties
    (-0.0 is +0.0: equal values)."""
    bits = tl.where(x == 0, 0, x.to(tl.int32, bitcast=True))
    okey = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (okey.to(tl.int64) << 32) | (2147483647 - idx).to(tl.int64)


@triton.jit
def _unpack(key):
    okey = (key >> 32).to(tl.int32)
    bits = okey ^ ((okey >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True), 2147483647 - key.to(tl.int32)


@triton.jit
def _share_topk(row_ptr, lo, hi, k, scratch_ptr,
                K_PAD: tl.constexpr, BLOCK: tl.constexpr, LANES: tl.constexpr, CAP: tl.constexpr):
    """(max, sum exp(x - max), top-K_PAD keys sorted descending) of x[lo:hi]."""
    offs = tl.arange(0, BLOCK)
    lane_max = tl.full([BLOCK], -float("inf"), tl.float32)
    for start in range(lo, hi, BLOCK):
        idx = start + offs
        x = _load_clean(row_ptr + idx, idx < hi)
        lane_max = tl.maximum(lane_max, x)
    folded = tl.max(tl.reshape(lane_max, [BLOCK // LANES, LANES]), axis=0)
    m = tl.max(folded, axis=0)
    best = tl.topk(folded, K_PAD)
    thr = tl.max(tl.where(tl.arange(0, K_PAD) == k - 1, best, -float("inf")), axis=0)

    s_vec = tl.zeros([BLOCK], tl.float32)
    count = 0
    for start in range(lo, hi, BLOCK):
        idx = start + offs
        x = _load_clean(row_ptr + idx, idx < hi)
        finite = x > -float("inf")
        s_vec += tl.where(finite, tl.exp2((x - m) * _LOG2E), 0.0)
        cand = finite & (x >= thr)
        c = cand.to(tl.int32)
        pos = count + tl.cumsum(c, axis=0) - 1
        tl.store(scratch_ptr + pos, _pack(x, idx), mask=cand & (pos < CAP))
        count += tl.sum(c, axis=0)
    s = tl.sum(s_vec, axis=0)

    tl.debug_barrier()  # scratch written by all threads before anyone reads it
    if count <= CAP:
        so = tl.arange(0, CAP)
        keys = tl.load(scratch_ptr + so, mask=so < count, other=_EMPTY)
        top = tl.topk(keys, K_PAD)
    else:
        top = tl.full([K_PAD], _EMPTY, tl.int64)
        for start in range(lo, hi, BLOCK):
            idx = start + offs
            x = _load_clean(row_ptr + idx, idx < hi)
            keys = tl.where((x > -float("inf")) & (x >= thr), _pack(x, idx), _EMPTY)
            if tl.max(keys, axis=0) > tl.min(top, axis=0):
                tile_top = tl.topk(keys, K_PAD)
                top = tl.bitonic_merge(tl.maximum(top, tl.flip(tile_top, 0)), descending=True)
    return m, s, top


@triton.jit
def _merge_sorted_rows(keys, K_PAD: tl.constexpr, LOG2_ROWS: tl.constexpr):
    """keys [2^LOG2_ROWS, K_PAD], rows sorted descending -> top K_PAD of all, sorted [K_PAD]."""
    for _ in tl.static_range(LOG2_ROWS):
        pairs = tl.permute(tl.reshape(keys, [keys.shape[0] // 2, 2, K_PAD]), (0, 2, 1))
        a, b = tl.split(pairs)
        # a descending, b flipped ascending: their elementwise max is the top K_PAD of
        # both, as a bitonic sequence
        keys = tl.bitonic_merge(tl.maximum(a, tl.flip(b, 1)), descending=True)
    return tl.reshape(keys, [K_PAD])


@triton.jit
def _write_row(row_ptr, V, k, m, s, top, logp_ptr, ids_ptr, K_PAD: tl.constexpr, BLOCK: tl.constexpr):
    val, idx = _unpack(top)
    # (val - m) - log(s), never val - lse: exact (x - m) keeps precision at large offsets.
    # -inf only where val - m underflows (an all -inf row has no real slot)
    lp = (val - m) - tl.log(s)
    j = tl.arange(0, K_PAD)
    real = top != _EMPTY
    ok = real & (lp > -float("inf")) & (lp < float("inf"))
    tl.store(logp_ptr + j, tl.where(ok, lp, -float("inf")), mask=j < k)
    tl.store(ids_ptr + j, idx.to(tl.int64), mask=real & (j < k))
    n_real = tl.sum((real & (j < k)).to(tl.int32), axis=0)
    if n_real < k:
        # fewer than k finite entries: the remaining slots take distinct -inf entries
        offs = tl.arange(0, BLOCK)
        filled = n_real
        for start in range(0, V, BLOCK):
            i = start + offs
            x = _load_clean(row_ptr + i, i < V)
            neg = (i < V) & (x == -float("inf"))
            c = neg.to(tl.int32)
            pos = filled + tl.cumsum(c, axis=0) - 1
            tl.store(ids_ptr + pos, i.to(tl.int64), mask=neg & (pos < k))
            filled += tl.sum(c, axis=0)


@triton.jit
def _topk_logprobs_kernel(
    logits_ptr, stride_row, V, k, chunk,
    logp_ptr, ids_ptr,
    part_m_ptr, part_s_ptr, part_key_ptr, scratch_ptr, ticket_ptr,
    SPLIT: tl.constexpr, LOG2_SPLIT: tl.constexpr, K_PAD: tl.constexpr,
    BLOCK: tl.constexpr, LANES: tl.constexpr, CAP: tl.constexpr,
):
    row = tl.program_id(0)
    part = tl.program_id(1)
    pid = row * SPLIT + part
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    lo = part * chunk
    hi = tl.minimum(lo + chunk, V)
    m, s, top = _share_topk(row_ptr, lo, hi, k, scratch_ptr + pid.to(tl.int64) * CAP,
                            K_PAD, BLOCK, LANES, CAP)
    out_logp = logp_ptr + row.to(tl.int64) * k
    out_ids = ids_ptr + row.to(tl.int64) * k
    if SPLIT == 1:
        _write_row(row_ptr, V, k, m, s, top, out_logp, out_ids, K_PAD, BLOCK)
    else:
        kj = tl.arange(0, K_PAD)
        tl.store(part_m_ptr + pid, m)
        tl.store(part_s_ptr + pid, s)
        tl.store(part_key_ptr + pid.to(tl.int64) * K_PAD + kj, top)
        tl.debug_barrier()  # every thread's partial is stored before the ticket releases it
        ticket = tl.atomic_add(ticket_ptr + row, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT - 1:
            r = row * SPLIT + tl.arange(0, SPLIT)
            ms = tl.load(part_m_ptr + r, cache_modifier=".cg")
            ss = tl.load(part_s_ptr + r, cache_modifier=".cg")
            keys = tl.load(part_key_ptr + r.to(tl.int64)[:, None] * K_PAD + kj[None, :], cache_modifier=".cg")
            m_all = tl.max(ms, axis=0)
            s_all = tl.sum(tl.where(ms > -float("inf"), ss * tl.exp2((ms - m_all) * _LOG2E), 0.0), axis=0)
            top_all = _merge_sorted_rows(keys, K_PAD, LOG2_SPLIT)
            _write_row(row_ptr, V, k, m_all, s_all, top_all, out_logp, out_ids, K_PAD, BLOCK)
            tl.atomic_xchg(ticket_ptr + row, 0)  # ready for the next launch


_PLANS: dict = {}


def _pick_split(B: int, V: int, block: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    want = triton.next_power_of_2(triton.cdiv(2 * _sm_count(device), B))
    most = max(1, V // (2 * block))  # keep at least two tiles per program
    return max(1, min(want, 1 << (most.bit_length() - 1), 64))


def _plan(B: int, V: int, k: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """(K_PAD, LANES, CAP, BLOCK, SPLIT on this device), cached per call shape."""
    key = (device, B, V, k, dtype)
    plan = _PLANS.get(key)
    if plan is None:
        K_PAD = max(2, triton.next_power_of_2(k))
        LANES = max(128, 4 * K_PAD)
        CAP = max(64, 4 * K_PAD)
        BLOCK = max(LANES, min(1024, triton.next_power_of_2(V)))
        if len(_PLANS) > 4096:  # shapes that vary every call: do not grow without bound
            _PLANS.clear()
        plan = _PLANS[key] = (K_PAD, LANES, CAP, BLOCK, _pick_split(B, V, BLOCK, device))
    return plan


def topk_logprobs_triton(logits: torch.Tensor, k: int, *, split: int | None = None):
    """(logp [B, k] fp32, ids [B, k] int64) in the order of `rgk.ops`; `split` (a power of
    two) forces the number of programs per row, otherwise chosen from the GPU's size."""
    B, V = logits.shape
    if not 1 <= k <= min(V, 64):
        raise ValueError(f"k: expected an int in [1, {min(V, 64)}] (the vocabulary size, at most 64), got {k}")
    dev = logits.device
    logp = torch.empty(B, k, dtype=torch.float32, device=dev)
    ids = torch.empty(B, k, dtype=torch.int64, device=dev)
    if B == 0:
        return logp, ids
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    K_PAD, LANES, CAP, BLOCK, SPLIT = _plan(B, V, k, logits.dtype, dev)
    if split is not None:
        SPLIT = split
    tickets = _workspace.tickets("topk_logprobs", dev, B, 1024) if SPLIT > 1 else None
    if tickets is None:
        SPLIT = 1
        tickets = torch.empty(1, dtype=torch.int32, device=dev)
    chunk = triton.cdiv(triton.cdiv(V, SPLIT), BLOCK) * BLOCK

    n_prog = B * SPLIT
    part_m = torch.empty(n_prog if SPLIT > 1 else 1, dtype=torch.float32, device=dev)
    part_s = torch.empty_like(part_m)
    part_key = torch.empty((n_prog if SPLIT > 1 else 1) * K_PAD, dtype=torch.int64, device=dev)
    scratch = torch.empty(n_prog * CAP, dtype=torch.int64, device=dev)
    _topk_logprobs_kernel[(B, SPLIT)](
        logits, logits.stride(0), V, k, chunk,
        logp, ids, part_m, part_s, part_key, scratch, tickets,
        SPLIT=SPLIT, LOG2_SPLIT=int(math.log2(SPLIT)), K_PAD=K_PAD,
        BLOCK=BLOCK, LANES=LANES, CAP=CAP, num_warps=4,
    )
    return logp, ids
