"""fork_attention: public op (default backend), Triton kernel (interpreter on CPU, GPU when
present) and CUDA extension (GPU only) against the reference; the reference against a
masked scaled_dot_product_attention over the expanded caches."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, INTERPRETED, requires_cuda, use_backend

from rgk import ops
from rgk.ops import reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-2, atol=2e-2),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def make_inputs(B, Hq, Hkv, K, D, L, dtype, span, seed, device=DEVICE):
    """q as a transposed view, caches as a window of a larger buffer (strided, unit last stride)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    q = rnd(B, K, Hq, D).transpose(1, 2)  # [B, Hq, K, D], non-contiguous
    k_cache = rnd(B, Hkv + 1, L + 7, D)[:, 1:, 3:L + 3]
    v_cache = rnd(B, Hkv + 1, L + 7, D)[:, 1:, 3:L + 3]
    k_new, v_new = rnd(B, Hkv, K, D), rnd(B, Hkv, K, D)
    if span == "full":
        start = torch.zeros(B, dtype=torch.int64)
        end = torch.full((B,), L, dtype=torch.int64)
    else:  # left padding differing per row, one row with an empty prefix, one ending early
        start = torch.randint(0, L // 2, (B,), generator=g)
        end = torch.full((B,), L, dtype=torch.int64)
        start[0] = end[0] = L // 3
        if B > 2:
            end[2] = start[2] + 1 + L // 4
        start, end = start.int(), end.int()
    return q, k_cache, v_cache, k_new, v_new, start.to(device), end.to(device)


def sdpa_fork(q, k_cache, v_cache, k_new, v_new, start, end, scale):
    """Independent oracle: every candidate attends to [prefix ; all K new entries] with a mask."""
    B, Hq, K, D = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    g = Hq // Hkv
    keys = torch.cat([k_cache.float(), k_new.float()], dim=2).repeat_interleave(g, dim=1)
    vals = torch.cat([v_cache.float(), v_new.float()], dim=2).repeat_interleave(g, dim=1)
    pos = torch.arange(L, device=q.device)
    pre = (pos[None, :] >= start[:, None].long()) & (pos[None, :] < end[:, None].long())
    own = torch.eye(K, dtype=torch.bool, device=q.device)
    mask = torch.cat([pre[:, None, :].expand(B, K, L), own[None].expand(B, K, K)], dim=-1)[:, None]
    return F.scaled_dot_product_attention(q.float(), keys, vals, attn_mask=mask, scale=scale)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("Hq,Hkv,span", [(4, 4, "full"), (6, 2, "padded"), (8, 2, "padded")])
def test_reference_is_masked_sdpa(seed, Hq, Hkv, span):
    args = make_inputs(3, Hq, Hkv, 5, 32, 40, torch.float32, span, seed, device="cpu")
    scale = 0.3
    torch.testing.assert_close(reference.fork_attention(*args, scale), sdpa_fork(*args, scale), rtol=1e-5, atol=1e-5)


CASES = [
    # B, Hq, Hkv, K, D, L, dtype, span
    (2, 4, 4, 3, 64, 50, torch.float32, "full"),       # GQA ratio 1
    (3, 6, 2, 10, 64, 70, torch.float16, "padded"),    # ratio 3, empty prefix row
    (3, 8, 2, 5, 128, 90, torch.float32, "padded"),    # ratio 4
    (2, 4, 1, 1, 32, 33, torch.float32, "padded"),     # K = 1
    (1, 2, 2, 64, 16, 40, torch.float16, "full"),      # K = 64, 2 query blocks
    (3, 8, 2, 10, 64, 64, torch.bfloat16, "padded"),
    (2, 4, 2, 3, 8, 20, torch.float32, "full"),        # D < 16 (padded on chip)
]


@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("B,Hq,Hkv,K,D,L,dtype,span", CASES,
                         ids=[f"b{c[0]}-h{c[1]}x{c[2]}-k{c[3]}-d{c[4]}-l{c[5]}-{str(c[6])[6:]}-{c[7]}" for c in CASES])
def test_matches_reference(monkeypatch, backend, seed, B, Hq, Hkv, K, D, L, dtype, span):
    use_backend(monkeypatch, backend, dtype)
    args = make_inputs(B, Hq, Hkv, K, D, L, dtype, span, seed=seed * 100 + L)
    scale = 1.0 / math.sqrt(D) if seed == 0 else 0.7
    out = ops.fork_attention(*args, scale=scale)
    assert out.shape == (B, Hq, K, D) and out.dtype == dtype
    want = reference.fork_attention(*[a.cpu() for a in args], scale)
    torch.testing.assert_close(out.cpu().float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("split", [2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_split_prefix(split, dtype):
    """The flash-decoding path (ticket + last-arriver merge) on forced splits."""
    if INTERPRETED and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1")
    if INTERPRETED and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 tl.dot wrongly; bf16 is checked on GPU")
    from rgk.kernels.fork_attention import fork_attention_triton

    args = make_inputs(4, 6, 2, 7, 64, 150, dtype, "padded", seed=split)
    want = reference.fork_attention(*[a.cpu() for a in args], 0.125)
    for _ in range(2):  # the kernel leaves its counters at zero: a second launch is right too
        out = fork_attention_triton(*args, 0.125, split=split)
        torch.testing.assert_close(out.cpu().float(), want.float(), **TOL[dtype])


def test_rejects_bad_inputs():
    args = list(make_inputs(2, 4, 2, 3, 16, 10, torch.float32, "full", seed=0, device="cpu"))

    def call(**change):
        names = ["q", "k_cache", "v_cache", "k_new", "v_new", "cache_start", "cache_end"]
        kw = dict(zip(names, args))
        kw.update(change)
        return ops.fork_attention(**kw)

    with pytest.raises(TypeError, match="^q:"):
        call(q=args[0].int())
    with pytest.raises(ValueError, match="^q:"):
        call(q=torch.zeros(2, 3, 3, 16))  # 3 query heads over 2 kv heads
    with pytest.raises(TypeError, match="^k_cache:"):
        call(k_cache=args[1].half())
    with pytest.raises(ValueError, match="^v_cache:"):
        call(v_cache=args[2][:, :, :5])
    with pytest.raises(ValueError, match="^k_new:"):
        call(k_new=torch.zeros(2, 2, 4, 16))
    with pytest.raises(TypeError, match="^cache_start:"):
        call(cache_start=torch.zeros(2))
    with pytest.raises(TypeError, match="^cache_end:"):
        call(cache_end=torch.zeros(2, dtype=torch.int16))
    with pytest.raises(ValueError, match="^cache_end:"):
        call(cache_end=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="^scale:"):
        call(scale=True)
    with pytest.raises(ValueError, match="^scale:"):
        call(scale=math.nan)
    for scale in (np.float32(0.25), torch.tensor(0.25), 0.25):
        torch.testing.assert_close(call(scale=scale), call(scale=0.25), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_rejects_bad_bounds(monkeypatch, dtype):
    """0 <= cache_start[b] <= cache_end[b] <= L, checked on the host when check=True;
    skipped with check=False and during CUDA-graph capture."""
    args = list(make_inputs(3, 4, 2, 3, 16, 10, torch.float32, "full", seed=0, device="cpu"))

    def call(start, end, **kw):
        return ops.fork_attention(*args[:5], torch.tensor(start, dtype=dtype), torch.tensor(end, dtype=dtype), **kw)

    call([0, 3, 10], [0, 7, 10])  # empty, partial and full prefixes are fine
    with pytest.raises(ValueError, match=r"^cache_start: .*cache_start\[1\] = 5 > cache_end\[1\] = 4"):
        call([0, 5, 0], [10, 4, 10])
    with pytest.raises(ValueError, match=r"^cache_end: .*cache_end\[2\] = 11"):
        call([0, 0, 0], [10, 10, 11])
    with pytest.raises(ValueError, match=r"^cache_start: .*cache_start\[0\] = -1"):
        call([-1, 0, 0], [10, 10, 10])
    call([0, 5, 0], [10, 4, 11], check=False)  # the caller vouches: no host read
    monkeypatch.setattr(ops, "_capturing", lambda t: True)  # as inside a CUDA-graph capture
    call([0, 5, 0], [10, 4, 11])


@pytest.mark.parametrize("backend", ["default", "triton"])
def test_edge_shapes(monkeypatch, backend):
    """L = 0 (self entry only), K = 0 and B = 0 (empty outputs, no launch), D > 256 (runs
    the reference), check=False equal to check=True."""
    use_backend(monkeypatch, backend)
    args = make_inputs(2, 4, 2, 3, 16, 0, torch.float32, "full", seed=1)
    out = ops.fork_attention(*args, scale=0.3)
    torch.testing.assert_close(out.cpu(), args[4].cpu().repeat_interleave(2, dim=1), rtol=1e-6, atol=1e-6)
    args = make_inputs(2, 4, 2, 3, 16, 12, torch.float32, "padded", seed=2)
    torch.testing.assert_close(ops.fork_attention(*args, check=False), ops.fork_attention(*args), rtol=0, atol=0)
    k0 = make_inputs(2, 4, 2, 0, 16, 12, torch.float32, "full", seed=3)
    assert ops.fork_attention(*k0).shape == (2, 4, 0, 16)
    b0 = make_inputs(0, 4, 2, 3, 16, 12, torch.float32, "full", seed=3)
    assert ops.fork_attention(*b0).shape == (0, 4, 3, 16)
    big = make_inputs(1, 2, 1, 2, 272, 5, torch.float32, "full", seed=4)
    torch.testing.assert_close(ops.fork_attention(*big), reference.fork_attention(*[a.cpu() for a in big]).to(DEVICE))


@requires_cuda
@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("Hq,Hkv,K,D,dtype", [(32, 8, 10, 128, torch.bfloat16), (32, 8, 10, 128, torch.float16),
                                              (16, 4, 64, 64, torch.bfloat16), (8, 8, 4, 128, torch.float32)])
def test_gpu_long_prefix(monkeypatch, backend, B, Hq, Hkv, K, D, dtype):
    use_backend(monkeypatch, backend, dtype)
    args = make_inputs(B, Hq, Hkv, K, D, 4096, dtype, "padded" if B > 2 else "full", seed=B)
    out = ops.fork_attention(*args, scale=1.0 / math.sqrt(D))
    want = reference.fork_attention(*args, 1.0 / math.sqrt(D))
    torch.testing.assert_close(out.float(), want.float(), **TOL[dtype])
