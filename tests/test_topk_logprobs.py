"""topk_logprobs: public op (default backend), Triton kernel (interpreter on CPU, GPU when
present) and CUDA extension (GPU only) against the reference; the reference against
torch.log_softmax + torch.topk."""
import math
import os

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


def check_topk(logits, k, logp, ids):
    """Exact values, valid distinct ids, log-probs against the reference."""
    B, V = logits.shape
    x = logits.float()
    assert logp.shape == (B, k) and logp.dtype == torch.float32
    assert ids.shape == (B, k) and ids.dtype == torch.int64
    assert bool(((ids >= 0) & (ids < V)).all())
    for row in ids.tolist():
        assert len(set(row)) == k, "ids of one row must be distinct"
    want_vals = torch.topk(x, k, dim=-1).values
    # the logits at the returned ids are exactly the k largest (ties may pick other ids)
    assert torch.equal(x.gather(1, ids), want_vals)
    ref_logp, _ = reference.topk_logprobs(logits, k)
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


@pytest.mark.parametrize("bad_k", [0, -1, 101, 2.0, None])
def test_rejects_bad_k(bad_k):
    with pytest.raises(ValueError, match="^k:"):
        ops.topk_logprobs(torch.zeros(2, 100), bad_k)


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
