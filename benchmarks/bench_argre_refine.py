"""argre_refine: fused kernels (CUDA extension, Triton) against the autograd loop
(rgk.ops.reference.argre_refine), same run.

ARGRE's reward MLP Linear(d, 1024) -> ReLU -> Linear(1024, 1) in fp32, hidden states bf16
[B, d] for d in {576, 2048, 4096}, B in {1, 64}; steering plus 5 gradient steps
(step 0.5, beta 1), r_plus set so that about half of the rows are steered.
  cuda            torch.ops.rgk.argre_refine(...)
  triton          rgk.kernels.argre_refine.argre_refine_triton(...)
  torch_autograd  rgk.ops.reference.argre_refine(...)   (what a Python editing loop runs)
Targets: fused >= 20x faster at B = 1 and >= 5x at B = 64, judged on eager (per-call) time,
since the baseline is a Python autograd loop (see _targets.py).  The weights stay the same
across calls (as during generation); only h rotates over copies.

    python -m pytest -q benchmarks/bench_argre_refine.py --benchmark-json=argre.json
"""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (HAVE_PYTEST_BENCHMARK, copies_for, cuda_op, quick_cases, requires_cuda, run_case,  # noqa: E402
                     triton_fn)

if not HAVE_PYTEST_BENCHMARK:
    from _timing import benchmark  # noqa: F401,E402

from rgk.ops import reference  # noqa: E402

pytestmark = requires_cuda
OP = "argre_refine"
M = 1024
STEPS, STEP, BETA = 5, 0.5, 1.0
CASES = [(B, d) for d in (576, 2048, 4096) for B in (1, 64)]


def case_id(c):
    return "B{}-d{}".format(*c)


CASES = quick_cases(OP, CASES, case_id)  # RGK_BENCH_QUICK=1: the cases that decide the target
IMPLS = [("cuda", "fused"), ("triton", "fused"), ("torch_autograd", "baseline")]


def _inputs(B, d, n):
    g = torch.Generator(device="cuda").manual_seed(B * 131 + d)
    w1 = torch.randn(M, d, device="cuda", generator=g) / math.sqrt(d)
    b1 = torch.randn(M, device="cuda", generator=g) * 0.1
    w2 = torch.randn(1, M, device="cuda", generator=g) / math.sqrt(M)
    b2 = torch.randn(1, device="cuda", generator=g)
    direction = torch.randn(d, device="cuda", generator=g) * 0.1
    hs = [torch.randn(B, d, device="cuda", generator=g).to(torch.bfloat16) for _ in range(n)]
    theta = reference.argre_reward(hs[0].float(), w1, b1, w2, b2)
    r_plus = float(theta.median()) + (1.0 if B == 1 else 0.0)
    return hs, (w1, b1, w2, b2, direction), r_plus


@pytest.mark.parametrize("impl,role", IMPLS, ids=[i for i, _ in IMPLS])
@pytest.mark.parametrize("B,d", CASES, ids=[case_id(c) for c in CASES])
def test_argre_refine(benchmark, B, d, impl, role):
    hs, head, r_plus = _inputs(B, d, copies_for(B * d * 2, cap=8))
    kw = dict(beta=BETA, n_steps=STEPS, step_size=STEP)
    want = reference.argre_refine(hs[0], *head, r_plus, **kw).float()

    def make():
        if impl == "cuda":
            f = cuda_op(OP)
            return [lambda h=h: f(h, *head, r_plus, BETA, STEPS, STEP) for h in hs]
        if impl == "triton":
            f = triton_fn(OP, "argre_refine_triton")
            return [lambda h=h: f(h, *head, r_plus, **kw) for h in hs]
        return [lambda h=h: reference.argre_refine(h, *head, r_plus, **kw) for h in hs]

    def check(out):  # bf16 output: relative error, a few bf16 ulps
        err = float(((out.float() - want).abs() / (1 + want.abs())).max())
        return err <= 2e-2, err

    run_case(benchmark, op=OP, case=case_id((B, d)), impl=impl, role=role, make=make, check=check,
             graph=impl != "torch_autograd", extra=dict(B=B, d=d, m=M, n_steps=STEPS, dtype="bfloat16"))
