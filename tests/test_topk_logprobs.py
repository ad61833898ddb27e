"""topk_logprobs: public op (default backend), Triton kernel (interpreter on CPU, GPU when
present) and CUDA extension (GPU only) against the reference; the reference against
float64 log_softmax and a brute-force sort in the total order of `rgk.ops` (value
descending, index ascending; NaN -> -inf, +inf -> FLT_MAX).  Ids must equal the
reference's exactly on every backend (the order is exact); log-probs within 1e-6/1e-5."""
import math
import os

import numpy as np
import pytest
import torch
from conftest import DEVICE, INTERPRETED, requires_cuda, use_backend

from rgk import ops
from rgk.ops import reference

# the interpreter evaluates exp/log of -inf with numpy, which warns
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def make_logits(B, V, dtype, pattern, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    if pattern == "ties":  # few distinct values: hundreds of equal entries at the top
        x = torch.randint(0, 4, (B, V), generator=g).float()
        x[-1] = 0.5  # one constant row
    else:
        x = torch.randn(B, V, generator=g) * 3
    if pattern == "neginf":
        x[torch.rand(B, V, generator=g) < 0.3] = -math.inf
        x[0] = -math.inf  # all masked
        if B > 1:
            x[1, :] = -math.inf
            x[1, torch.randperm(V, generator=g)[:3]] = torch.randn(3, generator=g)  # fewer finite than k
    return x.to(dtype).to(device)


FLT_MAX = 3.4028234663852886e38
BACKENDS = ["reference", "default", "triton", "cuda"]


def run(monkeypatch, backend, logits, k):
    if backend == "reference":
        return reference.topk_logprobs(logits, k)
    use_backend(monkeypatch, backend)
    return ops.topk_logprobs(logits.to(DEVICE), k)


def brute_order(logits: torch.Tensor, k: int) -> list[list[int]]:
    """The first k indices of each row in the order (sanitised value desc, index asc)."""
    out = []
    for row in logits.float().tolist():
        x = [-math.inf if v != v else min(v, FLT_MAX) for v in row]
        out.append(sorted(range(len(x)), key=lambda v: (-x[v], v))[:k])
    return out


def check_topk(logits, k, logp, ids):
    """Ids exactly the reference's (the total order), log-probs within tolerance of it."""
    B, V = logits.shape
    logp, ids = logp.cpu(), ids.cpu()
    assert logp.shape == (B, k) and logp.dtype == torch.float32
    assert ids.shape == (B, k) and ids.dtype == torch.int64
    ref_logp, ref_ids = reference.topk_logprobs(logits.cpu(), k)
    assert torch.equal(ids, ref_ids)
    fin = torch.isfinite(ref_logp)
    assert torch.equal(torch.isfinite(logp), fin)
    assert bool((logp[~fin] == -math.inf).all())
    torch.testing.assert_close(logp[fin], ref_logp[fin], rtol=1e-6, atol=1e-5)
    assert bool((logp[:, :-1] >= logp[:, 1:]).all()), "log-probs must be sorted descending"


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_is_log_softmax_topk(seed):
    x = make_logits(4, 1000, torch.float32, "neginf", seed, device="cpu")
    x[2, 7] = 50.0
    logp, ids = reference.topk_logprobs(x, 10)
    want = torch.log_softmax(x.double(), dim=-1)
    want_vals, _ = torch.topk(want, 10, dim=-1)
    assert torch.equal(torch.isfinite(logp), torch.isfinite(want_vals))
    fin = torch.isfinite(want_vals)
    torch.testing.assert_close(logp[fin].double(), want_vals[fin], rtol=1e-6, atol=1e-6)
    assert torch.equal(x.gather(1, ids), torch.topk(x, 10).values)
    assert ids.tolist() == brute_order(x, 10)


def special_logits():
    """Ties, NaN, +-inf, -0.0: one row per case, V = 12."""
    inf, nan = math.inf, math.nan
    rows = [
        [1, 3, 3, 2, 3, 0, 0, 1, 3, 2, 2, 1],                          # ties everywhere
        [0.5] * 12,                                                    # constant row
        [-inf] * 12,                                                   # all masked
        [nan, 1, nan, -inf, 2, nan, -inf, 0, nan, 1, -inf, -inf],     # NaN and -inf: 4 finite
        [1, inf, 2, nan, inf, 0, -inf, 3, 1, 2, 0, 1],                 # two +inf share the mass
        [nan] * 12,                                                    # all NaN = all masked
        [-0.0, 0.0, -0.0, 1, 0.0, -1, -0.0, 1, 0, 0, -1, -1],          # -0.0 ties with +0.0
        [2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1],                          # ties at the k-th boundary
        [-3.0e38, inf, -3.0e38, 3.0e38, 1, -inf, nan, 0, 0, 0, 0, 0],  # near FLT_MAX
    ]
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("k", [1, 3, 4, 5, 12])
def test_reference_total_order(k):
    x = special_logits()
    logp, ids = reference.topk_logprobs(x, k)
    assert ids.tolist() == brute_order(x, k)
    clean = torch.where(x == x, x.clamp(max=FLT_MAX), -math.inf)
    want = torch.log_softmax(clean.double(), dim=-1).gather(1, ids)
    # finite exactly where x - m is, in fp32 (x ~ -3e38 under m = FLT_MAX underflows to -inf)
    xm = clean.gather(1, ids) - clean.max(dim=-1, keepdim=True).values
    assert torch.equal(logp > -math.inf, xm > -math.inf)
    close = xm > -math.inf
    torch.testing.assert_close(logp[close].double(), want[close], rtol=1e-6, atol=1e-6)
    if k >= 4:  # row 3 has 4 finite entries, then the lowest -inf/NaN indices ascending
        assert ids[3].tolist()[:4] == [4, 1, 9, 7] and ids[3].tolist()[4:] == [0, 2, 3, 5, 6, 8, 10, 11][:k - 4]
        assert bool((logp[3, 4:] == -math.inf).all())
    if k >= 2:  # two +inf tokens: each -log 2, the others (x - FLT_MAX) - log 2 (finite or -inf)
        assert ids[4].tolist()[:2] == [1, 4]
        torch.testing.assert_close(logp[4, :2], torch.full((2,), -math.log(2)), rtol=0, atol=1e-6)
    assert bool((logp[2] == -math.inf).all()) and ids[2].tolist() == list(range(k))
    assert bool((logp[5] == -math.inf).all()) and ids[5].tolist() == list(range(k))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 4, 7])
def test_special_values(monkeypatch, backend, k):
    """Ties, constant rows, NaN, +inf, all -inf rows, -0.0, the -inf padding ids."""
    x = special_logits()
    logp, ids = run(monkeypatch, backend, x, k)
    check_topk(x, k, logp, ids)
    assert ids.cpu().tolist() == brute_order(x, k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_k1_is_argmax(monkeypatch, backend, dtype):
    """k = 1 is torch.argmax's token (the first maximal index), what HF greedy picks."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (6, 40), generator=g).to(dtype)  # many ties at the max
    x[1] = -math.inf
    x[1, 17] = 0.0
    _, ids = run(monkeypatch, backend, x, 1)
    assert torch.equal(ids.cpu()[:, 0], torch.argmax(x.float(), dim=-1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_at_kth_boundary(monkeypatch, backend):
    """Eight entries equal to the k-th value: the lowest-index ones fill the last slots."""
    x = torch.zeros(2, 30)
    x[:, [3, 9, 20]] = 5.0
    x[:, [1, 4, 8, 11, 15, 22, 27, 29]] = 2.0
    x[1, 11] = math.nan
    logp, ids = run(monkeypatch, backend, x, 5)
    assert ids.cpu().tolist() == [[3, 9, 20, 1, 4], [3, 9, 20, 1, 4]]
    check_topk(x, 5, logp, ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_offset(monkeypatch, backend):
    """x + 1e6: (x - m) - log(s) keeps the precision that x - logsumexp(x) loses."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 200, generator=g) * 4 + 1e6
    logp, ids = run(monkeypatch, backend, x, 8)
    want = torch.log_softmax(x.double(), dim=-1).gather(1, ids.cpu())
    torch.testing.assert_close(logp.cpu().double(), want, rtol=0, atol=1e-4)
    check_topk(x, 8, logp, ids)


CASES = [
    # B, V, k, dtype, pattern
    (3, 3000, 10, torch.float32, "randn"),
    (2, 2500, 64, torch.float32, "randn"),
    (2, 4100, 16, torch.bfloat16, "randn"),
    (3, 2000, 1, torch.float16, "randn"),
    (3, 2000, 10, torch.float32, "neginf"),
    (2, 1500, 12, torch.float32, "ties"),
    (2, 1500, 5, torch.bfloat16, "ties"),
    (4, 7, 7, torch.float32, "randn"),
]


@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("B,V,k,dtype,pattern", CASES,
                         ids=[f"{c[0]}x{c[1]}-k{c[2]}-{str(c[3])[6:]}-{c[4]}" for c in CASES])
def test_matches_reference(monkeypatch, backend, seed, B, V, k, dtype, pattern):
    use_backend(monkeypatch, backend)
    logits = make_logits(B, V, dtype, pattern, seed=seed * 1000 + V + k)
    logits[0, 1] = math.nan
    logits[-1, 2] = math.inf
    logp, ids = ops.topk_logprobs(logits, k)
    check_topk(logits.cpu(), k, logp.cpu(), ids.cpu())


@pytest.mark.parametrize("pattern,k,split", [("randn", 10, 4), ("randn", 40, 2), ("neginf", 6, 4), ("ties", 16, 2)])
def test_split_vocabulary(pattern, k, split):
    """The multi-program-per-row path (ticket + last-arriver merge) on forced splits."""
    if INTERPRETED and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1")
    from rgk.kernels.topk_logprobs import topk_logprobs_triton

    logits = make_logits(2, 2600, torch.float32, pattern, seed=k)
    logp, ids = topk_logprobs_triton(logits, k, split=split)
    check_topk(logits.cpu(), k, logp.cpu(), ids.cpu())
    if pattern == "randn":
        # the kernel left its counters at zero: a second launch is right too
        logp2, ids2 = topk_logprobs_triton(logits, k, split=split)
        assert torch.equal(logp2, logp) and torch.equal(ids2, ids)


@pytest.mark.parametrize("bad_k,err", [(0, ValueError), (-1, ValueError), (101, ValueError),
                                       (2.0, TypeError), (None, TypeError), (True, TypeError),
                                       (np.bool_(True), TypeError), (torch.tensor(3.0), TypeError),
                                       (torch.tensor([3]), TypeError), (np.int64(0), ValueError)])
def test_rejects_bad_k(bad_k, err):
    with pytest.raises(err, match="^k:"):
        ops.topk_logprobs(torch.zeros(2, 100), bad_k)


@pytest.mark.parametrize("backend", ["default", "triton"])
@pytest.mark.parametrize("k", [np.int64(3), np.int32(3), torch.tensor(3), torch.tensor(3, dtype=torch.int32)])
def test_accepts_integer_scalars(monkeypatch, backend, k):
    use_backend(monkeypatch, backend)
    x = make_logits(2, 50, torch.float32, "randn", seed=1)
    logp, ids = ops.topk_logprobs(x, k)
    assert ids.shape == (2, 3)
    check_topk(x, 3, logp, ids)


def test_check_false_and_empty_batch(monkeypatch):
    x = make_logits(2, 50, torch.float32, "randn", seed=2)
    for backend in ("default", "triton"):
        use_backend(monkeypatch, backend)
        logp, ids = ops.topk_logprobs(x, 4, check=False)
        check_topk(x, 4, logp, ids)
        logp, ids = ops.topk_logprobs(torch.zeros(0, 50), 4)
        assert logp.shape == ids.shape == (0, 4)
    with pytest.raises(ValueError, match="^k:"):
        ops.topk_logprobs(torch.zeros(2, 50), 0, check=False)  # scalars are checked always


def test_k_above_64_falls_back(monkeypatch):
    """The fused kernels take k <= 64; larger k runs the reference on every backend."""
    use_backend(monkeypatch, "triton")
    x = make_logits(2, 300, torch.float32, "ties", seed=4)
    logp, ids = ops.topk_logprobs(x, 100)
    check_topk(x, 100, logp, ids)


def test_rejects_bad_logits():
    with pytest.raises(TypeError, match="^logits:"):
        ops.topk_logprobs(torch.zeros(2, 100, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="^logits:"):
        ops.topk_logprobs(torch.zeros(100), 3)
    with pytest.raises(TypeError, match="^logits:"):
        ops.topk_logprobs([[0.0, 1.0]], 1)


@requires_cuda
@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("k,dtype", [(10, torch.bfloat16), (64, torch.float32), (50, torch.float16)])
def test_gpu_large_vocab(monkeypatch, backend, B, k, dtype):
    use_backend(monkeypatch, backend)
    logits = make_logits(B, 128256, dtype, "randn", seed=B)
    logits[:, ::7] = -math.inf
    logp, ids = ops.topk_logprobs(logits, k)
    torch.cuda.synchronize()
    check_topk(logits.cpu(), k, logp.cpu(), ids.cpu())
    masked = make_logits(B, 128256, dtype, "neginf", seed=B + 1)
    logp, ids = ops.topk_logprobs(masked, k)
    check_topk(masked.cpu(), k, logp.cpu(), ids.cpu())


# ----------------------------------------------------------------------------- dispatch and workspace

def test_dispatch_falls_back_when_cuda_refuses(monkeypatch):
    """backend "cuda" + cuda_supports False -> Triton (fused limits allowing) -> reference,
    instead of raising; the answer is memoised per (op, shape)."""
    from rgk.ops import _backend
    use_backend(monkeypatch, "triton")
    calls = []

    def limits(op, **shape):
        calls.append((op, shape))
        return False

    monkeypatch.setattr(_backend, "choose", lambda device_type, has_cuda_impl=True: "cuda")
    monkeypatch.setattr(_backend, "_limits_fn", lambda: limits)
    monkeypatch.setattr(_backend, "_SUPPORTED", {})
    assert _backend.route("topk_logprobs", "cpu", B=2, V=100, k=10, dtype=torch.float32) == "triton"
    assert _backend.route("topk_logprobs", "cpu", B=2, V=100, k=10, dtype=torch.float32) == "triton"
    assert len(calls) == 1 and calls[0] == ("topk_logprobs", dict(B=2, V=100, k=10, dtype=torch.float32))
    assert _backend.route("topk_logprobs", "cpu", B=2, V=100, k=65, dtype=torch.float32) == "torch"
    x = make_logits(2, 90, torch.float32, "ties", seed=6)
    logp, ids = ops.topk_logprobs(x, 6)  # runs the Triton kernel (interpreter), no torch.ops call
    check_topk(x, 6, logp, ids)
    monkeypatch.setattr(_backend, "_limits_fn", lambda: (lambda op, **shape: True))
    monkeypatch.setattr(_backend, "_SUPPORTED", {})
    assert _backend.route("topk_logprobs", "cpu", B=2, V=100, k=10, dtype=torch.float32) == "cuda"
    # without rgk.ops._limits: the fused limits (k <= 64, K <= 64, D <= 256) stand for CUDA's
    monkeypatch.setattr(_backend, "_limits_fn", lambda: None)
    monkeypatch.setattr(_backend, "_SUPPORTED", {})
    assert _backend.cuda_supports("topk_logprobs", B=1, V=100, k=64, dtype=torch.float32)
    assert not _backend.cuda_supports("topk_logprobs", B=1, V=100, k=65, dtype=torch.float32)
    assert not _backend.cuda_supports("fork_attention", B=1, Hq=2, Hkv=1, K=3, D=257, L=4, dtype=torch.float16)


@pytest.fixture
def workspace(monkeypatch):
    from rgk.kernels import _workspace
    monkeypatch.setattr(_workspace, "_BUFFERS", {})
    monkeypatch.setattr(_workspace, "_RETIRED", [])
    stream = {"id": 0}
    monkeypatch.setattr(_workspace, "_stream_id", lambda device: stream["id"])
    return _workspace, stream


def test_workspace_keyed_by_family_device_stream(workspace):
    ws, stream = workspace
    cpu = torch.device("cpu")
    a = ws.tickets("topk_logprobs", cpu, 10, 64)
    assert a.dtype == torch.int32 and a.numel() == 64 and bool((a == 0).all())
    assert ws.tickets("topk_logprobs", cpu, 64, 64) is a  # big enough: the same buffer
    assert ws.tickets("fork_attention", cpu, 10, 64) is not a  # another family
    stream["id"] = 1234
    b = ws.tickets("topk_logprobs", cpu, 10, 64)
    assert b is not a  # another stream: its own counters
    stream["id"] = 0
    assert ws.tickets("topk_logprobs", cpu, 10, 64) is a
    assert len(ws._BUFFERS) == 3


def test_workspace_growth(workspace):
    ws, _ = workspace
    cpu = torch.device("cpu")
    a = ws.tickets("reward_select", cpu, 100, 64)
    assert a.numel() == 100
    b = ws.tickets("reward_select", cpu, 150, 64)
    assert b.numel() == 200 and bool((b == 0).all())  # at least twice the outgrown buffer
    assert ws._RETIRED == [a]  # kept alive: a captured graph may still hold its address
    assert ws.tickets("reward_select", cpu, 1000, 64).numel() == 1000


def test_workspace_never_allocates_during_capture(workspace, monkeypatch):
    ws, _ = workspace
    dev = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert ws.tickets("topk_logprobs", dev, 8, 1024) is None  # nothing to reuse: launch unsplit
    assert ws._BUFFERS == {}
    seeded = torch.zeros(16, dtype=torch.int32)  # as allocated on this stream before the capture
    ws._BUFFERS[ws._key("topk_logprobs", dev)] = seeded
    assert ws.tickets("topk_logprobs", dev, 16, 1024) is seeded
    assert ws.tickets("topk_logprobs", dev, 17, 1024) is None  # would have to grow: not during capture
    assert ws._BUFFERS[ws._key("topk_logprobs", dev)] is seeded and ws._RETIRED == []


@pytest.mark.parametrize("family", ["topk_logprobs", "reward_select", "fork_attention"])
def test_split_kernels_launch_unsplit_without_tickets(monkeypatch, family):
    """When `tickets` answers None (a capture that would need a buffer), the wrappers
    launch with SPLIT = 1 and the result is the same."""
    if INTERPRETED and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1")
    from rgk.kernels import _workspace
    from rgk.kernels import fork_attention as F
    from rgk.kernels import reward_select as R
    from rgk.kernels import topk_logprobs as T
    asked = []

    def none(fam, device, n, min_size):
        asked.append(fam)
        return None

    monkeypatch.setattr(_workspace, "tickets", none)
    g = torch.Generator().manual_seed(8)
    if family == "topk_logprobs":
        x = make_logits(2, 600, torch.float32, "neginf", seed=8)
        check_topk(x, 5, *T.topk_logprobs_triton(x, 5, split=4))
    elif family == "reward_select":
        hidden, logp = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, generator=g)
        ids = torch.arange(10).reshape(2, 5)
        head = (torch.randn(80, 16, generator=g), torch.randn(80, generator=g), torch.randn(1, 80, generator=g),
                torch.randn(1, generator=g))
        got = R.reward_select_triton(hidden, logp, ids, *head, reward_weight=0.3, temperature=0.0, uniform=None,
                                     split=4)
        want = reference.reward_select(hidden, logp, ids, *head, reward_weight=0.3)
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[3], want[3], rtol=1e-5, atol=1e-5)
    else:
        q, kc, vc = torch.randn(1, 2, 3, 16, generator=g), torch.randn(1, 1, 40, 16, generator=g), \
            torch.randn(1, 1, 40, 16, generator=g)
        kn, vn = torch.randn(1, 1, 3, 16, generator=g), torch.randn(1, 1, 3, 16, generator=g)
        se = torch.tensor([0]), torch.tensor([40])
        torch.testing.assert_close(F.fork_attention_triton(q, kc, vc, kn, vn, *se, 0.25, split=3),
                                   reference.fork_attention(q, kc, vc, kn, vn, *se, 0.25), rtol=1e-5, atol=1e-5)
    assert asked == [family]


@pytest.mark.parametrize("seed", range(6))
def test_reference_cpu_fast_path_orders_ties_taken_whole(seed, monkeypatch):
    """Ties lying wholly inside the top k (torch.topk takes all of them, in its own order):
    the CPU path that skips the tie pass still returns them index ascending; and ties
    straddling the k-th (the tie pass runs) too."""
    g = torch.Generator().manual_seed(seed)
    B, V, k = 4, 257, 8
    x = torch.randn(B, V, generator=g)
    for b in range(B):
        pos = torch.randperm(V, generator=g)[:5 if b % 2 else 12]   # 5 ties inside the top 8, or 12 across it
        x[b, pos] = 9.0 if b % 2 else 3.5 + 0.0 * x[b, pos]
        if not b % 2:
            x[b, pos[:2]] = 10.0 + b
    calls = []
    topk = torch.topk
    monkeypatch.setattr(torch, "topk", lambda *a, **kw: calls.append(1) or topk(*a, **kw))
    for rows, n_topk in ((x[1::2], 1), (x, 2)):      # ties inside the top k only: one top-k
        calls.clear()
        logp, ids = reference.topk_logprobs(rows, k)
        assert len(calls) == n_topk
        assert ids.tolist() == brute_order(rows, k)
        torch.testing.assert_close(logp, torch.log_softmax(rows, -1).gather(1, ids))
