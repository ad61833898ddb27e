"""fork_attention: fused kernels (CUDA extension, Triton) against PyTorch SDPA, same run.

K = 10 candidates per row attend to a bf16 prefix of L tokens plus their own KV entry, for
B in {1, 8}, L in {512, 1024, 2048, 4096} and two head layouts: Llama-3-8B-like
(32 query / 8 kv heads, D = 128) and SmolLM2-135M (9 / 3, D = 64).
  cuda                 torch.ops.rgk.fork_attention(...)
  triton               rgk.kernels.fork_attention.fork_attention_triton(...)
  torch_expand_sdpa    the prefix copied K times (what ARGS' reference code does) + one SDPA
                       call over [B*K] rows of L + 1 keys (the copy is part of the timed work)
  torch_tree_sdpa      one SDPA call over [prefix ; K candidates] with a 4-D tree mask
                       (GQA via enable_gqa; the concatenated cache and the mask are built
                       outside the timed region, as if the cache already held the candidates)
  torch_tree_sdpa_mha  the same with the kv heads expanded to the query heads beforehand
Targets: >= 3x vs torch_expand_sdpa, >= 1.5x vs the faster tree-mask variant.  Each record
also carries `prefix_bytes` (the prefix K and V read once) and the device-to-device copy
bandwidth measured in this run, so the summary reports achieved GB/s against that floor.

    python -m pytest -q benchmarks/bench_fork_attention.py --benchmark-json=fork.json
"""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (HAVE_PYTEST_BENCHMARK, copies_for, cuda_op, quick_cases, requires_cuda, run_case,  # noqa: E402
                     triton_fn)

if not HAVE_PYTEST_BENCHMARK:
    from _timing import benchmark  # noqa: F401,E402

from rgk.ops import reference  # noqa: E402

pytestmark = requires_cuda
OP = "fork_attention"
K = 10
HEADS = [(32, 8, 128), (9, 3, 64)]
CASES = [(B, L, hq, hkv, d) for hq, hkv, d in HEADS for B in (1, 8) for L in (512, 1024, 2048, 4096)]


def case_id(c):
    return "B{}-L{}-h{}x{}-d{}".format(*c)


CASES = quick_cases(OP, CASES, case_id)  # RGK_BENCH_QUICK=1: the cases that decide the targets
IMPLS = [("cuda", "fused"), ("triton", "fused"), ("torch_expand_sdpa", "baseline"), ("torch_tree_sdpa", "baseline"),
         ("torch_tree_sdpa_mha", "baseline")]


@pytest.fixture(scope="module")
def copy_gbps():
    """Device-to-device copy bandwidth (read + write bytes per second) of this GPU."""
    n = 256 << 20
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(10):
        dst.copy_(src)
    b.record()
    torch.cuda.synchronize()
    return 2 * n * 10 / (a.elapsed_time(b) * 1e-3) / 1e9


def _inputs(B, L, Hq, Hkv, D, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16)

    return dict(q=rnd(B, Hq, K, D), k_cache=rnd(B, Hkv, L, D), v_cache=rnd(B, Hkv, L, D), k_new=rnd(B, Hkv, K, D),
                v_new=rnd(B, Hkv, K, D), cache_start=torch.zeros(B, dtype=torch.int32, device="cuda"),
                cache_end=torch.full((B,), L, dtype=torch.int32, device="cuda"))


def _expand_sdpa(t, scale, gqa):
    q, kc, vc, kn, vn = t["q"], t["k_cache"], t["v_cache"], t["k_new"], t["v_new"]
    B, Hq, _, D = q.shape
    Hkv, L = kc.shape[1], kc.shape[2]
    keys = torch.cat([kc[:, None].expand(B, K, Hkv, L, D), kn.transpose(1, 2)[:, :, :, None]], dim=3)
    vals = torch.cat([vc[:, None].expand(B, K, Hkv, L, D), vn.transpose(1, 2)[:, :, :, None]], dim=3)
    keys, vals = keys.reshape(B * K, Hkv, L + 1, D), vals.reshape(B * K, Hkv, L + 1, D)
    qq = q.transpose(1, 2).reshape(B * K, Hq, 1, D)
    if gqa:
        o = F.scaled_dot_product_attention(qq, keys, vals, scale=scale, enable_gqa=Hq != Hkv)
    else:
        keys, vals = keys.repeat_interleave(Hq // Hkv, dim=1), vals.repeat_interleave(Hq // Hkv, dim=1)
        o = F.scaled_dot_product_attention(qq, keys, vals, scale=scale)
    return o.reshape(B, K, Hq, D).transpose(1, 2)


def _tree(t, mha):
    """(keys, values, mask) of the single-SDPA formulation, built outside the timed region."""
    q, kc, vc, kn, vn = t["q"], t["k_cache"], t["v_cache"], t["k_new"], t["v_new"]
    B, Hq = q.shape[:2]
    Hkv, L = kc.shape[1], kc.shape[2]
    keys, vals = torch.cat([kc, kn], dim=2), torch.cat([vc, vn], dim=2)
    if mha:
        keys, vals = keys.repeat_interleave(Hq // Hkv, dim=1), vals.repeat_interleave(Hq // Hkv, dim=1)
    pos = torch.arange(L, device=q.device)
    pre = (pos[None] >= t["cache_start"][:, None].long()) & (pos[None] < t["cache_end"][:, None].long())
    own = torch.eye(K, dtype=torch.bool, device=q.device)
    mask = torch.cat([pre[:, None, :].expand(B, K, L), own[None].expand(B, K, K)], dim=-1)[:, None]
    return keys, vals, mask


@pytest.mark.parametrize("impl,role", IMPLS, ids=[i for i, _ in IMPLS])
@pytest.mark.parametrize("B,L,Hq,Hkv,D", CASES, ids=[case_id(c) for c in CASES])
def test_fork_attention(benchmark, copy_gbps, B, L, Hq, Hkv, D, impl, role):
    scale = 1.0 / math.sqrt(D)
    prefix_bytes = 2 * B * Hkv * L * D * 2
    n = copies_for(prefix_bytes, cap=8)
    ts = [_inputs(B, L, Hq, Hkv, D, seed=i + 17 * L + B) for i in range(n)]
    args = ("q", "k_cache", "v_cache", "k_new", "v_new", "cache_start", "cache_end")
    want = reference.fork_attention(*[ts[0][a] for a in args], scale).float()

    def make():
        if impl == "cuda":
            f = cuda_op(OP)
            return [lambda t=t: f(*[t[a] for a in args], scale) for t in ts]
        if impl == "triton":
            f = triton_fn(OP, "fork_attention_triton")
            return [lambda t=t: f(*[t[a] for a in args], scale) for t in ts]
        if impl == "torch_expand_sdpa":
            try:
                _expand_sdpa(ts[0], scale, gqa=True)
                gqa = True
            except (RuntimeError, TypeError):
                gqa = False
            return [lambda t=t: _expand_sdpa(t, scale, gqa) for t in ts]
        trees = [(t["q"], *_tree(t, mha=impl.endswith("_mha"))) for t in ts]
        gqa = (not impl.endswith("_mha")) and Hq != Hkv
        return [lambda z=z: F.scaled_dot_product_attention(z[0], z[1], z[2], attn_mask=z[3], scale=scale,
                                                           enable_gqa=gqa) for z in trees]

    def check(out):  # bf16 output: relative error, a few bf16 ulps
        err = float(((out.float() - want).abs() / (1 + want.abs())).max())
        return err <= 2e-2, err

    run_case(benchmark, op=OP, case=case_id((B, L, Hq, Hkv, D)), impl=impl, role=role, make=make, check=check,
             extra=dict(B=B, L=L, Hq=Hq, Hkv=Hkv, D=D, K=K, dtype="bfloat16", prefix_bytes=prefix_bytes,
                        copy_gbps=copy_gbps))
