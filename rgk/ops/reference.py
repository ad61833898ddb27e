"""Plain-PyTorch references for every fused op.

They are the CPU fallback and the test oracle: every Triton and CUDA kernel is checked
against the function of the same name here.  They are written for clarity, not speed,
but each is also the "best plain-PyTorch composition" that the benchmarks compare with.
"""
from __future__ import annotations

import math

import torch


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log_softmax(logits)[topk] for each row.

    logits: [B, V] (fp32/bf16/fp16, may hold -inf).  Returns (logp [B, k] fp32 sorted
    descending, ids [B, k] int64).  A row whose entries are all -inf gives logp = -inf.
    Slots past the number of finite entries hold logp = -inf (their ids are arbitrary
    but valid vocabulary indices).
    """
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    vals, ids = torch.topk(x, k, dim=-1)
    logp = vals - lse
    logp = torch.where(torch.isfinite(vals) & torch.isfinite(lse), logp, torch.full_like(logp, -math.inf))
    return logp, ids


def fork_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_start: torch.Tensor,
    cache_end: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of K candidate tokens to a shared prefix plus their own KV entry.

    q:        [B, Hq, K, D]   queries of the K candidates of each row
    k_cache:  [B, Hkv, L, D]  prefix cache; row b is valid on [cache_start[b], cache_end[b])
    v_cache:  [B, Hkv, L, D]
    k_new:    [B, Hkv, K, D]  each candidate's own key/value (candidate j sees only slot j)
    v_new:    [B, Hkv, K, D]
    cache_start, cache_end: int [B]
    Hq must be a multiple of Hkv (GQA); query head h reads kv head h // (Hq // Hkv).
    Returns [B, Hq, K, D] in q's dtype; softmax in fp32.
    """
    B, Hq, K, D = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    g = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qf = q.float().reshape(B, Hkv, g * K, D)
    kc, vc = k_cache.float(), v_cache.float()
    s_pre = torch.einsum("bhqd,bhld->bhql", qf, kc) * scale  # [B, Hkv, gK, L]
    pos = torch.arange(L, device=q.device)
    valid = (pos[None, :] >= cache_start[:, None].long()) & (pos[None, :] < cache_end[:, None].long())
    s_pre = s_pre.masked_fill(~valid[:, None, None, :], -math.inf)
    qn = qf.reshape(B, Hkv, g, K, D)
    s_self = (qn * k_new.float()[:, :, None]).sum(-1) * scale  # [B, Hkv, g, K]
    s_self = s_self.reshape(B, Hkv, g * K, 1)
    s = torch.cat([s_pre, s_self], dim=-1)
    p = torch.softmax(s, dim=-1)
    out = torch.einsum("bhql,bhld->bhqd", p[..., :L], vc)
    out = out.reshape(B, Hkv, g, K, D) + p[..., L].reshape(B, Hkv, g, K, 1) * v_new.float()[:, :, None]
    return out.reshape(B, Hq, K, D).to(q.dtype)


def reward_head(hidden: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor | None = None, b2: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar reward of hidden states [..., d] in fp32.

    Linear head: w1 [1, d], b1 [1].  MLP head: w1 [m, d], b1 [m], w2 [1, m], b2 [1],
    r = w2 · relu(w1 h + b1) + b2.
    """
    h = hidden.float()
    z = h @ w1.float().t() + b1.float()
    if w2 is None:
        return z[..., 0]
    return (torch.relu(z) @ w2.float().t() + b2.float())[..., 0]


def reward_select(
    hidden: torch.Tensor,
    logp: torch.Tensor,
    ids: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    *,
    reward_weight: float,
    temperature: float = 0.0,
    uniform: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ARGS selection over K candidates.

    hidden [B, K, d] candidates' final hidden states; logp [B, K] fp32 log-probs; ids [B, K].
    score = logp + reward_weight * r(hidden).  temperature == 0: argmax (lowest index wins
    ties); else the index j with CDF_{j-1} <= u < CDF_j for softmax(score / temperature),
    u = uniform [B] in [0, 1).  Candidates with logp = -inf are never chosen unless every
    candidate of the row is -inf (then index 0).
    Returns (token [B] int64, index [B] int64, score [B, K] fp32, reward [B, K] fp32).
    """
    r = reward_head(hidden, w1, b1, w2, b2)
    token, index, score = select_from_rewards(logp, ids, r, reward_weight=reward_weight,
                                              temperature=temperature, uniform=uniform)
    return token, index, score, r


def select_from_rewards(logp, ids, r, *, reward_weight: float, temperature: float = 0.0, uniform=None):
    """The choice half of `reward_select`, for rewards r [B, K] computed elsewhere (e.g. a
    reward callable on text).  Returns (token [B], index [B], score [B, K] fp32)."""
    score = logp.float() + reward_weight * r.float()
    score = torch.where(torch.isfinite(logp), score, torch.full_like(score, -math.inf))
    if temperature == 0.0:
        index = _first_argmax(score)
    else:
        if uniform is None:
            raise ValueError("reward_select: `uniform` [B] is required when temperature > 0")
        index = _sample_index(score / temperature, uniform)
    token = ids.gather(1, index[:, None])[:, 0]
    return token, index, score


def _first_argmax(score: torch.Tensor) -> torch.Tensor:
    m = score.max(dim=-1, keepdim=True).values
    hit = score == m
    K = score.shape[-1]
    idx = torch.arange(K, device=score.device).expand_as(score)
    first = torch.where(hit, idx, torch.full_like(idx, K)).min(dim=-1).values
    return torch.where(first == K, torch.zeros_like(first), first)


def _sample_index(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)
    cdf = torch.cumsum(p, dim=-1)
    total = cdf[:, -1:]
    u = uniform.float()[:, None] * total
    index = (cdf <= u).sum(dim=-1)
    # guard against u*total landing on the last cdf value through rounding: pick the last
    # candidate with non-zero probability
    last_nz = (p > 0).long().cumsum(-1).argmax(-1)
    index = torch.minimum(index, last_nz)
    return torch.where(total[:, 0] > 0, index, torch.zeros_like(index))


def argre_reward(h: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """ARGRE token reward θ_r(h) = w2 · relu(w1 h + b1) + b2 for h [..., d], fp32."""
    return reward_head(h, w1, b1, w2, b2)


def argre_refine(
    h: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    direction: torch.Tensor,
    r_plus: float,
    *,
    beta: float = 1.0,
    n_steps: int = 5,
    step_size: float = 0.5,
) -> torch.Tensor:
    """ARGRE edit of final hidden states h [B, d] (autograd reference).

    Steering: h' = h + (1/beta) (r_plus - θ(h)) 1[r_plus > θ(h)] direction
    then n_steps of h' <- h' + step_size ∇_h θ(h').  The MLP runs in fp32; the result is
    returned in h's dtype.  w1 [m, d], b1 [m], w2 [1, m], b2 [1], direction [d] (d_raw).
    """
    x = h.float()
    with torch.no_grad():
        r = argre_reward(x, w1, b1, w2, b2)
        gap = r_plus - r
        x = x + ((gap * (gap > 0).float()) / beta)[:, None] * direction.float()[None, :]
    for _ in range(n_steps):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            r = argre_reward(xg, w1, b1, w2, b2).sum()
            (g,) = torch.autograd.grad(r, xg)
        x = x.detach() + step_size * g
    return x.to(h.dtype)
