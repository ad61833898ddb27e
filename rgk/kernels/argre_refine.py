"""argre_refine: ARGRE steering plus n gradient-ascent steps on a ReLU reward MLP, one launch.

Math, per row x = h[b] (fp32), with θ(x) = w2 . relu(W1 x + b1) + b2:
    gap = r_plus - θ(h);   x = h + (gap * 1[gap > 0] / beta) * direction
    repeat n_steps:        x = x + step_size * ∇θ(x),   ∇θ(x) = W1^T (w2 ⊙ 1[W1 x + b1 > 0])
    out[b] = x in h's dtype
(the ReLU derivative is 1 only where the pre-activation is > 0, as torch's autograd has it).
Shapes: h [B, d]; W1 [m, d]; b1 [m]; w2 [1, m]; b2 [1]; direction [d]; any float dtypes,
all math in fp32.

Design.  The steps are sequential and each needs a full reduction over d (forward,
W1 x) and over m (backward, W1^T c), so one program owns one row for the whole
refinement and sweeps W1 twice per step, in [BLOCK_M, BLOCK_D] tiles with elementwise
fp32 FMAs (exact fp32 products; a row is a matrix-vector product, no use for tensor
cores).  The row's current x (fp32, d floats) and the ReLU-masked w2 (m floats) live
in small global scratch rows that stay in L1/L2, with a CTA barrier between sweeps.
W1 (m x d, 4-16 MB in fp32 for m = 1024) is re-read every sweep from L2, which all
programs share.  Cost: (2 n_steps + 1) sweeps of W1 per row, bounded by one SM's L2
bandwidth (~1.5 ms for d = 4096, m = 1024, 5 steps, fp32 W1; ~0.2 ms at d = 576).
Splitting W1 over several programs per row would need a grid-wide barrier per sweep
(a persistent cooperative kernel), which the Triton interpreter cannot run and which
deadlocks unless every program is resident; this version keeps one program per row, and
`rgk.ops` routes large heads ((2 n_steps + 1) m d above `rgk.ops.ARGRE_TRITON_MAX_READS`)
on CUDA tensors to batched GEMMs instead (`rgk.ops.reference.argre_refine_matmul`; the
CUDA extension has the persistent split kernel).  Launch plans are cached per
(device, d, m, dtype).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _reward_sweep(x_ptr, w1_ptr, sw1, b1_ptr, w2_ptr, c_ptr, d, m,
                  WRITE_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """w2 . relu(W1 x + b1) (without b2); if WRITE_C, also c = w2 ⊙ 1[W1 x + b1 > 0] -> c_ptr."""
    mm = tl.arange(0, BLOCK_M)
    dd = tl.arange(0, BLOCK_D)
    r = tl.zeros([BLOCK_M], tl.float32)
    for m0 in range(0, m, BLOCK_M):
        mi = m0 + mm
        m_ok = mi < m
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for d0 in range(0, d, BLOCK_D):
            di = d0 + dd
            d_ok = di < d
            w = tl.load(w1_ptr + mi[:, None] * sw1 + di[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            xv = tl.load(x_ptr + di, mask=d_ok, other=0.0).to(tl.float32)
            acc += w.to(tl.float32) * xv[None, :]
        z = tl.sum(acc, axis=1) + tl.load(b1_ptr + mi, mask=m_ok, other=0.0).to(tl.float32)
        w2 = tl.load(w2_ptr + mi, mask=m_ok, other=0.0).to(tl.float32)
        r += tl.maximum(z, 0.0) * w2
        if WRITE_C:
            tl.store(c_ptr + mi, tl.where(z > 0, w2, 0.0), mask=m_ok)
    return tl.sum(r, axis=0)


@triton.jit
def _argre_refine_kernel(
    h_ptr, sh, w1_ptr, sw1, b1_ptr, w2_ptr, b2_ptr, dir_ptr, out_ptr, x_ws_ptr, c_ws_ptr,
    d, m, r_plus, beta, n_steps, step_size,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h_row = h_ptr + b * sh
    x_row = x_ws_ptr + b * d
    c_row = c_ws_ptr + b * m
    mm = tl.arange(0, BLOCK_M)
    dd = tl.arange(0, BLOCK_D)

    theta = _reward_sweep(h_row, w1_ptr, sw1, b1_ptr, w2_ptr, c_row, d, m, False, BLOCK_M, BLOCK_D)
    gap = r_plus - (theta + tl.load(b2_ptr).to(tl.float32))
    coef = tl.where(gap > 0, gap, 0.0) / beta
    for d0 in range(0, d, BLOCK_D):
        di = d0 + dd
        d_ok = di < d
        x = tl.load(h_row + di, mask=d_ok, other=0.0).to(tl.float32)
        u = tl.load(dir_ptr + di, mask=d_ok, other=0.0).to(tl.float32)
        tl.store(x_row + di, x + coef * u, mask=d_ok)
    tl.debug_barrier()

    for _ in range(n_steps):
        _reward_sweep(x_row, w1_ptr, sw1, b1_ptr, w2_ptr, c_row, d, m, True, BLOCK_M, BLOCK_D)
        tl.debug_barrier()  # the whole mask c is written before the backward sweep reads it
        for d0 in range(0, d, BLOCK_D):
            di = d0 + dd
            d_ok = di < d
            g = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for m0 in range(0, m, BLOCK_M):
                mi = m0 + mm
                m_ok = mi < m
                w = tl.load(w1_ptr + mi[:, None] * sw1 + di[None, :], mask=m_ok[:, None] & d_ok[None, :],
                            other=0.0)
                cv = tl.load(c_row + mi, mask=m_ok, other=0.0)
                g += w.to(tl.float32) * cv[:, None]
            x = tl.load(x_row + di, mask=d_ok, other=0.0)
            tl.store(x_row + di, x + step_size * tl.sum(g, axis=0), mask=d_ok)
        tl.debug_barrier()  # x is complete before the next forward sweep reads it

    for d0 in range(0, d, BLOCK_D):
        di = d0 + dd
        d_ok = di < d
        x = tl.load(x_row + di, mask=d_ok, other=0.0)
        tl.store(out_ptr + b * d + di, x.to(out_ptr.dtype.element_ty), mask=d_ok)


_PLANS: dict = {}


def _plan(d: int, m: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """(BLOCK_M, BLOCK_D), cached per call shape."""
    key = (device, d, m, dtype)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        plan = _PLANS[key] = (min(64, max(16, triton.next_power_of_2(m))), min(128, max(16, triton.next_power_of_2(d))))
    return plan


def argre_refine_triton(h, w1, b1, w2, b2, direction, r_plus, *, beta, n_steps, step_size):
    """h' [B, d] in h's dtype."""
    B, d = h.shape
    m = w1.shape[0]
    dev = h.device
    out = torch.empty(B, d, dtype=h.dtype, device=dev)
    if B == 0:
        return out
    h = h if h.stride(-1) == 1 else h.contiguous()
    w1 = w1 if w1.stride(-1) == 1 else w1.contiguous()
    b1, w2, b2, direction = (t.contiguous() for t in (b1, w2, b2, direction))
    x_ws = torch.empty(B, d, dtype=torch.float32, device=dev)
    c_ws = torch.empty(B, m, dtype=torch.float32, device=dev)
    BLOCK_M, BLOCK_D = _plan(d, m, h.dtype, dev)
    _argre_refine_kernel[(B,)](
        h, h.stride(0), w1, w1.stride(0), b1, w2, b2, direction, out, x_ws, c_ws,
        d, m, float(r_plus), float(beta), int(n_steps), float(step_size),
        BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, num_warps=8,
    )
    return out
