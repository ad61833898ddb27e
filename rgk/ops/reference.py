"""Plain-PyTorch references for every fused op.

They are the CPU fallback and the test oracle: every Triton and CUDA kernel is checked
against the function of the same name here.  Ties, NaN and inf follow the one rule stated
in `rgk.ops` (its module docstring).  They are written for clarity, but each is also the
plain-PyTorch composition that the benchmarks compare with, and `topk_logprobs` stays
O(V) per row (no full sort): it runs on the hot decode path of CPU generation.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F


FLT_MAX = 3.4028234663852886e38  # the largest finite fp32
FLT_MIN = 1.1754943508222875e-38  # the smallest normal fp32: the floor of a temperature > 0


def sanitize(x: torch.Tensor) -> torch.Tensor:
    """fp32 copy of x with NaN -> -inf and +inf -> FLT_MAX (see `rgk.ops`)."""
    return torch.nan_to_num(x.float(), nan=-math.inf, posinf=FLT_MAX, neginf=-math.inf)


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best entries of log_softmax(logits) per row, in the total order of `rgk.ops`.

    logits: [B, V] (fp32/bf16/fp16, may hold -inf, NaN, inf).  Returns (logp [B, k] fp32,
    ids [B, k] int64): descending, ties to the lower index, slots past the finite entries
    filled with -inf and the lowest unused indices.  O(V) per row, no full sort, no host
    sync: torch.topk (whose choice among equal values is unspecified) gives the k-th value
    t; its entries > t are right, and the entries == t it took are replaced by the
    lowest-index ones (a second top-k over the tied positions); then a stable sort of the
    k by value puts them in order.  On CPU, eagerly, the second top-k is skipped when
    torch.topk already took every entry equal to t (the usual case: no tie at the k-th).
    """
    x = sanitize(logits)
    B, V = x.shape
    vals, ids = torch.topk(x, k, dim=-1)
    m, t = vals[:, :1], vals[:, k - 1:]
    e = x - torch.where(m > -math.inf, m, 0.0)
    log_s = torch.log(e.exp_().sum(dim=-1, keepdim=True))
    at_t = x == t
    if x.device.type == "cpu" and not torch.compiler.is_compiling() and \
            bool((at_t.sum(-1, keepdim=True) == (vals == t).sum(-1, keepdim=True)).all()):
        # CPU eager (reading a flag costs no device sync): torch.topk took every entry equal
        # to t in every row, so its set is already the rule's: index ascending, then the order
        ids = ids.sort(dim=-1).values
    else:
        # the lowest-index entries equal to t: top-k of V - v over the tied v
        rev = torch.arange(V, 0, -1, device=x.device)
        tie = torch.topk(torch.where(at_t, rev, 0), k, dim=-1).values
        n_gt = (vals > t).sum(dim=-1, keepdim=True)
        j = torch.arange(k, device=x.device)
        cand = torch.cat([torch.where(vals > t, ids, V), torch.where((tie > 0) & (j < k - n_gt), V - tie, V)],
                         dim=-1)
        ids = cand.sort(dim=-1).values[:, :k]  # the k chosen (exactly k are < V), index ascending
    vals, order = torch.sort(x.gather(1, ids), dim=-1, descending=True, stable=True)
    ids = ids.gather(1, order)
    logp = torch.where(vals > -math.inf, (vals - m) - log_s, -math.inf)
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
    *,
    max_valid_len: int | None = None,
) -> torch.Tensor:
    """Attention of K candidate tokens to a shared prefix plus their own KV entry.

    q:        [B, Hq, K, D]   queries of the K candidates of each row
    k_cache:  [B, Hkv, L, D]  prefix cache; row b is valid on [cache_start[b], cache_end[b])
    v_cache:  [B, Hkv, L, D]
    k_new:    [B, Hkv, K, D]  each candidate's own key/value (candidate j sees only slot j)
    v_new:    [B, Hkv, K, D]
    cache_start, cache_end: int [B]
    max_valid_len: None (or 0) or an int in [1, L] that is >= every cache_end[b] (the
      caller's promise, see `rgk.ops.fork_attention`); only the first max_valid_len cache
      positions are then read.  The promise is checked where that costs no device sync (CPU
      tensors, outside torch.compile tracing: a ValueError naming max_valid_len); elsewhere
      the bound is not used, so it can never cut a valid key.
    Hq must be a multiple of Hkv (GQA); query head h reads kv head h // (Hq // Hkv).
    Returns [B, Hq, K, D] in q's dtype; softmax in fp32.
    """
    L = k_cache.shape[2]
    n = valid_len("max_valid_len", max_valid_len, L)
    if n < L and not verify_valid_len(cache_end, n):
        n = L
    return fork_attention_prefix(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale, n)


def valid_len(name: str, v, L: int) -> int:
    """The attended span of a `max_valid_len` argument: L for None or 0, else v in [1, L]."""
    if v is None:
        return L
    if type(v) is not int:  # noqa: E721 - the hot path passes plain ints; the rest is checked
        bad = isinstance(v, bool) or (isinstance(v, torch.Tensor) and (v.dim() != 0 or v.dtype == torch.bool))
        try:
            if bad:
                raise TypeError
            v = operator.index(v)
        except TypeError:
            what = f"a {v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else \
                f"{type(v).__name__} {v!r}"
            raise TypeError(f"{name}: expected an int or None, got {what}") from None
    if v < 0 or v > L:
        raise ValueError(f"{name}: expected None or an int in [0, {L}] (0: the cache capacity L = {L}), got {v}")
    return L if v == 0 else v


def verify_valid_len(cache_end: torch.Tensor, n: int) -> bool:
    """Check cache_end[b] <= n on the host when that needs no device sync (CPU tensors, not
    while torch.compile traces); True when checked, False when it could not be.  A row
    past the bound is a ValueError naming max_valid_len."""
    if cache_end.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if cache_end.numel() == 0:
        return True
    e = int(cache_end.max())
    if e > n:
        b = int((cache_end > n).nonzero()[0, 0])
        raise ValueError(f"max_valid_len: expected a bound >= every cache_end[b], got max_valid_len = {n} < "
                         f"cache_end[{b}] = {int(cache_end[b])}")
    return True


def fork_attention_prefix(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale, n: int, *,
                          softcap: float | None = None, sinks: torch.Tensor | None = None):
    """`fork_attention` reading only the cache positions [0, n) (n <= L, cache_end <= n
    already known): the masked softmax over [prefix ; own entry], in fp32.

    Beyond the op (used by rgk's fork pass for families that need them): `softcap` (scores ->
    softcap * tanh(scores / softcap), Gemma 2), `sinks` [Hq] (one extra logit per head that
    takes part in the softmax and attends to nothing, gpt-oss), and values whose head size
    Dv differs from the keys' (multi-head latent attention): returns [B, Hq, K, Dv]."""
    B, Hq, K, D = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    Dv = v_cache.shape[-1]
    g = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qf = q.float().reshape(B, Hkv, g * K, D)
    if n < L:
        k_cache, v_cache = k_cache[:, :, :n], v_cache[:, :, :n]
    pos = torch.arange(n, device=q.device)
    valid = (pos[None, :] >= cache_start[:, None].long()) & (pos[None, :] < cache_end[:, None].long())
    # positions outside a row's range may hold anything (NaN, inf): they must not reach it,
    # not even as 0 * NaN in the value product
    kc = torch.where(valid[:, None, :, None], k_cache.float(), 0.0)
    vc = torch.where(valid[:, None, :, None], v_cache.float(), 0.0)
    s_pre = torch.einsum("bhqd,bhld->bhql", qf, kc) * scale  # [B, Hkv, gK, n]
    qn = qf.reshape(B, Hkv, g, K, D)
    s_self = (qn * k_new.float()[:, :, None]).sum(-1) * scale  # [B, Hkv, g, K]
    s_self = s_self.reshape(B, Hkv, g * K, 1)
    if softcap is not None:
        s_pre = torch.tanh(s_pre / softcap) * softcap
        s_self = torch.tanh(s_self / softcap) * softcap
    s_pre = s_pre.masked_fill(~valid[:, None, None, :], -math.inf)
    parts = [s_pre, s_self]
    if sinks is not None:     # head h = kv head h // g, row (h % g) * K + j of the grouped layout
        parts.append(sinks.float().view(1, Hkv, g, 1).expand(B, Hkv, g, K).reshape(B, Hkv, g * K, 1))
    s = torch.cat(parts, dim=-1)
    p = torch.softmax(s, dim=-1)
    out = torch.einsum("bhql,bhld->bhqd", p[..., :n], vc)
    out = out.reshape(B, Hkv, g, K, Dv) + p[..., n].reshape(B, Hkv, g, K, 1) * v_new.float()[:, :, None]
    return out.reshape(B, Hq, K, Dv).to(q.dtype)


def fork_attention_tree_sdpa(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale, n: int):
    """The CPU fallback of `rgk.ops.fork_attention`: the math of `fork_attention` (cache
    positions [0, n) only, as in `fork_attention_prefix`) as one fused
    scaled_dot_product_attention call over [prefix ; the K own entries] with the tree mask
    (candidate j sees the valid prefix and slot j), GQA by enable_gqa, instead of the dozen
    small ops of the explicit softmax; it costs a copy of the n prefix positions next to
    the K new ones.  All in fp32 (half inputs are upcast, as in the explicit form); returns
    [B, Hq, K, D] in q's dtype."""
    B, Hq, K, D = q.shape
    L = k_cache.shape[2]
    if n < L:
        k_cache, v_cache = k_cache[:, :, :n], v_cache[:, :, :n]
    keys = torch.cat([k_cache.float(), k_new.float()], dim=2)
    vals = torch.cat([v_cache.float(), v_new.float()], dim=2)
    pos = torch.arange(n, device=q.device)
    pre = (pos >= cache_start[:, None]) & (pos < cache_end[:, None])                    # [B, n]
    # what lies outside a row's range (NaN, inf) must not leak through 0 * NaN: zero it in the copies
    out_of_range = ~pre[:, None, :, None]
    keys[:, :, :n].masked_fill_(out_of_range, 0.0)
    vals[:, :, :n].masked_fill_(out_of_range, 0.0)
    own = torch.eye(K, dtype=torch.bool, device=q.device)
    mask = torch.cat([pre[:, None, :].expand(B, K, n), own.expand(B, K, K)], dim=-1)    # [B, K, n + K]
    out = F.scaled_dot_product_attention(q.float(), keys, vals, attn_mask=mask[:, None],
                                         scale=1.0 / math.sqrt(D) if scale is None else scale,
                                         enable_gqa=Hq != k_cache.shape[1])
    return out.to(q.dtype)


def reward_head(hidden: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor | None = None, b2: torch.Tensor | None = None) -> torch.Tensor:
    """The reward MLP of rgk, r(hidden) for hidden [..., d] -> [...] fp32 (differentiable).

    Linear head: w1 [1, d], b1 [1], r = w1 . h + b1.  MLP head: w1 [m, d], b1 [m],
    w2 [1, m], b2 [1], r = w2 . relu(w1 h + b1) + b2.  All math in fp32.
    """
    z = hidden.float() @ w1.float().t() + b1.float()
    if w2 is None:
        return z[..., 0]
    return (torch.relu(z) @ w2.float().t() + b2.float())[..., 0]


argre_reward = reward_head  # ARGRE's token reward θ_r(h): the same MLP (w2/b2 given)


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
    """ARGS selection over K candidates: `reward_head` on hidden [B, K, d], then
    `select_from_rewards`.  logp [B, K], ids [B, K] int64, uniform [B] in [0, 1) when
    temperature > 0.  Returns (token [B] int64, index [B] int64, score [B, K] fp32,
    reward [B, K] fp32, the raw reward)."""
    r = reward_head(hidden, w1, b1, w2, b2)
    token, index, score = select_from_rewards(logp, ids, r, reward_weight=reward_weight,
                                              temperature=temperature, uniform=uniform)
    return token, index, score, r


def select_from_rewards(logp, ids, r, *, reward_weight: float, temperature: float = 0.0, uniform=None):
    """The choice half of `reward_select`, for rewards r [B, K] computed elsewhere (e.g. a
    reward callable on text), by the score/choice rule of `rgk.ops`'s docstring (w == 0
    ignores r; NaN scores -> -inf, +inf -> FLT_MAX; greedy lowest index; inverse-CDF draw).
    Returns (token [B] int64, index [B] int64, score [B, K] fp32)."""
    lp = logp.float()
    score = lp if reward_weight == 0 else lp + reward_weight * r.float()
    score = torch.where((score != score) | (lp == -math.inf), -math.inf, score.clamp(max=FLT_MAX))
    if temperature == 0:
        index = _first_argmax(score)
    else:
        if uniform is None:
            raise ValueError("uniform: a tensor [B] of U[0,1) draws is required when temperature > 0")
        index = _sample_index(tempered(score, temperature), uniform)
    token = ids.gather(1, index[:, None])[:, 0]
    return token, index, score


def tempered(score: torch.Tensor, temperature: float) -> torch.Tensor:
    """z = (score - row max) / tau over the entries > -inf (-inf elsewhere), tau =
    max(temperature, FLT_MIN): the best entry gets z = 0 exactly and every other z <= 0, so
    no temperature, however small (denormals included), overflows or ties the scores; NaN
    counts as -inf and +inf as FLT_MAX.  Softmax over z is softmax(score / temperature)."""
    tau = max(float(temperature), FLT_MIN)
    s = torch.where(score != score, -math.inf, score.float().clamp(max=FLT_MAX))
    m = s.max(dim=-1, keepdim=True).values
    z = (s - torch.where(m > -math.inf, m, 0.0)) / tau
    return torch.where(s > -math.inf, z, -math.inf)


def _first_argmax(score: torch.Tensor) -> torch.Tensor:
    """Lowest index of the row maximum (0 for an all -inf row: -inf == -inf)."""
    K = score.shape[-1]
    hit = score == score.max(dim=-1, keepdim=True).values
    idx = torch.arange(K, device=score.device).expand_as(score)
    return torch.where(hit, idx, K).min(dim=-1).values


def _sample_index(z: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from softmax(z) over the entries z > -inf (z <= FLT_MAX)."""
    live = z > -math.inf
    zmax = z.max(dim=-1, keepdim=True).values
    e = torch.where(live, torch.exp(z - torch.where(zmax > -math.inf, zmax, 0.0)), 0.0)
    total_e = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(total_e > 0, total_e, 1.0)
    cdf = torch.cumsum(p, dim=-1)
    total = cdf[:, -1:]
    index = (cdf <= uniform.float()[:, None] * total).sum(dim=-1)
    # u * total may round onto the last cdf value: cap at the last candidate with p > 0
    K = z.shape[-1]
    last_nz = torch.where(p > 0, torch.arange(K, device=z.device), 0).max(dim=-1).values
    index = torch.minimum(index, last_nz)
    return torch.where(total[:, 0] > 0, index, 0)


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
    """ARGRE edit of final hidden states h [B, d] (autograd reference: the test oracle).

    Steering: h' = h + (1/beta) (r_plus - θ(h)) 1[r_plus > θ(h)] direction
    then n_steps of h' <- h' + step_size ∇_h θ(h').  The MLP runs in fp32; the result is
    returned in h's dtype.  w1 [m, d], b1 [m], w2 [1, m], b2 [1], direction [d] (d_raw).
    """
    x = h.float()
    with torch.no_grad():
        r = reward_head(x, w1, b1, w2, b2)
        gap = r_plus - r
        x = x + ((gap * (gap > 0).float()) / beta)[:, None] * direction.float()[None, :]
    for _ in range(n_steps):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            r = reward_head(xg, w1, b1, w2, b2).sum()
            (g,) = torch.autograd.grad(r, xg)
        x = x.detach() + step_size * g
    return x.to(h.dtype)


def argre_refine_matmul(h, w1, b1, w2, b2, direction, r_plus: float, *, beta: float = 1.0, n_steps: int = 5,
                        step_size: float = 0.5) -> torch.Tensor:
    """`argre_refine` by its closed-form gradient, as batched matrix products (no autograd):
    ∇θ(x) = (w2 ⊙ 1[W1 x + b1 > 0]) W1, the derivative torch's relu backward uses.  Two
    GEMMs over W1 per step at full-device bandwidth, no host sync: the path `rgk.ops`
    takes for large heads on CUDA tensors without the CUDA extension (see there)."""
    x = h.float()
    w1f, b1f, w2f = w1.float(), b1.float(), w2.float()[0]
    theta = torch.relu(x @ w1f.t() + b1f) @ w2f + b2.float()
    gap = r_plus - theta
    x = x + (torch.where(gap > 0, gap, 0.0) / beta)[:, None] * direction.float()[None, :]
    for _ in range(n_steps):
        c = torch.where(x @ w1f.t() + b1f > 0, w2f, 0.0)
        x = x + step_size * (c @ w1f)
    return x.to(h.dtype)
