"""Public fused ops.  Each validates its inputs, then runs the CUDA extension, the Triton
kernel or the PyTorch reference (see `rgk.ops._backend`).

- `topk_logprobs(logits, k)`: log-softmax + top-k in one pass.
- `fork_attention(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale)`:
  K candidates per row attend to a shared prefix (read once) plus their own KV entry.
- `reward_select(hidden, logp, ids, w1, b1, w2, b2, reward_weight=, temperature=, uniform=)`:
  reward head + ARGS score + greedy/sampled choice.
- `argre_refine(h, w1, b1, w2, b2, direction, r_plus, beta=, n_steps=, step_size=)`:
  ARGRE steering + gradient refinement of final hidden states.
"""
from __future__ import annotations

import math

import torch

from . import reference
from ._backend import choose

__all__ = ["topk_logprobs", "fork_attention", "reward_select", "argre_refine", "reference"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _check_float(name: str, t: torch.Tensor, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected float32, bfloat16 or float16, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")


def _check_shape(name: str, t: torch.Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_same_device(**tensors) -> None:
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise ValueError("tensors must share one device, got " + ", ".join(f"{n} on {d}" for n, d in devs.items()))


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of log_softmax(logits) per row: (logp [B, k] fp32 descending, ids [B, k] int64).

    logits [B, V] fp32/bf16/fp16, may hold -inf (masked tokens); 1 <= k <= min(V, 64)
    on the fused paths (the reference accepts any k <= V).
    """
    _check_float("logits", logits, 2)
    V = logits.shape[1]
    if not isinstance(k, int) or k < 1 or k > V:
        raise ValueError(f"k: expected an int in [1, vocab size {V}], got {k!r}")
    backend = choose(logits.device.type)
    if backend != "torch" and k > 64:
        backend = "torch"
    if backend == "cuda":
        return torch.ops.rgk.topk_logprobs(logits, k)
    if backend == "triton":
        from rgk.kernels.topk_logprobs import topk_logprobs_triton
        return topk_logprobs_triton(logits, k)
    return reference.topk_logprobs(logits, k)


def fork_attention(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale=None):
    """Candidates-vs-shared-prefix attention; see `reference.fork_attention` for the math.

    q [B, Hq, K, D], k_cache/v_cache [B, Hkv, L, D], k_new/v_new [B, Hkv, K, D],
    cache_start/cache_end int [B] (row b's prefix is [start, end)).  Strided views are fine
    (the last dim must be contiguous).  Returns [B, Hq, K, D] in q's dtype.
    """
    _check_float("q", q, 4)
    for n, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k_new", k_new), ("v_new", v_new)):
        _check_float(n, t, 4)
        if t.dtype != q.dtype:
            raise TypeError(f"{n}: expected dtype {q.dtype} (same as q), got {t.dtype}")
    B, Hq, K, D = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    if Hq % Hkv:
        raise ValueError(f"q: number of query heads {Hq} must be a multiple of the kv heads {Hkv}")
    _check_shape("k_cache", k_cache, (B, Hkv, L, D))
    _check_shape("v_cache", v_cache, (B, Hkv, L, D))
    _check_shape("k_new", k_new, (B, Hkv, K, D))
    _check_shape("v_new", v_new, (B, Hkv, K, D))
    for n, t in (("cache_start", cache_start), ("cache_end", cache_end)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.shape != (B,):
            raise ValueError(f"{n}: expected an int32/int64 tensor of shape ({B},)")
    _check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, k_new=k_new, v_new=v_new,
                       cache_start=cache_start, cache_end=cache_end)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    backend = choose(q.device.type)
    if backend == "cuda":
        return torch.ops.rgk.fork_attention(q, k_cache, v_cache, k_new, v_new,
                                             cache_start.int(), cache_end.int(), scale)
    if backend == "triton":
        from rgk.kernels.fork_attention import fork_attention_triton
        return fork_attention_triton(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale)
    return reference.fork_attention(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale)


def _fp32(*ts):
    """Head weights go to the kernels as contiguous fp32 (no-op when they already are)."""
    return [None if t is None else t.detach().float().contiguous() for t in ts]


def _check_head(d: int, w1, b1, w2, b2) -> None:
    _check_float("w1", w1, 2)
    if w1.shape[1] != d:
        raise ValueError(f"w1: expected [m, {d}] (hidden size {d}), got {tuple(w1.shape)}")
    m = w1.shape[0]
    _check_shape("b1", b1, (m,))
    if w2 is None:
        if m != 1:
            raise ValueError(f"w1: a linear head has shape [1, {d}], got {tuple(w1.shape)} (pass w2/b2 for an MLP)")
        if b2 is not None:
            raise ValueError("b2: given without w2")
    else:
        _check_shape("w2", w2, (1, m))
        if b2 is None:
            raise ValueError("b2: required with w2")
        _check_shape("b2", b2, (1,))


def reward_select(hidden, logp, ids, w1, b1, w2=None, b2=None, *, reward_weight, temperature=0.0, uniform=None):
    """ARGS choice among K candidates; see `reference.reward_select` for the math.

    Returns (token [B] int64, index [B] int64, score [B, K] fp32, reward [B, K] fp32).
    """
    _check_float("hidden", hidden, 3)
    B, K, d = hidden.shape
    _check_shape("logp", logp, (B, K))
    _check_shape("ids", ids, (B, K))
    _check_head(d, w1, b1, w2, b2)
    if not math.isfinite(float(reward_weight)):
        raise ValueError(f"reward_weight: expected a finite number, got {reward_weight!r}")
    if not math.isfinite(float(temperature)) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    if temperature > 0:
        if uniform is None or uniform.shape != (B,):
            raise ValueError(f"uniform: expected a tensor of shape ({B},) of U[0,1) draws when temperature > 0")
    _check_same_device(hidden=hidden, logp=logp, ids=ids, w1=w1, b1=b1, w2=w2, b2=b2, uniform=uniform)
    w1, b1, w2, b2 = _fp32(w1, b1, w2, b2)
    backend = choose(hidden.device.type)
    if backend == "cuda":
        return torch.ops.rgk.reward_select(hidden, logp, ids, w1, b1, w2, b2, float(reward_weight),
                                           float(temperature), uniform)
    if backend == "triton":
        from rgk.kernels.reward_select import reward_select_triton
        return reward_select_triton(hidden, logp, ids, w1, b1, w2, b2, reward_weight=float(reward_weight),
                                    temperature=float(temperature), uniform=uniform)
    return reference.reward_select(hidden, logp, ids, w1, b1, w2, b2, reward_weight=float(reward_weight),
                                   temperature=float(temperature), uniform=uniform)


def argre_refine(h, w1, b1, w2, b2, direction, r_plus, *, beta=1.0, n_steps=5, step_size=0.5):
    """ARGRE steering + `n_steps` gradient steps on h [B, d]; see `reference.argre_refine`."""
    _check_float("h", h, 2)
    d = h.shape[1]
    _check_head(d, w1, b1, w2, b2)
    if w2 is None:
        raise ValueError("w2: ARGRE's reward is an MLP, w2 [1, m] is required")
    _check_shape("direction", direction, (d,))
    for n, v in (("r_plus", r_plus), ("beta", beta), ("step_size", step_size)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{n}: expected a finite number, got {v!r}")
    if beta <= 0:
        raise ValueError(f"beta: expected > 0, got {beta!r}")
    if not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps: expected an int >= 0, got {n_steps!r}")
    _check_same_device(h=h, w1=w1, b1=b1, w2=w2, b2=b2, direction=direction)
    w1, b1, w2, b2, direction = _fp32(w1, b1, w2, b2, direction)
    backend = choose(h.device.type)
    kw = dict(beta=float(beta), n_steps=n_steps, step_size=float(step_size))
    if backend == "cuda":
        return torch.ops.rgk.argre_refine(h, w1, b1, w2, b2, direction, float(r_plus), *kw.values())
    if backend == "triton":
        from rgk.kernels.argre_refine import argre_refine_triton
        return argre_refine_triton(h, w1, b1, w2, b2, direction, float(r_plus), **kw)
    return reference.argre_refine(h, w1, b1, w2, b2, direction, float(r_plus), **kw)
