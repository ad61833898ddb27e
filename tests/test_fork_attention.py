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


def bounded_inputs(B, Hq, Hkv, K, D, L, dtype, seed, garbage=True):
    """Inputs whose rows end at different places (one empty, one self-only at the bound),
    with the bound max(end) + slack, and the cache beyond the bound filled with NaN / +-inf
    (what a bounded call must never read)."""
    q, kc, vc, kn, vn, _, _ = make_inputs(B, Hq, Hkv, K, D, L, dtype, "full", seed)
    g = torch.Generator().manual_seed(seed + 7)
    end = torch.randint(0, L + 1, (B,), generator=g)
    start = (torch.rand(B, generator=g) * (end + 1)).long().clamp(max=end)
    start[0] = end[0]                           # an empty prefix: the self entry only
    bound = min(L, max(1, int(end.max()) + int(torch.randint(0, 3, (1,), generator=g))))  # 0 would mean L
    if garbage and bound < L:
        kc, vc = kc.clone(), vc.clone()
        kc[:, :, bound:] = math.nan
        vc[:, :, bound:] = math.inf
        vc[:, :, bound::2] = -math.inf
    return (q, kc, vc, kn, vn, start.int().to(DEVICE), end.to(DEVICE)), bound


BOUND_CASES = [
    # B, Hq, Hkv, K, D, L, dtype
    (3, 6, 2, 5, 24, 37, torch.float32),     # odd sizes, GQA 3
    (4, 4, 4, 1, 64, 64, torch.float32),     # K = 1
    (2, 8, 2, 7, 16, 50, torch.float16),
    (1, 3, 1, 3, 8, 9, torch.float32),       # D < 16
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("B,Hq,Hkv,K,D,L,dtype", [c[:7] for c in CASES] + BOUND_CASES +
                         [(2, 4, 2, 3, 16, 0, torch.float32), (1, 2, 1, 2, 272, 5, torch.float32)])
def test_fallback_forms_equal_the_reference(seed, B, Hq, Hkv, K, D, L, dtype):
    """The two forms the reference backend runs (one fused SDPA call eagerly, the explicit
    softmax under torch.compile) equal `reference.fork_attention` on the bounded span."""
    args, bound = bounded_inputs(B, Hq, Hkv, K, D, L, dtype, seed + 11, garbage=False) if L else \
        (make_inputs(B, Hq, Hkv, K, D, L, dtype, "full", seed, device="cpu"), 0)
    args = [a.cpu() for a in args]
    want = reference.fork_attention(*args, 0.4)
    for n in {bound, L}:
        for form in (reference.fork_attention_tree_sdpa, reference.fork_attention_prefix):
            out = form(*args, 0.4, n)
            assert out.dtype == dtype and out.shape == want.shape
            torch.testing.assert_close(out.float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("backend", ["default", "triton", "cuda"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("B,Hq,Hkv,K,D,L,dtype", BOUND_CASES,
                         ids=[f"b{c[0]}-h{c[1]}x{c[2]}-k{c[3]}-d{c[4]}-l{c[5]}-{str(c[6])[6:]}" for c in BOUND_CASES])
def test_valid_len_bound_changes_nothing(monkeypatch, backend, seed, B, Hq, Hkv, K, D, L, dtype):
    """max_valid_len = a bound of every row's end gives the unbounded result, and the
    cache beyond the bound is not read: NaN / inf there do not reach the output."""
    use_backend(monkeypatch, backend, dtype)
    args, bound = bounded_inputs(B, Hq, Hkv, K, D, L, dtype, seed)
    clean, _ = bounded_inputs(B, Hq, Hkv, K, D, L, dtype, seed, garbage=False)
    want = reference.fork_attention(*[a.cpu() for a in clean], 0.4)
    for check in (True, False):
        out = ops.fork_attention(*args, 0.4, max_valid_len=bound, check=check)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.cpu().float(), want.float(), **TOL[dtype])
    # None, 0 and L all mean the capacity; the clean inputs give the same result unbounded
    for mvl in (None, 0, L):
        out = ops.fork_attention(*clean, 0.4, max_valid_len=mvl)
        torch.testing.assert_close(out.cpu().float(), want.float(), **TOL[dtype])
    torch.testing.assert_close(reference.fork_attention(*[a.cpu() for a in args], 0.4, max_valid_len=bound),
                               want, **TOL[dtype])


@pytest.mark.parametrize("backend", ["default", "triton"])
def test_rejects_bad_valid_len(monkeypatch, backend):
    """max_valid_len outside [0, L] or not an int is refused; a bound below some row's end
    is refused wherever it can be read without a device sync (check=True, or CPU tensors)."""
    use_backend(monkeypatch, backend)
    args = make_inputs(3, 4, 2, 3, 16, 10, torch.float32, "full", seed=0, device="cpu")
    start, end = torch.tensor([0, 2, 1]), torch.tensor([4, 7, 1])
    call = lambda mvl, **kw: ops.fork_attention(*args[:5], start, end, 0.3, max_valid_len=mvl, **kw)  # noqa: E731
    for check in (True, False):
        for mvl in (-1, 11):
            with pytest.raises(ValueError, match=r"^max_valid_len: .*\[0, 10\]"):
                call(mvl, check=check)
        for mvl in (True, 2.5, torch.tensor([7]), "7"):
            with pytest.raises(TypeError, match="^max_valid_len:"):
                call(mvl, check=check)
        with pytest.raises(ValueError, match=r"^max_valid_len: .* 6 < cache_end\[1\] = 7"):
            call(6, check=check)
        with pytest.raises(ValueError, match="^max_valid_len:"):
            reference.fork_attention(*args[:5], start, end, 0.3, max_valid_len=6)
    full = call(None)
    for mvl in (7, np.int64(7), torch.tensor(8), 10, 0):
        torch.testing.assert_close(call(mvl), full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["default", "triton"])
def test_unverifiable_valid_len_is_only_a_hint(monkeypatch, backend):
    """Where the promise cannot be read without a device sync (device tensors with
    check=False, as simulated here), a bound below some row's end must not cut keys."""
    use_backend(monkeypatch, backend)
    monkeypatch.setattr(reference, "verify_valid_len", lambda cache_end, n: False)
    args = make_inputs(3, 4, 2, 3, 16, 10, torch.float32, "padded", seed=4)
    want = reference.fork_attention(*[a.cpu() for a in args], 0.3)
    out = ops.fork_attention(*args, 0.3, max_valid_len=2, check=False)
    torch.testing.assert_close(out.cpu(), want, **TOL[torch.float32])


def test_triton_split_count_follows_the_bound(monkeypatch):
    """The Triton grid is sized from the bound (power-of-two splits of >= 4 BLOCK_N keys, at
    most what the GPU wants), and split launches stay exact whatever the bound says."""
    from rgk.kernels import fork_attention as FA

    assert [FA.split_count(32, span, 16) for span in (0, 63, 64, 127, 128, 300, 1000, 5000)] == \
        [1, 1, 1, 1, 2, 4, 8, 32]
    assert FA.split_count(6, 10**6, 64) == 6 and FA.split_count(6, 1024, 64) == 4
    if INTERPRETED and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1")
    real_plan, seen = FA._plan, []
    monkeypatch.setattr(FA, "_plan", lambda *a: real_plan(*a)[:-1] + (8,))   # as a GPU that wants 8
    monkeypatch.setattr(FA, "_PLANS", {})
    real_count = FA.split_count
    monkeypatch.setattr(FA, "split_count", lambda *a: seen.append(real_count(*a)) or seen[-1])
    args, bound = bounded_inputs(3, 4, 2, 3, 16, 300, torch.float32, seed=5, garbage=False)
    want = reference.fork_attention(*[a.cpu() for a in args], 0.3)
    for mvl in (None, 200, 40):   # 40 may be below some row's end: the grid shrinks, nothing is cut
        out = FA.fork_attention_triton(*args, 0.3, max_valid_len=mvl)
        torch.testing.assert_close(out.cpu(), want, **TOL[torch.float32])
    BLOCK_N = real_plan(3, 4, 2, 3, 16, 300, torch.float32, torch.device("cpu"))[1]
    assert seen == [real_count(8, n, BLOCK_N) for n in (300, 200, 40)] and seen[0] > seen[-1] == 1


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
    # a short prompt in the long cache: the bound sizes the split count, the result is the same
    start, end = args[5].clone(), args[6].clone()
    end.copy_(torch.minimum(start + 100, end))
    short = (*args[:5], start, end)
    want = reference.fork_attention(*short, 1.0 / math.sqrt(D))
    for mvl, check in ((int(end.max()), True), (int(end.max()), False), (7, False)):  # 7: an unchecked bad bound
        out = ops.fork_attention(*short, scale=1.0 / math.sqrt(D), max_valid_len=mvl, check=check)
        torch.testing.assert_close(out.float(), want.float(), **TOL[dtype])
