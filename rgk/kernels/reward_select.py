"""reward_select: reward head, ARGS score and the greedy or sampled choice, in one launch.

Math, for row b and candidate j < K, in fp32, by the rule in `rgk.ops`'s docstring:
    r[b,j]     = w1 . h[b,j] + b1                          (linear head, w1 [1, d])
               = w2 . relu(W1 h[b,j] + b1) + b2            (MLP head, W1 [m, d], w2 [1, m])
    score[b,j] = logp[b,j] + reward_weight * r[b,j]        (logp alone when reward_weight == 0)
                 then -inf where logp = -inf or the score is NaN, +inf -> FLT_MAX
    greedy (temperature == 0): index = lowest j with the maximal score (0 if all are -inf)
    sampled:  z = (score - max score) / temperature over score > -inf (temperature >= FLT_MIN,
              floored by the caller), p = softmax over z > -inf,
              CDF_j = p_0 + ... + p_j; index = #{j : CDF_j <= u[b] * CDF_{K-1}}, capped at
              the last j with p_j > 0 (0 when all are -inf) — the same operations, in the
              same order, as `rgk.ops.reference._sample_index`.
    token[b]   = ids[b, index]
Shapes: hidden [B, K, d] (any float dtype, unit last stride), logp [B, K], ids [B, K],
uniform [B]; returns token [B] int64, index [B] int64, score [B, K] fp32, reward [B, K]
(raw) fp32.  1 <= K <= 64; K = 0 is refused before any launch.

Design.  K is small (ARGS uses ~10, at most a few dozen), so the K candidates of a row
are one tile of K_PAD = next_pow2(K) lanes, and the choice (arg-max or inverse-CDF draw)
is done in registers.  The linear head is one program per row: an elementwise
multiply-reduce over d tiles.  The MLP head is a [K_PAD, d] x [d, m] product computed
m-block by m-block with tl.dot on fp32 operands with input_precision "tf32x3" (three
tf32 tensor-core products: ~1e-6 relative error, exact products for bf16/fp16 data;
"ieee" would run as register-spilling FMA loops; K_PAD >= 16 for the dot), folding relu
and w2 in as each block finishes, so the [K, m] hidden layer never leaves registers.
Its grid is 2-D, rows x SPLIT slices of the m hidden units, so that a few rows still
spread W1 (m x d, megabytes) over the whole GPU: each program writes its partial reward
[K_PAD] to a workspace and takes a ticket from a per-row counter; the last program of
the row sums the SPLIT partials in slice order (deterministic), adds b2 and makes the
choice — still one launch.  The counters follow the rule of `rgk.kernels._workspace`
(per family, device and stream; SPLIT = 1 when a capture would need a new buffer).
Launch plans are cached per (device, B, K, d, m, dtype, mode).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rgk.kernels import _workspace
from rgk.kernels._launch import last_dim_contiguous, sm_count as _sm_count

_FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _mlp_slice(h_row, jk, w1_ptr, sw1, b1_ptr, w2_ptr, lo, hi, d,
               K_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    """sum over the hidden units u in [lo, hi) of w2_u relu(W1_u . h_j + b1_u), per candidate j."""
    j = tl.arange(0, K_PAD)
    dd = tl.arange(0, BLOCK_D)
    hh = tl.arange(0, BLOCK_H)
    r = tl.zeros([K_PAD], tl.float32)
    for m0 in range(lo, hi, BLOCK_H):
        mi = m0 + hh
        m_ok = mi < hi
        z = tl.zeros([K_PAD, BLOCK_H], tl.float32)
        for d0 in range(0, d, BLOCK_D):
            di = d0 + dd
            x = tl.load(h_row + di[None, :], mask=jk[:, None] & (di < d)[None, :], other=0.0)
            w = tl.load(w1_ptr + mi[:, None] * sw1 + di[None, :], mask=m_ok[:, None] & (di < d)[None, :], other=0.0)
            z = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), z, input_precision="tf32x3")
        z += tl.load(b1_ptr + mi, mask=m_ok, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w2_ptr + mi, mask=m_ok, other=0.0).to(tl.float32)
        r += tl.sum(tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL) * w2[None, :], axis=1)  # NaN as torch.relu
    return r


@triton.jit
def _choose(b, r, logp_ptr, slp_b, ids_ptr, sid_b, u_ptr, tok_ptr, idx_ptr, score_ptr, rew_ptr,
            K, reward_weight, temperature, K_PAD: tl.constexpr, SAMPLE: tl.constexpr):
    """Score, choice and the row's outputs, from its raw rewards r [K_PAD]."""
    j = tl.arange(0, K_PAD)
    jk = j < K
    lp = tl.load(logp_ptr + b * slp_b + j, mask=jk, other=-float("inf")).to(tl.float32)
    score = tl.where(reward_weight == 0, lp, lp + reward_weight * r)
    score = tl.where((score != score) | (lp == -float("inf")), -float("inf"), tl.minimum(score, _FLT_MAX))
    tl.store(score_ptr + b * K + j, score, mask=jk)
    tl.store(rew_ptr + b * K + j, r, mask=jk)

    if SAMPLE:
        smax = tl.max(score, axis=0)
        z = tl.where(score > -float("inf"), (score - tl.where(smax > -float("inf"), smax, 0.0)) / temperature,
                     -float("inf"))
        live = z > -float("inf")
        zmax = tl.max(z, axis=0)
        e = tl.where(live, tl.exp(z - zmax), 0.0)
        tot_e = tl.sum(e, axis=0)
        p = e / tl.where(tot_e > 0, tot_e, 1.0)
        cdf = tl.cumsum(p, axis=0)
        total = tl.sum(tl.where(j == K - 1, cdf, 0.0), axis=0)  # CDF_{K-1}
        u = tl.load(u_ptr + b).to(tl.float32) * total
        index = tl.sum(((cdf <= u) & jk).to(tl.int32), axis=0)
        last_nz = tl.max(tl.where((p > 0) & jk, j, 0), axis=0)
        index = tl.minimum(index, last_nz)
        index = tl.where(total > 0, index, 0)
    else:
        best = tl.max(score, axis=0)
        first = tl.min(tl.where((score == best) & jk, j, K_PAD), axis=0)
        index = tl.where(first < K, first, 0)

    token = tl.load(ids_ptr + b * sid_b + index).to(tl.int64)
    tl.store(tok_ptr + b, token)
    tl.store(idx_ptr + b, index.to(tl.int64))


@triton.jit
def _reward_select_kernel(
    hid_ptr, sh_b, sh_k, logp_ptr, slp_b, ids_ptr, sid_b,
    w1_ptr, sw1, b1_ptr, w2_ptr, b2_ptr, u_ptr,
    tok_ptr, idx_ptr, score_ptr, rew_ptr, part_ptr, ticket_ptr,
    K, d, m, per_slice, reward_weight, temperature,
    K_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    MLP: tl.constexpr, SAMPLE: tl.constexpr, SPLIT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, K_PAD)
    jk = j < K
    h_row = hid_ptr + b * sh_b + j[:, None] * sh_k

    if MLP:
        part = tl.program_id(1)
        lo = part * per_slice
        r = _mlp_slice(h_row, jk, w1_ptr, sw1, b1_ptr, w2_ptr, lo, tl.minimum(lo + per_slice, m), d,
                       K_PAD, BLOCK_D, BLOCK_H)
        if SPLIT == 1:
            r += tl.load(b2_ptr).to(tl.float32)
            _choose(b, r, logp_ptr, slp_b, ids_ptr, sid_b, u_ptr, tok_ptr, idx_ptr, score_ptr, rew_ptr,
                    K, reward_weight, temperature, K_PAD, SAMPLE)
        else:
            tl.store(part_ptr + (b * SPLIT + part) * K_PAD + j, r)
            tl.debug_barrier()  # every thread's partial is stored before the ticket releases it
            ticket = tl.atomic_add(ticket_ptr + b, 1, sem="acq_rel", scope="gpu")
            if ticket == SPLIT - 1:
                sl = tl.arange(0, SPLIT)
                parts = tl.load(part_ptr + (b * SPLIT + sl)[:, None] * K_PAD + j[None, :], cache_modifier=".cg")
                r = tl.sum(parts, axis=0) + tl.load(b2_ptr).to(tl.float32)
                _choose(b, r, logp_ptr, slp_b, ids_ptr, sid_b, u_ptr, tok_ptr, idx_ptr, score_ptr, rew_ptr,
                        K, reward_weight, temperature, K_PAD, SAMPLE)
                tl.atomic_xchg(ticket_ptr + b, 0)  # ready for the next launch
    else:
        dd = tl.arange(0, BLOCK_D)
        acc = tl.zeros([K_PAD, BLOCK_D], tl.float32)
        for d0 in range(0, d, BLOCK_D):
            di = d0 + dd
            x = tl.load(h_row + di[None, :], mask=jk[:, None] & (di < d)[None, :], other=0.0)
            w = tl.load(w1_ptr + di, mask=di < d, other=0.0)
            acc += x.to(tl.float32) * w.to(tl.float32)[None, :]
        r = tl.sum(acc, axis=1) + tl.load(b1_ptr).to(tl.float32)
        _choose(b, r, logp_ptr, slp_b, ids_ptr, sid_b, u_ptr, tok_ptr, idx_ptr, score_ptr, rew_ptr,
                K, reward_weight, temperature, K_PAD, SAMPLE)


_PLANS: dict = {}
_BLOCK_H_MLP = 64


def _pick_split(B: int, m: int, block_h: int, device: torch.device) -> int:
    """Slices of the hidden units per row for the MLP head: about two programs per SM in
    all, at least one BLOCK_H block of units each, a power of two <= 64."""
    if device.type != "cuda":
        return 1
    want = triton.next_power_of_2(triton.cdiv(2 * _sm_count(device), B))
    blocks = triton.cdiv(m, block_h)
    return max(1, min(want, 1 << (blocks.bit_length() - 1), 64))


def _plan(B, K, d, m, mlp, dtype, device) -> tuple:
    """(K_PAD, BLOCK_D, BLOCK_H, num_warps, SPLIT on this device), cached per call shape."""
    key = (device, B, K, d, m, mlp, dtype)
    plan = _PLANS.get(key)
    if plan is None:
        if mlp:
            K_PAD = max(16, triton.next_power_of_2(K))
            BLOCK_D, BLOCK_H = 32, _BLOCK_H_MLP  # no register spills on sm_90 up to K_PAD = 64 (ptxas)
            split = _pick_split(B, m, BLOCK_H, device)
        else:
            K_PAD = max(2, triton.next_power_of_2(K))
            BLOCK_D = max(16, min(triton.next_power_of_2(d), 4096 // K_PAD))
            BLOCK_H, split = 16, 1
        if len(_PLANS) > 4096:
            _PLANS.clear()
        plan = _PLANS[key] = (K_PAD, BLOCK_D, BLOCK_H, min(16, max(4, K_PAD // 8)), split)
    return plan


def reward_select_triton(hidden, logp, ids, w1, b1, w2=None, b2=None, *, reward_weight, temperature, uniform,
                         split: int | None = None):
    """(token [B] int64, index [B] int64, score [B, K] fp32, reward [B, K] fp32); `split` (a
    power of two) forces the MLP head's slices per row, otherwise chosen from the GPU's size."""
    B, K, d = hidden.shape
    if not 1 <= K <= 64:
        raise ValueError(f"hidden: expected 1 to 64 candidates per row, got shape {tuple(hidden.shape)}")
    hidden, logp, ids, w1 = map(last_dim_contiguous, (hidden, logp, ids, w1))
    m = w1.shape[0]
    mlp = w2 is not None
    sample = temperature > 0
    dev = hidden.device
    token = torch.empty(B, dtype=torch.int64, device=dev)
    index = torch.empty(B, dtype=torch.int64, device=dev)
    score = torch.empty(B, K, dtype=torch.float32, device=dev)
    reward = torch.empty(B, K, dtype=torch.float32, device=dev)
    if B == 0:
        return token, index, score, reward
    K_PAD, BLOCK_D, BLOCK_H, num_warps, SPLIT = _plan(B, K, d, m, mlp, hidden.dtype, dev)
    b1 = b1.contiguous()
    if mlp:
        w2, b2 = w2.contiguous(), b2.contiguous()
        if split is not None:
            SPLIT = split
    else:
        w2 = b2 = b1  # unused
        SPLIT = 1
    tickets = _workspace.tickets("reward_select", dev, B, 1024) if SPLIT > 1 else None
    if tickets is None:
        SPLIT = 1
        tickets = torch.empty(1, dtype=torch.int32, device=dev)
    parts = torch.empty(B * SPLIT * K_PAD if SPLIT > 1 else 1, dtype=torch.float32, device=dev)
    per_slice = triton.cdiv(triton.cdiv(m, SPLIT), BLOCK_H) * BLOCK_H
    u = uniform.contiguous() if sample else logp  # unused when greedy

    _reward_select_kernel[(B, SPLIT)](
        hidden, hidden.stride(0), hidden.stride(1), logp, logp.stride(0), ids, ids.stride(0),
        w1, w1.stride(0), b1, w2, b2, u,
        token, index, score, reward, parts, tickets,
        K, d, m, per_slice, float(reward_weight), float(temperature) if sample else 1.0,
        K_PAD=K_PAD, BLOCK_D=BLOCK_D, BLOCK_H=BLOCK_H, MLP=mlp, SAMPLE=sample, SPLIT=SPLIT,
        num_warps=num_warps,
    )
    return token, index, score, reward
