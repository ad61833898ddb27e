"""reward_select: fused kernels (CUDA extension, Triton) against the PyTorch composition
(rgk.ops.reference.reward_select: head, score, greedy argmax / inverse-CDF sampling), same run.

K = 10 candidates, hidden states bf16 [B, K, d], head weights fp32 (as RewardHead keeps them):
linear heads for d in {576, 2048, 4096} (SmolLM2-135M, 1.7B, Llama-8B widths), an MLP head
(1024 hidden units, d = 2048), B in {1, 8, 64}; one sampled case (temperature 0.7).
  cuda             torch.ops.rgk.reward_select(...)
  triton           rgk.kernels.reward_select.reward_select_triton(...)
  torch_reference  rgk.ops.reference.reward_select(...)
Target: fused >= 3x faster (see _targets.py).

    python -m pytest -q benchmarks/bench_reward_select.py --benchmark-json=reward.json
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
OP = "reward_select"
K = 10
CASES = ([("linear", B, d, 0, 0.0) for d in (576, 2048, 4096) for B in (1, 8, 64)]
         + [("mlp", B, 2048, 1024, 0.0) for B in (1, 8, 64)] + [("linear", 8, 2048, 0, 0.7)])
IMPLS = [("cuda", "fused"), ("triton", "fused"), ("torch_reference", "baseline")]


def case_id(c):
    head, B, d, m, t = c
    return f"{head}{m or ''}-B{B}-d{d}" + (f"-t{t}" if t else "")


CASES = quick_cases(OP, CASES, case_id)  # RGK_BENCH_QUICK=1: the cases that decide the target


def _inputs(B, d, m, temperature, n):
    g = torch.Generator(device="cuda").manual_seed(B * 31 + d + m)
    if m == 0:
        head = [torch.randn(1, d, device="cuda", generator=g) / math.sqrt(d), torch.randn(1, device="cuda", generator=g),
                None, None]
    else:
        head = [torch.randn(m, d, device="cuda", generator=g) / math.sqrt(d), torch.randn(m, device="cuda", generator=g),
                torch.randn(1, m, device="cuda", generator=g) / math.sqrt(m), torch.randn(1, device="cuda", generator=g)]
    rows = []
    for _ in range(n):
        hidden = torch.randn(B, K, d, device="cuda", generator=g).to(torch.bfloat16)
        logp = torch.log_softmax(torch.randn(B, 4 * K, device="cuda", generator=g) * 2, -1).topk(K, -1).values
        ids = torch.randint(0, 50000, (B, K), device="cuda", generator=g)
        u = torch.rand(B, device="cuda", generator=g) if temperature > 0 else None
        rows.append((hidden, logp, ids, u))
    return head, rows


@pytest.mark.parametrize("impl,role", IMPLS, ids=[i for i, _ in IMPLS])
@pytest.mark.parametrize("head_kind,B,d,m,temperature", CASES, ids=[case_id(c) for c in CASES])
def test_reward_select(benchmark, head_kind, B, d, m, temperature, impl, role):
    head, rows = _inputs(B, d, m, temperature, copies_for(B * K * d * 2))
    kw = dict(reward_weight=1.5, temperature=temperature)
    hidden, logp, ids, u = rows[0]
    want = reference.reward_select(hidden, logp, ids, *head, uniform=u, **kw)

    def make():
        if impl == "cuda":
            f = cuda_op(OP)
            return [lambda r=r: f(r[0], r[1], r[2], *head, kw["reward_weight"], temperature, r[3]) for r in rows]
        if impl == "triton":
            f = triton_fn(OP, "reward_select_triton")
            return [lambda r=r: f(r[0], r[1], r[2], *head, uniform=r[3], **kw) for r in rows]
        return [lambda r=r: reference.reward_select(r[0], r[1], r[2], *head, uniform=r[3], **kw) for r in rows]

    def check(out):
        token, index, score, reward = out
        err = float((score - want[2]).abs().max())
        mismatches = int((index != want[1]).sum())
        return err <= 1e-3 and mismatches <= max(1, B // 20) and torch.equal(token, ids.gather(1, index[:, None])[:, 0]), err

    run_case(benchmark, op=OP, case=case_id((head_kind, B, d, m, temperature)), impl=impl, role=role, make=make,
             check=check, extra=dict(B=B, K=K, d=d, m=m, head=head_kind, temperature=temperature,
                                     dtype="bfloat16"))
