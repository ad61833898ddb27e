"""First-use self-test of the fused backends.

The first time an op runs on a (device, dtype, backend) other than the reference, rgk runs
that backend once on a tiny fixed input (a few hundred elements, built from a fixed seed on
the CPU and copied over: about a millisecond on a GPU, plus a Triton compile of the tiny
shape the first time) and compares it with `rgk.ops.reference`:

- topk_logprobs: the same ids (the input holds a tie and a -inf; the rule is exact), logp
  within 1e-4 absolute (fp32 arithmetic on the same fp32 values);
- fork_attention: outputs within 1e-2 (fp32) / 4e-2 (half types) absolute + relative;
- reward_select (greedy): rewards and scores within 1e-2 (fp32) / 4e-2; the chosen index's
  reference score within that tolerance of the row's best;
- argre_refine: outputs within 1e-2 (fp32) / 4e-2 (half types) absolute + relative.

A mismatch, or an exception from the backend, disables that backend on that device for the
process (`rgk.ops._backend._DISABLED`), with one warning naming the op, backend, device,
dtype and the worst error; calls then route to the next backend (CUDA -> Triton ->
reference).  It never runs inside CUDA-graph capture or torch.compile tracing (it waits for
the next eager call) and RGK_SELFTEST=0 turns it off.  `rgk doctor` runs it for every op.
"""
from __future__ import annotations

import warnings

import torch

from . import _backend, reference

OPS = ("topk_logprobs", "fork_attention", "reward_select", "argre_refine")


def _tol(dtype) -> float:
    return 1e-2 if dtype in (None, torch.float32) else 4e-2


def _rand(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def _case(op: str, dtype):
    """(run(ops module) -> result, expected, compare(got, want) -> (ok, detail)) on the CPU."""
    g = torch.Generator().manual_seed(1234)
    dtype = dtype or torch.float32
    tol = _tol(dtype)
    if op == "topk_logprobs":
        x = _rand(g, 3, 67, scale=3.0)
        x[0, 5] = x[0, 9] = x[0].max() + 1.0        # a tie at the top: the lower index first
        x[1, 2] = -float("inf")
        x = x.to(dtype)
        args = (x, 5)

        def run(ops, a):
            return ops.topk_logprobs(*a)

        def compare(got, want):
            ids_ok = torch.equal(got[1].cpu(), want[1])
            err = float((got[0].cpu() - want[0]).abs().max())
            return ids_ok and err <= 1e-4, f"ids {'equal' if ids_ok else 'differ'}, max |dlogp| {err:.3g}"
        return args, run, lambda a: reference.topk_logprobs(*a), compare
    if op == "fork_attention":
        B, Hq, Hkv, K, D, L = 2, 4, 2, 3, 64, 21
        q, kn, vn = _rand(g, B, Hq, K, D), _rand(g, B, Hkv, K, D), _rand(g, B, Hkv, K, D)
        kc, vc = _rand(g, B, Hkv, L, D), _rand(g, B, Hkv, L, D)
        s, e = torch.tensor([0, 4], dtype=torch.int32), torch.tensor([17, 21], dtype=torch.int32)
        args = tuple(t.to(dtype) for t in (q, kc, vc, kn, vn)) + (s, e, D ** -0.5)

        def run(ops, a):
            return ops.fork_attention(*a)

        def compare(got, want):
            err = float(((got.float().cpu() - want.float()).abs() - tol * want.float().abs()).max())
            return err <= tol, f"max excess error {err:.3g} (tolerance {tol})"
        return args, run, lambda a: reference.fork_attention(*a), compare
    if op == "reward_select":
        B, K, d, m = 3, 4, 64, 16
        hidden = _rand(g, B, K, d).to(dtype)
        logp = -torch.rand(B, K, generator=g) * 3
        ids = torch.arange(B * K, dtype=torch.int64).view(B, K) * 7
        w1, b1, w2, b2 = _rand(g, m, d, scale=0.2), _rand(g, m, scale=0.1), _rand(g, 1, m, scale=0.3), _rand(g, 1)
        args = (hidden, logp, ids, w1, b1, w2, b2)

        def run(ops, a):
            return ops.reward_select(*a, reward_weight=1.5)

        def compare(got, want):
            tok, idx, score, rew = (t.cpu() for t in got)
            err = max(float((score - want[2]).abs().max()), float((rew - want[3]).abs().max()))
            best = want[2].max(dim=1).values
            chosen = want[2].gather(1, idx.view(-1, 1)).view(-1)
            ok_choice = bool((chosen >= best - tol).all()) and torch.equal(tok, ids.gather(1, idx.view(-1, 1)).view(-1))
            return err <= tol and ok_choice, f"max |dscore|, |dreward| {err:.3g}, choice {'ok' if ok_choice else 'wrong'}"
        return args, run, lambda a: reference.reward_select(*a, reward_weight=1.5), compare
    if op == "argre_refine":
        B, d, m = 3, 64, 16
        h = _rand(g, B, d).to(dtype)
        w1, b1, w2, b2 = _rand(g, m, d, scale=0.2), _rand(g, m, scale=0.1), _rand(g, 1, m, scale=0.3), _rand(g, 1)
        direction = _rand(g, d)
        direction = direction / direction.norm()
        args = (h, w1, b1, w2, b2, direction, 2.0)
        kw = dict(beta=1.0, n_steps=3, step_size=0.5)

        def run(ops, a):
            return ops.argre_refine(*a, **kw)

        def compare(got, want):
            err = float(((got.float().cpu() - want.float()).abs() - tol * want.float().abs()).max())
            return err <= tol, f"max excess error {err:.3g} (tolerance {tol})"
        return args, run, lambda a: reference.argre_refine(*a, **kw), compare
    raise ValueError(f"op: expected one of {', '.join(OPS)}, got {op!r}")


def run_case(op: str, backend: str, device: torch.device, dtype) -> tuple[bool, str]:
    """Run `op` on `backend` (forced) on the tiny case; (agrees, detail)."""
    import rgk.ops as ops
    args, run, ref, compare = _case(op, dtype)
    want = ref(args)
    moved = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    try:
        with _backend.forced(backend):
            got = run(ops, moved)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return compare(got, want)
    except Exception as e:  # a backend that raises on a valid input is as wrong as one that disagrees
        return False, f"raised {type(e).__name__}: {e}"


def check(op: str, backend: str, device: torch.device, dtype) -> bool:
    """The verdict for (op, backend, device, dtype), computed once; a failure disables the
    backend on the device, with one warning."""
    key = (op, backend, device, dtype)
    ok = _backend.SELFTEST_RESULTS.get(key)
    if ok is not None:
        return ok
    ok, detail = run_case(op, backend, device, dtype)
    _backend.SELFTEST_RESULTS[key] = ok
    DETAILS[key] = detail
    if not ok:
        _backend._DISABLED.add((backend, device))
        nxt = "Triton" if backend == "cuda" and _backend.triton_available() else "the PyTorch reference"
        warnings.warn(f"rgk self-test: {op} on the {backend} backend disagrees with the reference on {device} "
                      f"({str(dtype).replace('torch.', '')}): {detail}; the {backend} backend is disabled on "
                      f"{device} for this process, using {nxt} (RGK_SELFTEST=0 turns the check off; please "
                      f"report it with `rgk doctor`'s output)", stacklevel=4)
    return ok


DETAILS: dict = {}
