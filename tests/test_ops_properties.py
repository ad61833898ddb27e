"""Property tests of the four public fused ops against their references (hypothesis).

Every example draws a small problem (B 1-4, V 1-300, k 1-min(V, 16), D 4-32, L 0-40, ...),
a dtype, padding, ties (values from a small set), -inf, NaN and +inf, and with some
probability breaks one argument; then it runs on every backend that runs here ("default",
which is the reference on CPU; "triton", in the interpreter on CPU; "cuda" on a GPU with
the extension).  Each call either matches `rgk.ops.reference` within the tolerances
below, or (only when an argument was broken) raises ValueError/TypeError whose message
starts with that argument's name and ": ".  Valid calls also pass numbers in the other
accepted forms (numpy scalars, 0-d tensors).

Tolerances (the same inputs go to the reference, so only the arithmetic differs):
  topk_logprobs   ids exactly the reference's (the total order is exact in any dtype);
                  logp rtol 1e-6, atol 1e-5; -inf in the same slots.
  fork_attention  fp32 rtol/atol 1e-5; fp16/bf16 2e-2.
  reward_select   reward and score rtol/atol 1e-4 (NaN and -inf in the same slots); the
                  choice exact unless within 1e-4 of a tie: greedy, the chosen score within
                  1e-4 of the best; sampled, u within 1e-4 of the chosen candidate's CDF
                  interval (float64 CDF of the reference scores); never a -inf candidate
                  unless all are (then index 0); token = ids[index].
  argre_refine    fp32 rtol/atol 1e-4; fp16/bf16 2e-2.

bf16 runs on the default backend only for fork_attention (the Triton interpreter computes
bf16 tl.dot wrongly); topk_logprobs, reward_select (whose MLP head casts to fp32 before its
dot) and argre_refine take bf16 on Triton too.  Examples are derandomised (the same ones
every run, so CI time and results are stable) and sized to keep the whole file well under
three minutes on a two-core machine with the interpreter (about 40 s measured; roughly a
third of the examples break an argument; hypothesis favours small shapes, so each size
range's ends come up often; where -inf/NaN/+inf go is picked from the example's seed, so
that they meet every other choice):
  test_topk_logprobs_property    200 examples
  test_fork_attention_property   300 examples
  test_reward_select_property    400 examples
  test_argre_refine_property     300 examples
Run with --hypothesis-show-statistics to see the share of each dtype, head and refusal.
"""
import math
import os

import numpy as np
import pytest
import torch
from conftest import DEVICE, INTERPRETED
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rgk import ops
from rgk.ops import _backend, reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

FLT_MAX = 3.4028234663852886e38
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _backends():
    names = ["default"]
    if not INTERPRETED or os.environ.get("TRITON_INTERPRET") == "1":
        if _backend.triton_available():
            names.append("triton")
    if DEVICE.type == "cuda" and _backend.cuda_ext() is not None:
        names.append("cuda")
    return names


BACKENDS = _backends()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


class Backend:
    """RGK_BACKEND for the duration of one example (hypothesis and function-scoped
    fixtures do not mix)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.mp = pytest.MonkeyPatch()
        if self.name == "default":
            self.mp.delenv("RGK_BACKEND", raising=False)
        else:
            self.mp.setenv("RGK_BACKEND", self.name)
        return self

    def __exit__(self, *exc):
        self.mp.undo()


def raises_named(name, fn):
    event(f"refused: {name}")
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    assert str(info.value).startswith(name + ": "), f"expected an error naming {name!r}, got {info.value!r}"


def gen(seed):
    return torch.Generator().manual_seed(seed)


def sprinkle(x, g, p_ninf, p_nan, p_inf):
    """-inf, NaN and +inf at random places of a float32 tensor."""
    r = torch.rand(x.shape, generator=g)
    x = x.clone()
    x[r < p_ninf] = -math.inf
    x[(r >= p_ninf) & (r < p_ninf + p_nan)] = math.nan
    x[(r >= p_ninf + p_nan) & (r < p_ninf + p_nan + p_inf)] = math.inf
    return x


# (P(-inf), P(NaN), P(+inf)) per entry, picked by the example's seed rather than by hypothesis:
# its small-example bias would otherwise rarely combine specials with the other choices
SPECIALS_T = [(0, 0, 0), (0.3, 0, 0), (0.2, 0.1, 0.02), (0.9, 0.05, 0), (1, 0, 0), (0.1, 0.1, 0.1)]
SPECIALS_R = [(0, 0, 0), (0.2, 0, 0), (0.2, 0.1, 0.05), (0, 0.2, 0.1), (0.1, 0.1, 0.1), (1, 0, 0)]


def same_specials(a, b):
    """NaN and +-inf in the same places; returns the mask of the finite entries."""
    assert torch.equal(a.isnan(), b.isnan())
    for v in (math.inf, -math.inf):
        assert torch.equal(a == v, b == v)
    return torch.isfinite(b)


# ----------------------------------------------------------------------------- topk_logprobs

@settings(max_examples=200, **SETTINGS)
@given(B=st.integers(1, 4), V=st.integers(1, 300), kfrac=st.floats(0, 1), dtype=st.sampled_from(DTYPES),
       pattern=st.sampled_from(["normal", "ties", "constant", "offset"]),
       seed=st.integers(0, 2**31 - 1),
       bad=st.sampled_from([None] * 6 + ["k0", "kbig", "kbool", "kfloat", "logits_int", "logits_1d"]),
       kform=st.sampled_from(["int", "numpy", "tensor"]))
def test_topk_logprobs_property(B, V, kfrac, dtype, pattern, seed, bad, kform):
    g = gen(seed)
    specials = SPECIALS_T[int(torch.randint(0, len(SPECIALS_T), (1,), generator=g))]
    k = 1 + int(kfrac * (min(V, 16) - 1))
    if pattern == "normal":
        x = torch.randn(B, V, generator=g) * 3
    elif pattern == "ties":
        x = torch.tensor([-1.0, -0.0, 0.0, 0.5, 2.0])[torch.randint(0, 5, (B, V), generator=g)]
    elif pattern == "constant":
        x = torch.full((B, V), 0.25)
    else:
        x = torch.randn(B, V, generator=g) * 2 + (1e6 if dtype == torch.float32 else 1e3)
    logits = sprinkle(x, g, *specials).to(dtype)
    if bad == "logits_int":
        logits = logits.nan_to_num().long()
    elif bad == "logits_1d":
        logits = logits[0]
    kk = {"k0": 0, "kbig": V + 1, "kbool": True, "kfloat": float(k)}.get(bad, k)
    if bad is None:
        kk = {"int": k, "numpy": np.int64(k), "tensor": torch.tensor(k)}[kform]
        ref_logp, ref_ids = reference.topk_logprobs(logits, k)
    event(f"{str(dtype)[6:]}, {pattern}")
    for backend in BACKENDS:
        with Backend(backend):
            call = lambda: ops.topk_logprobs(logits.to(DEVICE), kk)  # noqa: E731
            if bad is not None:
                raises_named("logits" if bad.startswith("logits") else "k", call)
                continue
            logp, ids = call()
        assert logp.dtype == torch.float32 and ids.dtype == torch.int64
        assert torch.equal(ids.cpu(), ref_ids)
        fin = same_specials(logp.cpu(), ref_logp)
        torch.testing.assert_close(logp.cpu()[fin], ref_logp[fin], rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- fork_attention

@settings(max_examples=300, **SETTINGS)
@given(B=st.integers(1, 4), Hkv=st.integers(1, 2), group=st.integers(1, 3), K=st.integers(1, 4),
       D=st.integers(4, 32), L=st.integers(0, 40), dtype=st.sampled_from(DTYPES),
       bounds=st.sampled_from(["full", "padded", "empty", "random"]),
       idtype=st.sampled_from([torch.int32, torch.int64]),
       scale=st.sampled_from([None, 0.3, "numpy"]), seed=st.integers(0, 2**31 - 1),
       valid=st.sampled_from([None, None, "exact", "slack", "zero", "capacity", "numpy"]),
       bad=st.sampled_from([None] * 7 + ["start_gt_end", "end_gt_L", "start_neg", "float_bounds", "kc_dtype",
                                         "kn_shape", "scale_nan", "scale_bool", "valid_below_end", "valid_neg",
                                         "valid_gt_L"]))
def test_fork_attention_property(B, Hkv, group, K, D, L, dtype, bounds, idtype, scale, seed, valid, bad):
    g = gen(seed)
    Hq = Hkv * group

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    q = rnd(B, K, Hq, D).transpose(1, 2)  # strided, as the attention projections give it
    kc, vc = rnd(B, Hkv, L + 3, D)[:, :, 1:L + 1], rnd(B, Hkv, L + 3, D)[:, :, 1:L + 1]
    kn, vn = rnd(B, Hkv, K, D), rnd(B, Hkv, K, D)
    if bounds == "full":
        start, end = torch.zeros(B, dtype=torch.int64), torch.full((B,), L)
    elif bounds == "empty":
        start = end = torch.randint(0, L + 1, (B,), generator=g)
    else:
        a, b = torch.randint(0, L + 1, (B,), generator=g), torch.randint(0, L + 1, (B,), generator=g)
        start, end = torch.minimum(a, b), torch.maximum(a, b)
        if bounds == "padded":
            end = torch.full((B,), L)
    start, end = start.to(idtype), end.to(idtype)
    sc = np.float32(0.7) if scale == "numpy" else scale
    name = None
    if bad == "start_gt_end" and L > 0:
        start, end, name = start.clone(), end.clone(), "cache_start"
        start[-1], end[-1] = L, L - 1
    elif bad == "end_gt_L":
        end, name = end.clone(), "cache_end"
        end[0] = L + 1
    elif bad == "start_neg":
        start, name = start.clone(), "cache_start"
        start[0] = -1
    elif bad == "float_bounds":
        start, name = start.float(), "cache_start"
    elif bad == "kc_dtype":
        kc, name = kc.to(torch.float16 if dtype != torch.float16 else torch.float32), "k_cache"
    elif bad == "kn_shape":
        kn, name = kn[:, :, :0] if K > 1 else torch.cat([kn, kn], 2), "k_new"
    elif bad == "scale_nan":
        sc, name = math.nan, "scale"
    elif bad == "scale_bool":
        sc, name = True, "scale"
    # max_valid_len: a bound of every row's end (the exact one, with slack, 0 / L = none)
    top = int(end.max()) if B else 0
    mvl = {None: None, "exact": top, "slack": min(L, top + 2), "zero": 0, "capacity": L,
           "numpy": np.int64(min(L, top + 1))}[valid]
    if bad == "valid_below_end" and top >= 2 and name is None:
        mvl, name = top - 1, "max_valid_len"
    elif bad == "valid_neg":
        mvl, name = -1, "max_valid_len"
    elif bad == "valid_gt_L":
        mvl, name = L + 1, "max_valid_len"
    args = [t.to(DEVICE) for t in (q, kc, vc, kn, vn, start, end)]
    if name is None:
        want = reference.fork_attention(q, kc, vc, kn, vn, start, end, None if sc is None else float(sc))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    event(f"{str(dtype)[6:]}, {bounds}")
    for backend in BACKENDS:
        if backend == "triton" and dtype == torch.bfloat16 and INTERPRETED:
            continue
        with Backend(backend):
            call = lambda: ops.fork_attention(*args, scale=sc, max_valid_len=mvl)  # noqa: E731
            if name is not None:
                raises_named(name, call)
                continue
            out = call()
        assert out.shape == (B, Hq, K, D) and out.dtype == dtype
        torch.testing.assert_close(out.cpu().float(), want.float(), rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- reward_select

def check_choice(index, token, ids, ref_score, temperature, u, tol=1e-4):
    """The choice is the reference's up to near ties (see the module docstring)."""
    for b in range(ref_score.shape[0]):
        s = ref_score[b].double()
        j = int(index[b])
        assert int(token[b]) == int(ids[b, j])
        live = s > -math.inf
        if not bool(live.any()):
            assert j == 0
            continue
        assert bool(live[j]), f"row {b}: a -inf candidate {j} was chosen"
        if temperature == 0:
            assert float(s[j]) >= float(s[live].max()) - tol * (1 + abs(float(s[live].max())))
        else:
            z = (s / temperature).clamp(max=FLT_MAX)
            p = torch.where(live, torch.exp(z - z[live].max()), torch.zeros_like(z))
            cdf = torch.cumsum(p / p.sum(), 0)
            lo = float(cdf[j - 1]) if j > 0 else 0.0
            assert lo - tol <= float(u[b]) <= float(cdf[j]) + tol, (b, j, float(u[b]), cdf.tolist())


@settings(max_examples=400, **SETTINGS)
@given(B=st.integers(1, 4), K=st.integers(1, 12), d=st.integers(4, 32), m=st.sampled_from([0, 0, 0, 1, 5, 24, 40]),
       dtype=st.sampled_from(DTYPES), w=st.sampled_from([0.0, 0.0, 0.5, -1.3, 2.0]),
       temperature=st.sampled_from([0.0, 0.0, 0.3, 1.0]), ties=st.booleans(),
       form=st.sampled_from(["float", "numpy", "tensor"]), seed=st.integers(0, 2**31 - 1),
       bad=st.sampled_from([None] * 7 + ["K0", "ids_int32", "ids_float", "u_one", "u_none", "w_nan", "w_bool",
                                         "t_neg", "w1_shape"]))
def test_reward_select_property(B, K, d, m, dtype, w, temperature, ties, form, seed, bad):
    g = gen(seed)
    specials = SPECIALS_R[int(torch.randint(0, len(SPECIALS_R), (1,), generator=g))]
    hidden = torch.randn(B, K, d, generator=g)
    if ties:  # duplicated candidates: equal rewards
        hidden[:, K // 2] = hidden[:, 0]
    if m == 0:  # linear head: a NaN/inf hidden entry gives a NaN/+-inf reward on every backend
        r = torch.rand(B, K, generator=g)
        hidden[..., 0][r < 2 * specials[1]] = math.nan
        hidden[..., 1][(r >= 2 * specials[1]) & (r < 2 * specials[1] + 4 * specials[2])] = math.inf
        head = (torch.randn(1, d, generator=g) / math.sqrt(d), torch.randn(1, generator=g), None, None)
    else:
        head = (torch.randn(m, d, generator=g) / math.sqrt(d), torch.randn(m, generator=g),
                torch.randn(1, m, generator=g) / math.sqrt(m), torch.randn(1, generator=g))
    hidden = hidden.to(dtype)
    logp = torch.log_softmax(torch.randn(B, K, generator=g), -1)
    if ties:
        logp = logp.round(decimals=1)
    logp = sprinkle(logp, g, specials[0], specials[1], 0)
    ids = torch.randint(0, 1000, (B, K), generator=g)
    u = torch.rand(B, generator=g)
    rw, temp = w, temperature
    if bad is None and form != "float":
        rw, temp = ((np.float32(w), np.float64(temperature)) if form == "numpy"
                    else (torch.tensor(w), torch.tensor(temperature)))
    name, uu = None, u
    if bad == "K0":
        hidden, logp, ids, name = hidden[:, :0], logp[:, :0], ids[:, :0], "hidden"
    elif bad == "ids_int32":
        ids, name = ids.int(), "ids"
    elif bad == "ids_float":
        ids, name = ids.float(), "ids"
    elif bad == "u_one":
        temp, uu, name = 0.5, torch.ones(B), "uniform"
    elif bad == "u_none":
        temp, uu, name = 0.5, None, "uniform"
    elif bad == "w_nan":
        rw, name = math.nan, "reward_weight"
    elif bad == "w_bool":
        rw, name = False, "reward_weight"
    elif bad == "t_neg":
        temp, name = -0.5, "temperature"
    elif bad == "w1_shape":
        head, name = (head[0][:, 1:],) + head[1:], "w1"
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    if name is None:
        r_tok, r_idx, r_score, r_reward = reference.reward_select(hidden, logp, ids, *head, reward_weight=w,
                                                                  temperature=temperature, uniform=u)
    event(f"{'MLP' if m else 'linear'}, w={w}, T={temperature}")
    if name is None and m == 0 and not bool(torch.isfinite(hidden).all()):
        event("linear head with NaN/inf rewards" + (", w = 0" if w == 0 else "") + (", sampled" if temperature else ""))
    for backend in BACKENDS:
        with Backend(backend):
            call = lambda: ops.reward_select(dev(hidden), dev(logp), dev(ids), *(dev(t) for t in head),  # noqa: E731
                                             reward_weight=rw, temperature=temp, uniform=dev(uu))
            if name is not None:
                raises_named(name, call)
                continue
            token, index, score, reward = (t.cpu() for t in call())
        fin = same_specials(reward, r_reward)
        torch.testing.assert_close(reward[fin], r_reward[fin], rtol=1e-4, atol=1e-4)
        fin = same_specials(score, r_score)
        torch.testing.assert_close(score[fin], r_score[fin], rtol=1e-4, atol=1e-4)
        check_choice(index, token, ids, r_score, temperature, u)
        if w == 0:  # the reward is ignored exactly: plain greedy top-k
            assert torch.equal(score, torch.where(logp == logp, logp, -math.inf).clamp(max=FLT_MAX))
    if name is not None:
        return
    # the choice half alone, on the reference's rewards: exactly the reference
    got = ops.select_from_rewards(logp, ids, r_reward, reward_weight=w, temperature=temperature, uniform=u)
    assert torch.equal(got[1], r_idx) and torch.equal(got[0], r_tok) and torch.equal(got[2], r_score)


# ----------------------------------------------------------------------------- argre_refine

@settings(max_examples=300, **SETTINGS)
@given(B=st.integers(1, 3), d=st.integers(4, 32), m=st.integers(1, 24), n_steps=st.integers(0, 4),
       beta=st.sampled_from([0.5, 1.0, 2.5]), step_size=st.sampled_from([0.0, 0.2, 0.5]),
       dtype=st.sampled_from(DTYPES), above=st.booleans(), form=st.sampled_from(["plain", "numpy", "tensor"]),
       seed=st.integers(0, 2**31 - 1),
       bad=st.sampled_from([None] * 5 + ["n_neg", "n_bool", "beta0", "r_inf", "dir_shape", "w2_none", "step_nan"]))
def test_argre_refine_property(B, d, m, n_steps, beta, step_size, dtype, above, form, seed, bad):
    g = gen(seed)
    h = torch.randn(B, d, generator=g).to(dtype)
    w1, b1 = torch.randn(m, d, generator=g) / math.sqrt(d), torch.randn(m, generator=g) * 0.1
    w2, b2 = torch.randn(1, m, generator=g) / math.sqrt(m), torch.randn(1, generator=g)
    direction = torch.randn(d, generator=g) * 0.1
    theta = reference.reward_head(h.float(), w1, b1, w2, b2)
    r_plus = float(theta.max()) + 1.0 if above else float(theta.median())
    kw = dict(beta=beta, n_steps=n_steps, step_size=step_size)
    if bad is None and form != "plain":
        conv = np.float64 if form == "numpy" else torch.tensor
        kw = dict(beta=conv(beta), n_steps=np.int64(n_steps) if form == "numpy" else torch.tensor(n_steps),
                  step_size=conv(step_size))
    args = [h, w1, b1, w2, b2, direction, r_plus]
    name = None
    if bad == "n_neg":
        kw["n_steps"], name = -1, "n_steps"
    elif bad == "n_bool":
        kw["n_steps"], name = True, "n_steps"
    elif bad == "beta0":
        kw["beta"], name = 0.0, "beta"
    elif bad == "r_inf":
        args[6], name = math.inf, "r_plus"
    elif bad == "dir_shape":
        args[5], name = direction[1:], "direction"
    elif bad == "w2_none":
        args[3], args[4], name = None, None, ("w2" if m == 1 else "w1")  # m > 1 without w2: not a linear head
    elif bad == "step_nan":
        kw["step_size"], name = math.nan, "step_size"
    if name is None:
        want = reference.argre_refine(h, w1, b1, w2, b2, direction, r_plus, beta=beta, n_steps=n_steps,
                                      step_size=step_size)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    dev_args = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
    event(f"{str(dtype)[6:]}, n_steps={n_steps}")
    for backend in BACKENDS:
        with Backend(backend):
            call = lambda: ops.argre_refine(*dev_args, **kw)  # noqa: E731
            if name is not None:
                raises_named(name, call)
                continue
            out = call()
        assert out.shape == (B, d) and out.dtype == dtype
        torch.testing.assert_close(out.cpu().float(), want.float(), rtol=tol, atol=tol)
