"""reward_select: reward head, ARGS score and the greedy or sampled choice, in one launch.

Math, for row b and candidate j < K (all in fp32):
    r[b,j]     = w1 . h[b,j] + b1                          (linear head, w1 [1, d])
               = w2 . relu(W1 h[b,j] + b1) + b2            (MLP head, W1 [m, d], w2 [1, m])
    score[b,j] = logp[b,j] + reward_weight * r[b,j]        (-inf where logp is not finite)
    greedy (temperature == 0): index = lowest j with the maximal score (0 if all are -inf)
    sampled:  p = softmax(score / temperature), CDF_j = p_0 + ... + p_j, total = CDF_{K-1};
              index = #{j : CDF_j <= u[b] * total}, capped at the last j with p_j > 0
              (0 when total == 0) — the same operations, in the same order, as the
              reference's `_sample_index`, so equal uniforms give equal choices.
    token[b]   = ids[b, index]
Shapes: hidden [B, K, d] (any float dtype, unit last stride), logp [B, K], ids [B, K],
uniform [B]; returns token [B] int64, index [B] int64, score [B, K] fp32, reward [B, K] fp32.

Design.  K is small (ARGS uses ~10, at most a few dozen), so one program owns a row:
it reads the row's K hidden states once, evaluates the head, and does the arg-max or
the inverse-CDF draw over K_PAD = next_pow2(K) lanes in registers.  The linear head is
an elementwise multiply-reduce over d tiles.  The MLP head is a [K_PAD, d] x [d, m]
product computed m-block by m-block with tl.dot on fp32 operands with input_precision
"tf32x3" (three tf32 tensor-core products: ~1e-6 relative error, exact products for
bf16/fp16 data; "ieee" would run as register-spilling FMA loops; K_PAD >= 16 for the
dot), folding relu and w2 in as each block finishes, so the [K, m] hidden layer never
leaves registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _reward_select_kernel(
    hid_ptr, sh_b, sh_k, logp_ptr, slp_b, ids_ptr, sid_b,
    w1_ptr, sw1, b1_ptr, w2_ptr, b2_ptr, u_ptr,
    tok_ptr, idx_ptr, score_ptr, rew_ptr,
    K, d, m, reward_weight, temperature,
    K_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    MLP: tl.constexpr, SAMPLE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, K_PAD)
    jk = j < K
    dd = tl.arange(0, BLOCK_D)
    h_row = hid_ptr + b * sh_b + j[:, None] * sh_k

    if MLP:
        hh = tl.arange(0, BLOCK_H)
        r = tl.zeros([K_PAD], tl.float32)
        for m0 in range(0, m, BLOCK_H):
            mi = m0 + hh
            z = tl.zeros([K_PAD, BLOCK_H], tl.float32)
            for d0 in range(0, d, BLOCK_D):
                di = d0 + dd
                x = tl.load(h_row + di[None, :], mask=jk[:, None] & (di < d)[None, :], other=0.0)
                w = tl.load(w1_ptr + mi[:, None] * sw1 + di[None, :], mask=(mi < m)[:, None] & (di < d)[None, :],
                            other=0.0)
                z = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), z, input_precision="tf32x3")
            z += tl.load(b1_ptr + mi, mask=mi < m, other=0.0).to(tl.float32)[None, :]
            w2 = tl.load(w2_ptr + mi, mask=mi < m, other=0.0).to(tl.float32)
            r += tl.sum(tl.maximum(z, 0.0) * w2[None, :], axis=1)
        r += tl.load(b2_ptr).to(tl.float32)
    else:
        acc = tl.zeros([K_PAD, BLOCK_D], tl.float32)
        for d0 in range(0, d, BLOCK_D):
            di = d0 + dd
            x = tl.load(h_row + di[None, :], mask=jk[:, None] & (di < d)[None, :], other=0.0)
            w = tl.load(w1_ptr + di, mask=di < d, other=0.0)
            acc += x.to(tl.float32) * w.to(tl.float32)[None, :]
        r = tl.sum(acc, axis=1) + tl.load(b1_ptr).to(tl.float32)

    lp = tl.load(logp_ptr + b * slp_b + j, mask=jk, other=-float("inf")).to(tl.float32)
    score = tl.where((lp > -float("inf")) & (lp < float("inf")), lp + reward_weight * r, -float("inf"))
    tl.store(score_ptr + b * K + j, score, mask=jk)
    tl.store(rew_ptr + b * K + j, r, mask=jk)

    if SAMPLE:
        x = score / temperature
        e = tl.where(x > -float("inf"), tl.exp(x - tl.max(x, axis=0)), 0.0)
        p = e / tl.sum(e, axis=0)
        cdf = tl.cumsum(p, axis=0)
        total = tl.max(cdf, axis=0)  # = CDF_{K-1}: padded lanes add exact zeros
        u = tl.load(u_ptr + b).to(tl.float32) * total
        index = tl.sum(((cdf <= u) & jk).to(tl.int32), axis=0)
        last_nz = tl.max(tl.where(p > 0, j, 0), axis=0)
        index = tl.minimum(index, last_nz)
        index = tl.where(total > 0, index, 0)
    else:
        best = tl.max(score, axis=0)
        first = tl.min(tl.where((score == best) & jk, j, K_PAD), axis=0)
        index = tl.where(first < K, first, 0)

    token = tl.load(ids_ptr + b * sid_b + index).to(tl.int64)
    tl.store(tok_ptr + b, token)
    tl.store(idx_ptr + b, index.to(tl.int64))


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def reward_select_triton(hidden, logp, ids, w1, b1, w2=None, b2=None, *, reward_weight, temperature, uniform):
    """(token [B] int64, index [B] int64, score [B, K] fp32, reward [B, K] fp32)."""
    hidden, logp, ids, w1 = map(_unit_last, (hidden, logp, ids, w1))
    B, K, d = hidden.shape
    m = w1.shape[0]
    mlp = w2 is not None
    sample = temperature > 0
    dev = hidden.device
    b1 = b1.contiguous()
    if mlp:
        w2, b2 = w2.contiguous(), b2.contiguous()
        K_PAD = max(16, triton.next_power_of_2(K))
        BLOCK_D, BLOCK_H = 32, 64  # no register spills on sm_90 up to K_PAD = 64 (ptxas)
    else:
        w2 = b2 = b1  # unused
        K_PAD = max(2, triton.next_power_of_2(K))
        BLOCK_D = max(16, min(triton.next_power_of_2(d), 4096 // K_PAD))
        BLOCK_H = 16
    u = uniform.contiguous() if sample else logp  # unused when greedy

    token = torch.empty(B, dtype=torch.int64, device=dev)
    index = torch.empty(B, dtype=torch.int64, device=dev)
    score = torch.empty(B, K, dtype=torch.float32, device=dev)
    reward = torch.empty(B, K, dtype=torch.float32, device=dev)
    _reward_select_kernel[(B,)](
        hidden, hidden.stride(0), hidden.stride(1), logp, logp.stride(0), ids, ids.stride(0),
        w1, w1.stride(0), b1, w2, b2, u,
        token, index, score, reward,
        K, d, m, float(reward_weight), float(temperature) if sample else 1.0,
        K_PAD=K_PAD, BLOCK_D=BLOCK_D, BLOCK_H=BLOCK_H, MLP=mlp, SAMPLE=sample,
        num_warps=min(16, max(4, K_PAD // 8)),
    )
    return token, index, score, reward
