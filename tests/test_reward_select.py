"""reward_select: public op (default backend), Triton kernel (interpreter on CPU, GPU when
present) and CUDA extension (GPU only) against the reference; the reference against a
plain loop; sampling checked against softmax(score / τ) statistically; the NaN/inf/w == 0
rule of `rgk.ops` on every backend; ops.select_from_rewards and ops.reward_head; the
argument rules (K >= 1, int64 ids, uniform in [0, 1), numbers)."""
import math

import numpy as np
import pytest
import torch
from conftest import DEVICE, INTERPRETED, requires_cuda, use_backend

from rgk import ops
from rgk.ops import reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def make_head(d, m, dtype, g):
    """Linear head (m == 0): (w1 [1, d], b1 [1], None, None); else an MLP with m hidden units."""
    if m == 0:
        w1 = torch.randn(1, d, generator=g) / math.sqrt(d)
        return w1.to(dtype), torch.randn(1, generator=g).to(dtype), None, None
    w1 = torch.randn(m, d, generator=g) / math.sqrt(d)
    b1 = torch.randn(m, generator=g)
    w2 = torch.randn(1, m, generator=g) / math.sqrt(m)
    return w1.to(dtype), b1.to(dtype), w2.to(dtype), torch.randn(1, generator=g).to(dtype)


def to(t, device):
    return None if t is None else t.to(device)


def make_inputs(B, K, d, m, hdtype, wdtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, K, d, generator=g).to(hdtype)
    logp = torch.log_softmax(torch.randn(B, K, generator=g) * 2, dim=-1)
    if K > 1:
        logp[torch.rand(B, K, generator=g) < 0.2] = -math.inf  # tokens masked upstream
        logp[0, 0] = -math.inf
    logp[-1] = -math.inf  # a row with no candidate left: index 0
    if B > 2 and K > 3:  # an exact tie: candidate 3 duplicates candidate 1
        hidden[1, 3] = hidden[1, 1]
        logp[1, 3] = logp[1, 1] = 0.0
    ids = torch.randint(0, 50000, (B, K), generator=g)
    head = make_head(d, m, wdtype, g)
    uniform = torch.rand(B, generator=g)
    return (to(hidden, device), to(logp, device), to(ids, device), tuple(to(t, device) for t in head),
            to(uniform, device))


def test_reference_matches_loop():
    B, K, d, m = 4, 7, 20, 9
    hidden, logp, ids, (w1, b1, w2, b2), u = make_inputs(B, K, d, m, torch.float32, torch.float32, 0, "cpu")
    for temperature in (0.0, 0.8):
        token, index, score, reward = reference.reward_select(hidden, logp, ids, w1, b1, w2, b2, reward_weight=1.5,
                                                              temperature=temperature, uniform=u)
        for b in range(B):
            r = [float(w2[0].double() @ torch.relu(w1.double() @ hidden[b, j].double() + b1.double()) + b2.double())
                 for j in range(K)]
            s = [float(logp[b, j]) + 1.5 * r[j] if math.isfinite(float(logp[b, j])) else -math.inf for j in range(K)]
            if temperature == 0.0:
                want = max(range(K), key=lambda j: (s[j], -j)) if max(s) > -math.inf else 0
            else:
                top = max(s)
                w = [math.exp((x - top) / temperature) if x > -math.inf else 0.0 for x in s]
                acc, want, target = 0.0, 0, float(u[b]) * sum(w)
                for j, x in enumerate(w):  # first j whose CDF exceeds u * total, among p > 0
                    acc += x
                    if x > 0:
                        want = j
                        if acc > target:
                            break
            assert int(index[b]) == want and int(token[b]) == int(ids[b, want])
            torch.testing.assert_close(reward[b].double(), torch.tensor(r, dtype=torch.float64), rtol=1e-5, atol=1e-5)


CASES = [
    # B, K, d, m (0 = linear head), hidden dtype, head dtype
    (3, 10, 100, 0, torch.float32, torch.float32),
    (4, 64, 576, 0, torch.bfloat16, torch.float32),
    (3, 1, 100, 0, torch.float16, torch.float16),
    (3, 10, 100, 48, torch.float32, torch.float32),
    (5, 10, 64, 130, torch.bfloat16, torch.float32),
    (3, 64, 40, 32, torch.float16, torch.float16),
]


@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("B,K,d,m,hdtype,wdtype", CASES,
                         ids=[f"b{c[0]}-k{c[1]}-d{c[2]}-m{c[3]}-{str(c[4])[6:]}" for c in CASES])
def test_matches_reference(monkeypatch, backend, temperature, seed, B, K, d, m, hdtype, wdtype):
    use_backend(monkeypatch, backend)
    hidden, logp, ids, head, u = make_inputs(B, K, d, m, hdtype, wdtype, seed=seed * 10 + K)
    kw = dict(reward_weight=1.5 if seed == 0 else 0.25, temperature=temperature, uniform=u if temperature else None)
    token, index, score, reward = ops.reward_select(hidden, logp, ids, *head, **kw)
    want = reference.reward_select(hidden.cpu(), logp.cpu(), ids.cpu(), *(to(t, "cpu") for t in head),
                                   **{**kw, "uniform": u.cpu()})
    assert token.dtype == index.dtype == torch.int64 and score.dtype == reward.dtype == torch.float32
    assert torch.equal(index.cpu(), want[1])
    assert torch.equal(token.cpu(), want[0])
    torch.testing.assert_close(score.cpu(), want[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reward.cpu(), want[3], rtol=1e-5, atol=1e-5)
    assert int(index[-1]) == 0  # the all -inf row
    if B > 2 and K > 3 and temperature == 0.0 and int(index[1]) in (1, 3):
        assert int(index[1]) == 1  # lowest index wins the tie


def chi_square_pvalue(counts: torch.Tensor, p: torch.Tensor) -> float:
    keep = p > 0
    expected = p[keep] * counts.sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor((int(keep.sum()) - 1) / 2.0), stat / 2))


@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
def test_sampling_distribution(monkeypatch, backend):
    """Frequencies of the sampled index follow softmax(score / τ), -inf candidates never come up."""
    use_backend(monkeypatch, backend)
    n = 400 if (backend == "triton" and INTERPRETED) else 100_000
    tau, K, d = 0.5, 6, 8
    g = torch.Generator().manual_seed(7)
    logp = torch.tensor([[-0.9, -1.2, -1.7, -2.0, -math.inf, -1.5]])
    rewards = torch.tensor([0.3, -0.2, 0.4, 0.0, 0.5, -0.4])
    w1, b1 = torch.eye(d)[:1], torch.zeros(1)  # r = hidden[..., 0]
    hidden = torch.cat([rewards[:, None], torch.randn(K, d - 1, generator=g)], dim=1)[None]
    score = logp + 2.0 * rewards  # the target, p ~ (.70, .05, .21, .02, 0, .01)
    p = torch.softmax(score[0].double() / tau, dim=-1)
    wrong = [torch.softmax(score[0].double(), -1), torch.softmax(logp[0].double() / tau, -1), p.roll(1)]

    def draw(u):
        B = u.shape[0]
        rows = [t.expand(B, *t.shape[1:]).contiguous().to(DEVICE) for t in (hidden, logp, torch.arange(K)[None])]
        _, index, _, _ = ops.reward_select(*rows, w1.to(DEVICE), b1.to(DEVICE), reward_weight=2.0,
                                           temperature=tau, uniform=u.to(DEVICE))
        return torch.bincount(index.cpu(), minlength=K).double()

    # random draws: chi-square against the target; the wrong targets must be rejected at this n
    counts = draw(torch.rand(n, generator=g))
    assert counts[4] == 0, "a -inf candidate was sampled"
    assert chi_square_pvalue(counts, p) > 1e-4
    for q in wrong:
        assert chi_square_pvalue(counts, q) < 1e-6

    # stratified draws u_i = (i + 1/2) / n: each index must take its probability mass to 1/n
    counts = draw((torch.arange(n, dtype=torch.float64) + 0.5).div(n).float())
    assert float((counts / n - p).abs().max()) <= 1.5 / n


FLT_MAX = 3.4028234663852886e38
BACKENDS = ["reference", "default", "triton", "cuda"]


def select(monkeypatch, backend, hidden, logp, ids, head, **kw):
    if backend == "reference":
        return reference.reward_select(hidden, logp, ids, *head, **kw)
    use_backend(monkeypatch, backend)
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    kw = {n: dev(v) if isinstance(v, torch.Tensor) else v for n, v in kw.items()}
    out = ops.reward_select(dev(hidden), dev(logp), dev(ids), *(dev(t) for t in head), **kw)
    return tuple(t.cpu() for t in out)


def linear_rewards(r: torch.Tensor, d: int = 4):
    """hidden [B, K, d] and a linear head with r(hidden) = r exactly (hidden[..., 0] = r)."""
    hidden = torch.zeros(*r.shape, d)
    hidden[..., 0] = r
    return hidden, (torch.eye(d)[:1], torch.zeros(1), None, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_inf_rewards(monkeypatch, backend):
    """NaN score -> -inf (never chosen), +inf score -> FLT_MAX, -inf logp never chosen;
    the returned reward is the raw r."""
    inf, nan = math.inf, math.nan
    r = torch.tensor([[0.5, nan, 1.0, 0.0], [nan, nan, nan, nan], [0.0, inf, 1.0, inf], [inf, 0.0, -inf, 2.0]])
    logp = torch.tensor([[-1.0, 0.0, -2.0, -1.5], [-1.0, -2.0, -0.5, -3.0], [-1.0, -2.0, -0.5, -3.0],
                         [-inf, -1.0, -0.5, -2.0]])
    ids = torch.arange(16).reshape(4, 4) * 10
    hidden, head = linear_rewards(r)
    token, index, score, reward = select(monkeypatch, backend, hidden, logp, ids, head, reward_weight=1.0)
    assert index.tolist() == [0, 0, 1, 3] and token.tolist() == [0, 40, 90, 150]
    want = torch.tensor([[-0.5, -inf, -1.0, -1.5], [-inf] * 4, [-1.0, FLT_MAX, 0.5, FLT_MAX],
                         [-inf, -1.0, -inf, 0.0]])
    assert torch.equal(score, want)
    assert torch.equal(reward.isnan(), r.isnan()) and torch.equal(reward[~r.isnan()], r[~r.isnan()])


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_zero_ignores_reward(monkeypatch, backend):
    """w == 0: score = logp exactly, even for NaN/inf rewards: plain top-k greedy."""
    inf, nan = math.inf, math.nan
    r = torch.tensor([[nan, inf, -inf, 1e30], [2.0, nan, 0.0, inf]])
    logp = torch.tensor([[-2.0, -0.5, -0.5, -1.0], [-inf, -1.0, -1.0, -3.0]])
    hidden, head = linear_rewards(r)
    for w in (0.0, -0.0, np.float32(0.0), torch.tensor(0.0)):
        token, index, score, _ = select(monkeypatch, backend, hidden, logp, torch.arange(8).reshape(2, 4), head,
                                        reward_weight=w)
        assert torch.equal(score, logp) and index.tolist() == [1, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_clamp(monkeypatch, backend):
    """score / temperature overflowing to +inf is clamped to FLT_MAX: two such candidates
    split the mass evenly, the others get none."""
    inf = math.inf
    r = torch.tensor([[0.0, inf, 5.0, inf, 0.0]] * 4)
    logp = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -inf]] * 4)
    hidden, head = linear_rewards(r)
    u = torch.tensor([0.0, 0.25, 0.4999, 0.75])
    _, index, score, _ = select(monkeypatch, backend, hidden, logp, torch.arange(20).reshape(4, 5), head,
                                reward_weight=1.0, temperature=0.5, uniform=u)
    assert index.tolist() == [1, 1, 1, 3]
    assert bool((score[:, 1] == FLT_MAX).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_all_minus_inf_row(monkeypatch, backend, temperature):
    logp = torch.full((2, 3), -math.inf)
    logp[1, 2] = -1.0
    hidden, head = linear_rewards(torch.tensor([[1.0, 2.0, 3.0], [1.0, math.nan, 0.0]]))
    _, index, score, _ = select(monkeypatch, backend, hidden, logp, torch.arange(6).reshape(2, 3), head,
                                reward_weight=0.5, temperature=temperature, uniform=torch.tensor([0.9, 0.9]))
    assert index.tolist() == [0, 2]
    assert bool((score[0] == -math.inf).all())


@pytest.mark.parametrize("split", [2, 4, 8])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_split_hidden_units(monkeypatch, split, temperature):
    """The MLP head's 2-D grid (slices of the hidden units, ticket + last-arriver sum)."""
    use_backend(monkeypatch, "triton")
    from rgk.kernels.reward_select import reward_select_triton

    hidden, logp, ids, head, u = make_inputs(3, 10, 40, 200, torch.float32, torch.float32, seed=split)
    want = reference.reward_select(hidden.cpu(), logp.cpu(), ids.cpu(), *(to(t, "cpu") for t in head),
                                   reward_weight=1.5, temperature=temperature, uniform=u.cpu())
    for _ in range(2):  # the counters are back at zero: a second launch is right too
        got = reward_select_triton(hidden, logp, ids, *head, reward_weight=1.5, temperature=temperature,
                                   uniform=u, split=split)
        assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[0].cpu(), want[0])
        torch.testing.assert_close(got[3].cpu(), want[3], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[2].cpu(), want[2], rtol=1e-5, atol=1e-5)


def test_select_from_rewards_and_reward_head():
    hidden, logp, ids, head, u = make_inputs(4, 6, 12, 5, torch.float32, torch.float32, 0, "cpu")
    r = ops.reward_head(hidden, *head)
    torch.testing.assert_close(r, reference.reward_head(hidden, *head))
    assert r.shape == (4, 6) and r.dtype == torch.float32
    assert ops.reward_head(hidden[0, 0], *head).shape == ()
    for temperature in (0.0, 0.6):
        kw = dict(reward_weight=0.7, temperature=temperature, uniform=u)
        got = ops.select_from_rewards(logp, ids, r, **kw)
        want = reference.reward_select(hidden, logp, ids, *head, **kw)
        assert all(torch.equal(a, b) for a, b in zip(got, want[:3]))
    with pytest.raises(ValueError, match="^hidden:"):
        ops.reward_head(hidden[..., :0], *head)
    with pytest.raises(ValueError, match="^w1:"):
        ops.reward_head(hidden[..., :5], *head)
    with pytest.raises(TypeError, match="^hidden:"):
        ops.reward_head(hidden.long(), *head)
    with pytest.raises(TypeError, match="^b1:"):
        ops.reward_head(hidden, head[0], head[1].long(), *head[2:])


def test_select_from_rewards_rejects():
    logp, ids, r = torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="^logp:"):
        ops.select_from_rewards(logp[:, :0], ids[:, :0], r[:, :0], reward_weight=1.0)
    with pytest.raises(TypeError, match="^ids:"):
        ops.select_from_rewards(logp, ids.int(), r, reward_weight=1.0)
    with pytest.raises(TypeError, match="^ids:"):
        ops.select_from_rewards(logp, ids.float(), r, reward_weight=1.0)
    with pytest.raises(ValueError, match="^r:"):
        ops.select_from_rewards(logp, ids, r[:1], reward_weight=1.0)
    with pytest.raises(ValueError, match="^uniform:"):
        ops.select_from_rewards(logp, ids, r, reward_weight=1.0, temperature=1.0, uniform=torch.tensor([0.5, 1.0]))
    with pytest.raises(TypeError, match="^reward_weight:"):
        ops.select_from_rewards(logp, ids, r, reward_weight=True)


def test_rejects_bad_inputs():
    hidden, logp, ids, (w1, b1, w2, b2), u = make_inputs(2, 4, 8, 3, torch.float32, torch.float32, 0, "cpu")

    def call(**change):
        kw = dict(hidden=hidden, logp=logp, ids=ids, w1=w1, b1=b1, w2=w2, b2=b2, reward_weight=1.0)
        kw.update(change)
        return ops.reward_select(**kw)

    with pytest.raises(ValueError, match="^reward_weight:"):
        call(reward_weight=float("nan"))
    with pytest.raises(ValueError, match="^reward_weight:"):
        call(reward_weight=math.inf)
    with pytest.raises(ValueError, match="^temperature:"):
        call(temperature=-1.0)
    with pytest.raises(ValueError, match="^uniform:"):
        call(temperature=0.5)
    with pytest.raises(ValueError, match="^uniform:"):
        call(temperature=0.5, uniform=torch.rand(3))
    with pytest.raises(TypeError, match="^hidden:"):
        call(hidden=hidden.long())
    with pytest.raises(ValueError, match="^logp:"):
        call(logp=logp[:, :3])
    with pytest.raises(ValueError, match="^ids:"):
        call(ids=ids[:1])
    with pytest.raises(ValueError, match="^w1:"):
        call(w1=w1[:, :5])
    with pytest.raises(ValueError, match="^b1:"):
        call(b1=b1[:2])
    with pytest.raises(ValueError, match="^w2:"):
        call(w2=w2[:, :2])
    with pytest.raises(ValueError, match="^b2:"):
        call(w2=None, b2=b2, w1=w1[:1], b1=b1[:1])
    # K = 0 candidates: refused by name, never launched (also with check=False)
    for check in (True, False):
        with pytest.raises(ValueError, match="^hidden:"):
            call(hidden=hidden[:, :0], logp=logp[:, :0], ids=ids[:, :0], check=check)
    # ids must be int64
    with pytest.raises(TypeError, match="^ids:"):
        call(ids=ids.int())
    with pytest.raises(TypeError, match="^ids:"):
        call(ids=ids.float())
    # uniform in [0, 1), in fp32 (a float64 draw just below 1 rounds to 1.0)
    for bad in ([0.5, 1.0], [-0.1, 0.5], [math.nan, 0.5], [0.5, 1 - 1e-12]):
        with pytest.raises(ValueError, match="^uniform:"):
            call(temperature=0.5, uniform=torch.tensor(bad, dtype=torch.float64))
    call(temperature=0.5, uniform=torch.tensor([0.5, 1.0]), check=False)  # the value check is skipped
    with pytest.raises(TypeError, match="^uniform:"):
        call(temperature=0.5, uniform=torch.tensor([0, 0]))
    # numbers: bool refused, numpy scalars and 0-d tensors accepted
    with pytest.raises(TypeError, match="^reward_weight:"):
        call(reward_weight=True)
    with pytest.raises(TypeError, match="^temperature:"):
        call(temperature="0.5")
    with pytest.raises(TypeError, match="^reward_weight:"):
        call(reward_weight=torch.tensor([1.0]))
    want = call(reward_weight=1.5, temperature=0.5, uniform=u)
    for w, t in ((np.float32(1.5), np.float64(0.5)), (torch.tensor(1.5), torch.tensor(0.5)), (np.int64(3) / 2, 0.5)):
        got = call(reward_weight=w, temperature=t, uniform=u)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


@requires_cuda
@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("B,K,m,hdtype", [(1, 10, 0, torch.bfloat16), (64, 10, 0, torch.bfloat16),
                                          (64, 64, 0, torch.float32), (8, 10, 1024, torch.float32)])
def test_gpu_large(monkeypatch, backend, temperature, B, K, m, hdtype):
    use_backend(monkeypatch, backend)
    hidden, logp, ids, head, u = make_inputs(B, K, 4096, m, hdtype, torch.float32, seed=B + K)
    kw = dict(reward_weight=1.5, temperature=temperature, uniform=u if temperature else None)
    token, index, score, reward = ops.reward_select(hidden, logp, ids, *head, **kw)
    want = reference.reward_select(hidden, logp, ids, *head, **kw)
    torch.testing.assert_close(reward, want[3], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(score, want[2], rtol=1e-4, atol=1e-4)
    # summation order differs from torch's: allow a different choice only on a near tie
    diff = (index != want[1]).nonzero().flatten().tolist()
    assert len(diff) <= max(1, B // 20)
    for b in diff:
        assert abs(float(want[2][b, index[b]] - want[2][b, want[1][b]])) < 1e-3 or temperature > 0
    assert torch.equal(token, ids.gather(1, index[:, None])[:, 0])
