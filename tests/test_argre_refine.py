"""argre_refine: public op (default backend), Triton kernel (interpreter on CPU, GPU when
present) and CUDA extension (GPU only) against the autograd reference; the reference
against the closed-form gradient in float64; the batched-GEMM path that large heads take
on CUDA tensors without the extension (reference.argre_refine_matmul) and its routing
rule; the argument rules (numbers, bool refused)."""
import math

import numpy as np
import pytest
import torch
from conftest import DEVICE, requires_cuda, use_backend

from rgk import ops
from rgk.ops import reference

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-2, atol=2e-2),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def make_inputs(B, d, m, dtype, wdtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, d, generator=g).to(dtype)
    w1 = (torch.randn(m, d, generator=g) / math.sqrt(d)).to(wdtype)
    b1 = (torch.randn(m, generator=g) * 0.1).to(wdtype)
    w2 = (torch.randn(1, m, generator=g) / math.sqrt(m)).to(wdtype)
    b2 = torch.randn(1, generator=g).to(wdtype)
    direction = (torch.randn(d, generator=g) * 0.1).to(wdtype)
    theta = reference.reward_head(h.float(), w1, b1, w2, b2)
    # half of the rows sit below r_plus (steered), the others above (left alone)
    r_plus = float(theta.median()) if B > 1 else float(theta[0]) + 1.0
    return [t.to(device) for t in (h, w1, b1, w2, b2, direction)], r_plus


def closed_form(h, w1, b1, w2, b2, direction, r_plus, beta, n_steps, step_size):
    x, w1, b1, w2, b2, u = (t.double() for t in (h, w1, b1, w2, b2, direction))
    theta = torch.relu(x @ w1.T + b1) @ w2[0] + b2
    gap = r_plus - theta
    x = x + torch.where(gap > 0, gap, torch.zeros_like(gap))[:, None] / beta * u
    for _ in range(n_steps):
        active = (x @ w1.T + b1 > 0).double()
        x = x + step_size * (active * w2[0]) @ w1
    return x


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_steps", [0, 1, 5])
def test_reference_matches_closed_form(seed, n_steps):
    args, r_plus = make_inputs(4, 50, 30, torch.float32, torch.float32, seed, device="cpu")
    got = reference.argre_refine(*args, r_plus, beta=1.5, n_steps=n_steps, step_size=0.5)
    want = closed_form(*args, r_plus, 1.5, n_steps, 0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_steps", [0, 1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_path_matches_reference(seed, n_steps, dtype):
    args, r_plus = make_inputs(5, 50, 30, dtype, torch.float32, seed, device="cpu")
    kw = dict(beta=1.5, n_steps=n_steps, step_size=0.5)
    got = reference.argre_refine_matmul(*args, r_plus, **kw)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), reference.argre_refine(*args, r_plus, **kw).float(), **TOL[dtype])
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), closed_form(*args, r_plus, 1.5, n_steps, 0.5), rtol=1e-5, atol=1e-5)


def test_routing_rule():
    """Triton backend on CUDA tensors: the single-launch kernel up to (2 n + 1) m d =
    ARGRE_TRITON_MAX_READS weights read per row, batched GEMMs above; never on CPU."""
    cap = ops.ARGRE_TRITON_MAX_READS
    assert not ops._argre_wants_matmul("cuda", 5, 64, 576)  # 11 * 64 * 576 = 405,504
    assert ops._argre_wants_matmul("cuda", 5, 1024, 4096)
    assert not ops._argre_wants_matmul("cuda", 0, 1024, cap // 1024)
    assert ops._argre_wants_matmul("cuda", 0, 1024, cap // 1024 + 1)
    assert not ops._argre_wants_matmul("cpu", 5, 1024, 4096)  # the interpreter always runs the kernel


CASES = [
    # B, d, m, h dtype, weight dtype, n_steps
    (3, 100, 48, torch.float32, torch.float32, 0),
    (3, 100, 48, torch.float32, torch.float32, 5),
    (1, 576, 64, torch.bfloat16, torch.float32, 2),
    (4, 130, 1024, torch.float32, torch.float32, 2),
    (2, 64, 130, torch.float16, torch.float16, 1),
    (3, 40, 20, torch.bfloat16, torch.bfloat16, 3),
]


@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("B,d,m,dtype,wdtype,n_steps", CASES,
                         ids=[f"b{c[0]}-d{c[1]}-m{c[2]}-{str(c[3])[6:]}-w{str(c[4])[6:]}-s{c[5]}" for c in CASES])
def test_matches_reference(monkeypatch, backend, seed, B, d, m, dtype, wdtype, n_steps):
    use_backend(monkeypatch, backend)
    args, r_plus = make_inputs(B, d, m, dtype, wdtype, seed=seed * 7 + d)
    kw = dict(beta=1.0 if seed == 0 else 2.5, n_steps=n_steps, step_size=0.5 if seed == 0 else 0.2)
    out = ops.argre_refine(*args, r_plus, **kw)
    assert out.shape == (B, d) and out.dtype == dtype
    want = reference.argre_refine(*[a.cpu() for a in args], r_plus, **kw)
    torch.testing.assert_close(out.cpu().float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
def test_steering_switch(monkeypatch, backend):
    """n_steps = 0: rows with θ(h) >= r_plus are returned unchanged, the others move by
    (r_plus - θ(h)) / beta along the direction."""
    use_backend(monkeypatch, backend)
    args, r_plus = make_inputs(6, 72, 40, torch.float32, torch.float32, seed=3)
    h = args[0]
    theta = reference.reward_head(h.cpu(), *[a.cpu() for a in args[1:5]])
    below = theta < r_plus
    assert 0 < int(below.sum()) < 6
    out = ops.argre_refine(*args, r_plus, beta=2.0, n_steps=0, step_size=0.5).cpu()
    assert torch.equal(out[~below], h.cpu()[~below])
    moved = h.cpu() + ((r_plus - theta) / 2.0)[:, None] * args[5].cpu()[None]
    torch.testing.assert_close(out[below], moved[below], rtol=1e-5, atol=1e-5)
    # with the bar above every row, all rows move
    out = ops.argre_refine(*args, float(theta.max()) + 1.0, beta=2.0, n_steps=0, step_size=0.5).cpu()
    assert bool((out != h.cpu()).any(dim=1).all())


def test_rejects_bad_inputs():
    (h, w1, b1, w2, b2, u), r_plus = make_inputs(2, 16, 8, torch.float32, torch.float32, seed=0, device="cpu")

    def call(**change):
        kw = dict(h=h, w1=w1, b1=b1, w2=w2, b2=b2, direction=u, r_plus=r_plus)
        kw.update(change)
        return ops.argre_refine(**kw)

    with pytest.raises(TypeError, match="^h:"):
        call(h=h.long())
    with pytest.raises(ValueError, match="^w1:"):
        call(w1=w1[:, :10])
    with pytest.raises(ValueError, match="^w2:"):
        call(w1=w1[:1], b1=b1[:1], w2=None, b2=None)  # a linear head is not an ARGRE reward
    with pytest.raises(ValueError, match="^direction:"):
        call(direction=u[:5])
    with pytest.raises(ValueError, match="^r_plus:"):
        call(r_plus=float("nan"))
    with pytest.raises(ValueError, match="^beta:"):
        call(beta=0.0)
    with pytest.raises(ValueError, match="^step_size:"):
        call(step_size=math.inf)
    with pytest.raises(ValueError, match="^n_steps:"):
        call(n_steps=-1)
    with pytest.raises(TypeError, match="^n_steps:"):
        call(n_steps=2.0)
    with pytest.raises(TypeError, match="^n_steps:"):
        call(n_steps=True)
    with pytest.raises(TypeError, match="^beta:"):
        call(beta=False)
    with pytest.raises(TypeError, match="^r_plus:"):
        call(r_plus=None)
    with pytest.raises(TypeError, match="^direction:"):
        call(direction=u.long())
    with pytest.raises(TypeError, match="^b2:"):
        call(b2=b2.long())
    want = call(n_steps=3, beta=2.0)
    for n, beta, rp in ((np.int64(3), np.float32(2.0), np.float64(r_plus)),
                        (torch.tensor(3), torch.tensor(2.0), torch.tensor(r_plus, dtype=torch.float64))):
        assert torch.equal(call(n_steps=n, beta=beta, r_plus=rp), want)
    assert torch.equal(call(n_steps=3, beta=2.0, check=False), want)
    assert call(h=h[:0]).shape == (0, 16)


@requires_cuda
@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("d,dtype", [(4096, torch.bfloat16), (4096, torch.float32), (576, torch.float32)])
def test_gpu_large(monkeypatch, backend, B, d, dtype):
    use_backend(monkeypatch, backend)
    args, r_plus = make_inputs(B, d, 1024, dtype, torch.float32, seed=B)
    out = ops.argre_refine(*args, r_plus, beta=1.0, n_steps=5, step_size=0.5)
    want = reference.argre_refine(*args, r_plus, beta=1.0, n_steps=5, step_size=0.5)
    # A pre-activation within rounding of 0 may take the other side of the ReLU under a
    # different summation order (~1e-6 odds each, 6 * B * 1024 of them): that row then
    # moves by one step of w2_i W1_i (~1e-4).  Allow it in a few rows only.
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else TOL[dtype]
    err = (out.float() - want.float()).abs()
    off_rows = (err > tol["atol"] + tol["rtol"] * want.float().abs()).any(dim=1)
    assert int(off_rows.sum()) <= max(1, B // 16)
    assert float(err.max()) < 1e-2
