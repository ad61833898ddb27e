"""topk_logprobs: fused kernels (CUDA extension, Triton) against plain PyTorch, same run.

Inputs: bf16 logits [B, V] ~ N(0, 3^2), k = 10 (ARGS' default) and k = 64.
  cuda                    torch.ops.rgk.topk_logprobs(x, k)
  triton                  rgk.kernels.topk_logprobs.topk_logprobs_triton(x, k)
  torch_log_softmax_topk  torch.topk(torch.log_softmax(x, -1), k)         (bf16 throughout)
  torch_topk_logsumexp    torch.topk(x, k) and x.float().logsumexp(-1)    (fp32 log-sum-exp)
Target: fused >= 4x faster than the faster of the two PyTorch compositions (see _targets.py).
Timing: benchmarks/_timing.py (CUDA events, eager and CUDA-graph replay).

    python -m pytest -q benchmarks/bench_topk_logprobs.py --benchmark-json=topk.json
"""
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
OP = "topk_logprobs"
CASES = [(B, V, 10) for B in (1, 8, 64) for V in (32000, 128256, 262144)] + [(1, 128256, 64), (64, 128256, 64)]


def case_id(c):
    return "B{}-V{}-k{}".format(*c)


CASES = quick_cases(OP, CASES, case_id)  # RGK_BENCH_QUICK=1: the cases that decide the target
IMPLS = [("cuda", "fused"), ("triton", "fused"), ("torch_log_softmax_topk", "baseline"),
         ("torch_topk_logsumexp", "baseline")]


def _topk_logsumexp(x, k):
    vals, ids = torch.topk(x, k, dim=-1)
    return vals.float() - torch.logsumexp(x.float(), dim=-1, keepdim=True), ids


def _inputs(B, V):
    g = torch.Generator(device="cuda").manual_seed(B * 1009 + V)
    n = copies_for(B * V * 2)
    return [(torch.randn(B, V, device="cuda", generator=g) * 3).to(torch.bfloat16) for _ in range(n)]


@pytest.mark.parametrize("impl,role", IMPLS, ids=[i for i, _ in IMPLS])
@pytest.mark.parametrize("B,V,k", CASES, ids=[case_id(c) for c in CASES])
def test_topk_logprobs(benchmark, B, V, k, impl, role):
    xs = _inputs(B, V)
    want_logp, _ = reference.topk_logprobs(xs[0], k)
    want_vals = torch.topk(xs[0].float(), k, dim=-1).values

    def make():
        if impl == "cuda":
            f = cuda_op(OP)
            return [lambda x=x: f(x, k) for x in xs]
        if impl == "triton":
            f = triton_fn(OP, "topk_logprobs_triton")
            return [lambda x=x: f(x, k) for x in xs]
        if impl == "torch_log_softmax_topk":
            return [lambda x=x: torch.topk(torch.log_softmax(x, dim=-1), k, dim=-1) for x in xs]
        return [lambda x=x: _topk_logsumexp(x, k) for x in xs]

    def check(out):
        logp, ids = out
        err = float((logp - want_logp).abs().max())
        same_values = torch.equal(xs[0].float().gather(1, ids), want_vals)
        return err <= 1e-4 and same_values, err

    run_case(benchmark, op=OP, case=case_id((B, V, k)), impl=impl, role=role, make=make,
             check=check if role == "fused" else None, extra=dict(B=B, V=V, k=k, dtype="bfloat16"))
