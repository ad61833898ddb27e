"""Public fused ops.  Each validates its inputs, then runs the CUDA extension, the Triton
kernel or the PyTorch reference (`rgk.ops._backend`); `rgk.ops.reference` is the oracle.

- `topk_logprobs(logits, k)`: log-softmax + top-k in one pass.
- `fork_attention(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale, max_valid_len=)`:
  K candidates per row attend to a shared prefix (read once) plus their own KV entry.
- `reward_select(hidden, logp, ids, w1, b1, w2, b2, reward_weight=, temperature=, uniform=)`:
  reward head + ARGS score + greedy/sampled choice.
- `select_from_rewards(logp, ids, r, reward_weight=, temperature=, uniform=)`: the choice
  alone, for rewards computed elsewhere (a reward model, a text reward).
- `reward_head(hidden, w1, b1, w2=None, b2=None)`: the reward MLP, r(hidden) in fp32.
- `argre_refine(h, w1, b1, w2, b2, direction, r_plus, beta=, n_steps=, step_size=)`:
  ARGRE steering + gradient refinement of final hidden states.

Ties, NaN and inf: the one rule of every backend (reference, Triton and CUDA alike)
------------------------------------------------------------------------------------
FLT_MAX = 3.4028234663852886e38, the largest finite fp32.

topk_logprobs(logits [B, V], k) -> (logp [B, k] fp32, ids [B, k] int64):
  1. Each logit is read as fp32 and sanitised: NaN -> -inf, +inf -> FLT_MAX (a +inf token
     takes all the probability, the softmax limit); -inf stays (a masked token).
  2. m = max_v x_v, s = sum_v exp(x_v - m), logp_v = (x_v - m) - log(s) (never
     x - logsumexp(x), which loses precision at offsets like 1e6); logp = -inf where
     x_v = -inf, and on an all -inf row.
  3. Candidates follow the total order (value descending, then index ascending): ties go
     to the lower index, so k = 1 gives torch.argmax's token (HF greedy decoding).
     -0.0 and +0.0 are equal values.
  4. Slots past the row's finite entries hold logp = -inf and continue the same order:
     the lowest-index -inf (incl. NaN) entries, ascending.

reward_select / select_from_rewards (score, choice), in fp32:
  1. score_j = logp_j + w * r_j; when w == 0 exactly, score_j = logp_j (the reward is
     ignored, so w = 0 is plain top-k greedy even for NaN rewards).
  2. score = -inf where logp_j = -inf or the score is NaN; +inf is clamped to FLT_MAX.
     The returned reward is the raw r (NaN/inf kept).
  3. temperature == 0: the lowest j with the maximal score; all -inf: index 0.
  4. temperature > 0: tau = max(temperature, FLT_MIN) (the smallest normal fp32, so no
     backend meets a denormal); z = (score - max score) / tau over the score > -inf
     (`reference.tempered`: the best z is 0, so tiny temperatures neither overflow nor tie);
     p = softmax(z) over the z > -inf (exp(z - max z), normalised); cdf = cumsum(p); index = #{j : cdf_j <= u * cdf_last},
     capped at the last j with p_j > 0; all -inf: index 0.  u = uniform[b] in [0, 1).
  5. K >= 1 candidates: K = 0 is a ValueError naming the first argument that shows it,
     never a launch.

Arguments (every public op)
---------------------------
Errors are ValueError/TypeError whose message starts with the argument's name and ": ".
bool is refused where an int is expected; numpy scalars and 0-d tensors are numbers.
reward_select/select_from_rewards ids must be int64; fork_attention cache_start/cache_end
int32 or int64.  `check=True` (default) also checks values that live on the device, which
costs a host sync: 0 <= cache_start[b] <= cache_end[b] <= L (and cache_end[b] <=
max_valid_len) for fork_attention, uniform in [0, 1) for the choice ops.  Those value checks
are skipped during CUDA-graph capture.  `check=False` is for hot loops that already know
their inputs are valid (rgk's ForkCache calls fork_attention for every layer of every step):
it skips the tensor checks too and keeps only what is free (Python scalars, K >= 1, and
fork_attention's max_valid_len promise on CPU tensors, see there).

Backends and routing
--------------------
CUDA extension -> Triton -> reference (`rgk.ops._backend.route`); a shape a fused kernel
does not take falls back along that chain instead of failing (k > 64, K > 64, D > 256,
or what `rgk.ops._limits.cuda_supports` refuses).  fork_attention's reference backend runs
`reference.fork_attention_tree_sdpa` (one fused scaled_dot_product_attention call over
[prefix ; own entries] with the tree mask, 1.1-1.5x faster than the explicit softmax on CPU
at decode sizes) and, under torch.compile, `reference.fork_attention_prefix` (the explicit
softmax, which inductor fuses into fewer kernels, ~1.3x faster than the SDPA call there);
both are checked against `reference.fork_attention`.  argre_refine's Triton kernel keeps one
program per row and sweeps W1 2 n_steps + 1 times per row from L2, where the CUDA kernel
splits W1 over a persistent grid.  So on CUDA tensors without the extension, a large head,
(2 n_steps + 1) * m * d > ARGRE_TRITON_MAX_READS (2^23 weights, ~0.2 ms of one SM's L2
bandwidth by the kernel's own estimate, about what launching the ~4 n_steps kernels of
the alternative costs), runs `reference.argre_refine_matmul` instead: the closed-form
gradient as batched GEMMs at full-device bandwidth.  Smaller heads keep the single launch.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import reference
from ._backend import route

__all__ = ["topk_logprobs", "fork_attention", "reward_select", "select_from_rewards", "reward_head",
           "argre_refine", "reference"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_INT32_MAX = 2**31 - 1
ARGRE_TRITON_MAX_READS = 2**23


# ----------------------------------------------------------------------------- validation

def _as_int(name: str, v, lo: int, hi: int | None = None, what: str = "") -> int:
    """v as a Python int in [lo, hi]: ints, numpy integers and 0-d integer tensors; never bool."""
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or v.dtype == torch.bool or v.dtype.is_floating_point or v.dtype.is_complex:
            raise TypeError(f"{name}: expected an int, got a {v.dtype} tensor of shape {tuple(v.shape)}")
        v = int(v.item())
    elif isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: expected an int {rng}{what}, got {v}")
    return v


def _as_float(name: str, v, *, lo: float | None = None, lo_open: bool = False) -> float:
    """v as a finite Python float (>= lo, or > lo when lo_open): reals, numpy scalars and 0-d
    real tensors; never bool."""
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or v.dtype == torch.bool or v.dtype.is_complex:
            raise TypeError(f"{name}: expected a number, got a {v.dtype} tensor of shape {tuple(v.shape)}")
        v = v.item()
    elif isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name}: expected a number {'>' if lo_open else '>='} {lo}, got {v!r}")
    return v


def _check_float(name: str, t, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected float32, bfloat16 or float16, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")


def _check_shape(name: str, t: torch.Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_int_tensor(name: str, t, shape: tuple, dtypes: tuple) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        want = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected a {want} tensor, got {t.dtype}")
    _check_shape(name, t, shape)


def _check_same_device(**tensors) -> None:
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        first = next(iter(devs))
        odd = next(n for n, d in devs.items() if d != devs[first])
        raise ValueError(f"{odd}: expected a tensor on {devs[first]} (where {first} is), got one on {devs[odd]}")


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _candidates(name: str, t: torch.Tensor) -> int:
    K = t.shape[1]
    if K < 1:
        raise ValueError(f"{name}: expected at least one candidate per row (K >= 1), got shape {tuple(t.shape)}")
    return K


def _check_head(d: int, w1, b1, w2, b2) -> None:
    _check_float("w1", w1, 2)
    if w1.shape[1] != d:
        raise ValueError(f"w1: expected [m, {d}] (hidden size {d}), got {tuple(w1.shape)}")
    m = w1.shape[0]
    if m < 1:
        raise ValueError(f"w1: expected at least one row, got shape {tuple(w1.shape)}")
    _check_float("b1", b1, 1)
    _check_shape("b1", b1, (m,))
    if w2 is None:
        if m != 1:
            raise ValueError(f"w1: a linear head has shape [1, {d}], got {tuple(w1.shape)} (pass w2/b2 for an MLP)")
        if b2 is not None:
            raise ValueError("b2: given without w2")
    else:
        _check_float("w2", w2, 2)
        _check_shape("w2", w2, (1, m))
        if b2 is None:
            raise ValueError("b2: required with w2")
        _check_float("b2", b2, 1)
        _check_shape("b2", b2, (1,))


def tempered(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """(x - row max) / max(temperature, FLT_MIN) over the entries > -inf: softmax of it is
    softmax(x / temperature) for every temperature > 0, denormals included (rule 4)."""
    return reference.tempered(x, temperature)


def _fp32(*ts):
    """Head weights go to the kernels as contiguous fp32 (no-op when they already are)."""
    return [None if t is None else t.detach().float().contiguous() for t in ts]


def _choice_scalars(B: int, reward_weight, temperature, uniform, check: bool, like: torch.Tensor):
    """(reward_weight, temperature, uniform as fp32 [B] or None) for the choice ops."""
    reward_weight = _as_float("reward_weight", reward_weight)
    temperature = _as_float("temperature", temperature, lo=0.0)
    if temperature == 0:
        return reward_weight, temperature, None
    temperature = max(temperature, reference.FLT_MIN)
    if uniform is None:
        raise ValueError(f"uniform: expected a tensor of shape ({B},) of U[0,1) draws when temperature > 0")
    if check:
        if not isinstance(uniform, torch.Tensor):
            raise TypeError(f"uniform: expected a torch.Tensor, got {type(uniform).__name__}")
        if not uniform.dtype.is_floating_point:
            raise TypeError(f"uniform: expected a float tensor, got {uniform.dtype}")
        _check_shape("uniform", uniform, (B,))
        _check_same_device(logp=like, uniform=uniform)
    u = uniform.float().contiguous()
    if check and not _capturing(u):
        ok = (u >= 0) & (u < 1)  # in fp32: a float64 draw just below 1 may round up to 1
        if not bool(ok.all()):
            b = int((~ok).nonzero()[0, 0])
            raise ValueError(f"uniform: expected values in [0, 1), got uniform[{b}] = {float(u[b])!r}")
    return reward_weight, temperature, u


# ----------------------------------------------------------------------------- ops

def topk_logprobs(logits: torch.Tensor, k: int, *, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best entries of log_softmax(logits) per row: (logp [B, k] fp32, ids [B, k] int64),
    in the total order of the module docstring (descending, ties to the lower index).

    logits [B, V] fp32/bf16/fp16 (may hold -inf, NaN, inf); 1 <= k <= V (k > 64 runs the
    reference).  check=False skips the tensor checks.
    """
    if check:
        _check_float("logits", logits, 2)
    B, V = logits.shape
    k = _as_int("k", k, 1, V, " (the vocabulary size)" if V else " (logits has no columns)")
    backend = route("topk_logprobs", logits.device, B=B, V=V, k=k, dtype=logits.dtype)
    if backend == "cuda":
        return torch.ops.rgk.topk_logprobs(logits, k)
    if backend == "triton":
        from rgk.kernels.topk_logprobs import topk_logprobs_triton
        return topk_logprobs_triton(logits, k)
    return reference.topk_logprobs(logits, k)


def _check_fork(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end) -> None:
    _check_float("q", q, 4)
    for n, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k_new", k_new), ("v_new", v_new)):
        _check_float(n, t, 4)
        if t.dtype != q.dtype:
            raise TypeError(f"{n}: expected dtype {q.dtype} (same as q), got {t.dtype}")
    B, Hq, K, D = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    if D < 1:
        raise ValueError(f"q: expected a head size >= 1, got shape {tuple(q.shape)}")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"q: number of query heads {Hq} must be a multiple of the kv heads {Hkv}")
    _check_shape("k_cache", k_cache, (B, Hkv, L, D))
    _check_shape("v_cache", v_cache, (B, Hkv, L, D))
    _check_shape("k_new", k_new, (B, Hkv, K, D))
    _check_shape("v_new", v_new, (B, Hkv, K, D))
    for n, t in (("cache_start", cache_start), ("cache_end", cache_end)):
        _check_int_tensor(n, t, (B,), (torch.int32, torch.int64))
    _check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, k_new=k_new, v_new=v_new,
                       cache_start=cache_start, cache_end=cache_end)


def _check_bounds(cache_start: torch.Tensor, cache_end: torch.Tensor, L: int, n: int) -> None:
    """0 <= cache_start[b] <= cache_end[b] <= L and cache_end[b] <= n (the max_valid_len
    bound, n = L without one), read on the host (one sync)."""
    s, e = torch.stack((cache_start.long(), cache_end.long())).cpu()
    bad_s, bad_e = (s < 0) | (s > e), e > L
    if bool(bad_s.any() | bad_e.any()):
        b = int((bad_s | bad_e).nonzero()[0, 0])
        sb, eb = int(s[b]), int(e[b])
        rule = f"0 <= cache_start[b] <= cache_end[b] <= L = {L}"
        if sb < 0:
            raise ValueError(f"cache_start: expected {rule}, got cache_start[{b}] = {sb}")
        if sb > eb:
            raise ValueError(f"cache_start: expected {rule}, got cache_start[{b}] = {sb} > cache_end[{b}] = {eb}")
        raise ValueError(f"cache_end: expected {rule}, got cache_end[{b}] = {eb}")
    if n < L and bool((e > n).any()):
        b = int((e > n).nonzero()[0, 0])
        raise ValueError(f"max_valid_len: expected a bound >= every cache_end[b], got max_valid_len = {n} < "
                         f"cache_end[{b}] = {int(e[b])}")


def fork_attention(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale=None, *,
                   max_valid_len: int | None = None, check: bool = True):
    """Candidates-vs-shared-prefix attention; see `reference.fork_attention` for the math.

    q [B, Hq, K, D], k_cache/v_cache [B, Hkv, L, D], k_new/v_new [B, Hkv, K, D],
    cache_start/cache_end int32/int64 [B] (row b's prefix is [start, end)).  Strided views
    are fine (the last dim must be contiguous).  Returns [B, Hq, K, D] in q's dtype.

    max_valid_len: a host-side upper bound of every row's end, cache_end[b] <= max_valid_len
    (an int in [0, L]; None or 0 means the capacity L).  It is the caller's promise, given
    without reading the device (a decode loop knows prompt length + steps as Python
    numbers), and it only saves work: the reference reads the first max_valid_len cache
    positions instead of L, the Triton and CUDA kernels size their split of the prefix from
    it.  A bound below some row's end is never silently wrong: it is checked wherever that
    costs no device sync — check=True (the host read below), and on CPU tensors outside
    torch.compile tracing even with check=False (ValueError naming max_valid_len) — and
    where it is not checked (device tensors with check=False, CUDA-graph capture, compile
    tracing) it is used only to size work, never to cut keys: every backend still reads each
    row's whole [start, end).  Values outside [0, L] are refused.  Inside a CUDA graph or a
    compiled graph pass None or L: a Python int that changes each step would be baked in.

    check=False is the per-layer fast path: no validation of the tensors (the caller vouches
    for shapes, dtypes, devices and 0 <= start <= end <= L).
    """
    if check:
        _check_fork(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end)
    B, Hq, K, D = q.shape
    L = k_cache.shape[2]
    n = reference.valid_len("max_valid_len", max_valid_len, L)
    verified = n == L
    if check:
        if not _capturing(cache_start):
            _check_bounds(cache_start, cache_end, L, n)
            verified = True
        scale = 1.0 / math.sqrt(D) if scale is None else _as_float("scale", scale)
    else:
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not verified:
        verified = reference.verify_valid_len(cache_end, n)
    backend = route("fork_attention", q.device, B=B, Hq=Hq, Hkv=k_cache.shape[1], K=K, D=D, L=L,
                    dtype=q.dtype)
    if backend == "cuda":  # the kernels take the bound as a work-sizing hint only
        return torch.ops.rgk.fork_attention(q, k_cache, v_cache, k_new, v_new,
                                             cache_start.int(), cache_end.int(), scale, n)
    if backend == "triton":
        from rgk.kernels.fork_attention import fork_attention_triton
        return fork_attention_triton(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale,
                                     max_valid_len=n)
    # the reference backend: one fused SDPA call eagerly; under torch.compile the explicit
    # softmax, which inductor fuses better (module docstring)
    ref = reference.fork_attention_prefix if torch.compiler.is_compiling() else reference.fork_attention_tree_sdpa
    return ref(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale, n if verified else L)


def reward_head(hidden: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor | None = None, b2: torch.Tensor | None = None) -> torch.Tensor:
    """The reward MLP r(hidden) for hidden [..., d] -> [...] fp32 (`reference.reward_head`):
    linear w1 [1, d], b1 [1], or MLP w1 [m, d], b1 [m], w2 [1, m], b2 [1].  Validated; runs
    as torch matrix products (one GEMM per layer already reads each weight once)."""
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden: expected a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dtype not in _FLOATS:
        raise TypeError(f"hidden: expected float32, bfloat16 or float16, got {hidden.dtype}")
    if hidden.dim() < 1 or hidden.shape[-1] < 1:
        raise ValueError(f"hidden: expected [..., d] with d >= 1, got shape {tuple(hidden.shape)}")
    _check_head(hidden.shape[-1], w1, b1, w2, b2)
    _check_same_device(hidden=hidden, w1=w1, b1=b1, w2=w2, b2=b2)
    return reference.reward_head(hidden, w1, b1, w2, b2)


def reward_select(hidden, logp, ids, w1, b1, w2=None, b2=None, *, reward_weight, temperature=0.0, uniform=None,
                  check: bool = True):
    """ARGS choice among K candidates (rule: module docstring): reward head on hidden
    [B, K, d], score = logp [B, K] + reward_weight * r, greedy or sampled with uniform [B].
    ids [B, K] int64.  Returns (token [B] int64, index [B] int64, score [B, K] fp32,
    reward [B, K] fp32).  check=False skips the tensor checks and the uniform range check.
    """
    if check:
        _check_float("hidden", hidden, 3)
    B, K, d = hidden.shape
    _candidates("hidden", hidden)
    if check:
        if d < 1:
            raise ValueError(f"hidden: expected a hidden size >= 1, got shape {tuple(hidden.shape)}")
        _check_float("logp", logp, 2)
        _check_shape("logp", logp, (B, K))
        _check_int_tensor("ids", ids, (B, K), (torch.int64,))
        _check_head(d, w1, b1, w2, b2)
        _check_same_device(hidden=hidden, logp=logp, ids=ids, w1=w1, b1=b1, w2=w2, b2=b2)
    reward_weight, temperature, u = _choice_scalars(B, reward_weight, temperature, uniform, check, logp)
    w1, b1, w2, b2 = _fp32(w1, b1, w2, b2)
    logp = logp.float()
    backend = route("reward_select", hidden.device, B=B, K=K, d=d, m=w1.shape[0], mlp=w2 is not None,
                    hidden_dtype=hidden.dtype)
    if backend == "cuda":
        return torch.ops.rgk.reward_select(hidden, logp, ids, w1, b1, w2, b2, reward_weight, temperature, u)
    if backend == "triton":
        from rgk.kernels.reward_select import reward_select_triton
        return reward_select_triton(hidden, logp, ids, w1, b1, w2, b2, reward_weight=reward_weight,
                                    temperature=temperature, uniform=u)
    return reference.reward_select(hidden, logp, ids, w1, b1, w2, b2, reward_weight=reward_weight,
                                   temperature=temperature, uniform=u)


def select_from_rewards(logp, ids, r, *, reward_weight, temperature=0.0, uniform=None, check: bool = True):
    """The choice half of `reward_select` for rewards r [B, K] computed elsewhere (rule:
    module docstring).  logp [B, K] float, ids [B, K] int64, uniform [B] when temperature
    > 0.  Returns (token [B] int64, index [B] int64, score [B, K] fp32); runs the reference
    (a handful of elementwise ops over [B, K])."""
    if check:
        _check_float("logp", logp, 2)
    B, K = logp.shape
    _candidates("logp", logp)
    if check:
        _check_int_tensor("ids", ids, (B, K), (torch.int64,))
        _check_float("r", r, 2)
        _check_shape("r", r, (B, K))
        _check_same_device(logp=logp, ids=ids, r=r)
    reward_weight, temperature, u = _choice_scalars(B, reward_weight, temperature, uniform, check, logp)
    return reference.select_from_rewards(logp, ids, r, reward_weight=reward_weight, temperature=temperature,
                                         uniform=u)


def _argre_wants_matmul(device_type: str, n_steps: int, m: int, d: int) -> bool:
    """The routing rule of the module docstring for argre_refine's Triton backend."""
    return device_type == "cuda" and (2 * n_steps + 1) * m * d > ARGRE_TRITON_MAX_READS


def argre_refine(h, w1, b1, w2, b2, direction, r_plus, *, beta=1.0, n_steps=5, step_size=0.5, check: bool = True):
    """ARGRE steering + `n_steps` gradient steps on h [B, d]; see `reference.argre_refine`.
    w1 [m, d], b1 [m], w2 [1, m], b2 [1], direction [d].  Returns [B, d] in h's dtype.
    Large heads without the CUDA extension run `reference.argre_refine_matmul` (module
    docstring).  check=False skips the tensor checks."""
    if check:
        _check_float("h", h, 2)
    B, d = h.shape
    if check:
        if d < 1:
            raise ValueError(f"h: expected a hidden size >= 1, got shape {tuple(h.shape)}")
        _check_head(d, w1, b1, w2, b2)
        if w2 is None:
            raise ValueError("w2: ARGRE's reward is an MLP, w2 [1, m] is required")
        _check_float("direction", direction, 1)
        _check_shape("direction", direction, (d,))
        _check_same_device(h=h, w1=w1, b1=b1, w2=w2, b2=b2, direction=direction)
    r_plus = _as_float("r_plus", r_plus)
    beta = _as_float("beta", beta, lo=0.0, lo_open=True)
    n_steps = _as_int("n_steps", n_steps, 0, _INT32_MAX)
    step_size = _as_float("step_size", step_size)
    w1, b1, w2, b2, direction = _fp32(w1, b1, w2, b2, direction)
    m = w1.shape[0]
    kw = dict(beta=beta, n_steps=n_steps, step_size=step_size)
    backend = route("argre_refine", h.device, B=B, d=d, m=m, h_dtype=h.dtype)
    if backend == "cuda":
        return torch.ops.rgk.argre_refine(h, w1, b1, w2, b2, direction, r_plus, beta, n_steps, step_size)
    if backend == "triton":
        if _argre_wants_matmul(h.device.type, n_steps, m, d):
            return reference.argre_refine_matmul(h, w1, b1, w2, b2, direction, r_plus, **kw)
        from rgk.kernels.argre_refine import argre_refine_triton
        return argre_refine_triton(h, w1, b1, w2, b2, direction, r_plus, **kw)
    return reference.argre_refine(h, w1, b1, w2, b2, direction, r_plus, **kw)
