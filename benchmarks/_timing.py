"""GPU timing and result records shared by the kernel benchmark suites (bench_<op>.py).

How a variant is timed (`measure`):
- eager: CUDA events around `inner` back-to-back Python calls, divided by `inner`, repeated
  `reps` times: the per-call cost of calling the op from a Python loop (launch and
  dispatch overhead included; the GPU is kept busy, so no host sync is counted);
- graph: the same `inner` calls captured once in a CUDA graph and replayed between events:
  device time only (no Python, no launch overhead), as in a captured decode step.
Each sample is one rep; the record keeps median, 20th and 80th percentiles in milliseconds.
Calls rotate over several copies of the inputs (`copies`), so a working set smaller than
the L2 cache is not simply re-read from L2 at every call.

pytest-benchmark is used when installed: each test calls `benchmark.pedantic` on a
synchronising wrapper (host wall time, kept in its JSON for reference) and stores the GPU
numbers above in `benchmark.extra_info`.  Without the plugin, a stand-in `benchmark` fixture
keeps the same fields.  Either way every record is also appended, as one JSON line, to
$RGK_BENCH_RECORDS (default benchmarks/results/records.jsonl), which survives a suite that is
killed half way; `_targets.py` reads both formats.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time

import pytest
import torch

try:
    import pytest_benchmark  # noqa: F401
    HAVE_PYTEST_BENCHMARK = True
except ImportError:
    HAVE_PYTEST_BENCHMARK = False

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="kernel benchmarks need a CUDA device")


def quick() -> bool:
    """RGK_BENCH_QUICK=1 (set by `gpu_check.sh --quick`): run only the cases that decide each
    target (_targets.QUICK_CASES) and fewer rounds of the end-to-end benchmarks."""
    return os.environ.get("RGK_BENCH_QUICK") == "1"


def quick_cases(op: str, cases: list, case_id) -> list:
    """`cases`, or in quick mode those whose case_id(case) is in _targets.QUICK_CASES[op]."""
    if not quick():
        return cases
    from _targets import QUICK_CASES
    want = QUICK_CASES[op]
    picked = [c for c in cases if case_id(c) in want]
    missing = sorted(set(want) - {case_id(c) for c in picked})
    if missing:
        raise RuntimeError(f"_targets.QUICK_CASES[{op!r}] names cases this suite does not have: {missing}")
    return picked


def records_path() -> str:
    return os.environ.get("RGK_BENCH_RECORDS") or os.path.join(HERE, "results", "records.jsonl")


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def _summary(samples):
    return {"median_ms": statistics.median(samples), "p20_ms": _pct(samples, 0.2), "p80_ms": _pct(samples, 0.8),
            "n": len(samples)}


def _event_pair():
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def measure(fns, *, reps: int = 15, target_ms: float = 2.0, max_inner: int = 200, graph: bool = True) -> dict:
    """Time zero-argument callables `fns` (one per input copy, used in turn).

    Returns {"eager": {...}, "graph": {...} or None, "graph_error": str or None, "inner": n}."""
    fns = list(fns)
    torch.cuda.synchronize()
    for f in fns[:3] + fns[:1]:  # warm-up: compilation, autotuning, allocator
        f()
    torch.cuda.synchronize()
    t0, t1 = _event_pair()
    t0.record()
    for f in fns[:4]:
        f()
    t1.record()
    torch.cuda.synchronize()
    one = max(t0.elapsed_time(t1) / min(4, len(fns)), 1e-3)
    inner = max(1, min(max_inner, int(target_ms / one)))

    samples = []
    for _ in range(reps):
        a, b = _event_pair()
        a.record()
        for i in range(inner):
            fns[i % len(fns)]()
        b.record()
        torch.cuda.synchronize()
        samples.append(a.elapsed_time(b) / inner)
    out = {"eager": _summary(samples), "graph": None, "graph_error": None, "inner": inner}

    if graph:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for f in fns[:2]:
                    f()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for i in range(inner):
                    fns[i % len(fns)]()
            g.replay()
            torch.cuda.synchronize()
            gs = []
            for _ in range(reps):
                a, b = _event_pair()
                a.record()
                g.replay()
                b.record()
                torch.cuda.synchronize()
                gs.append(a.elapsed_time(b) / inner)
            out["graph"] = _summary(gs)
            del g
        except Exception as e:  # capture is not possible for every baseline: keep eager only
            torch.cuda.synchronize()
            out["graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return out


def copies_for(bytes_per_call: int, budget_bytes: int = 128 << 20, cap: int = 32) -> int:
    """How many input copies make consecutive calls touch more memory than the L2 cache."""
    if bytes_per_call <= 0:
        return 1
    return int(max(1, min(cap, math.ceil(budget_bytes / bytes_per_call))))


def env_info() -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if CUDA:
        info["device"] = torch.cuda.get_device_name()
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def record(benchmark, *, op: str, case: str, impl: str, role: str, timing: dict | None, sync_fn=None,
           error: str | None = None, **extra) -> dict:
    """Store one measurement in benchmark.extra_info and in the JSONL records file."""
    rec = {"op": op, "case": case, "impl": impl, "role": role, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           **env_info(), **extra}
    if timing is not None:
        rec["eager_ms"] = timing["eager"]["median_ms"]
        rec["eager_p20_ms"] = timing["eager"]["p20_ms"]
        rec["eager_p80_ms"] = timing["eager"]["p80_ms"]
        rec["graph_ms"] = timing["graph"]["median_ms"] if timing["graph"] else None
        rec["graph_p20_ms"] = timing["graph"]["p20_ms"] if timing["graph"] else None
        rec["graph_p80_ms"] = timing["graph"]["p80_ms"] if timing["graph"] else None
        rec["graph_error"] = timing["graph_error"]
        rec["inner"] = timing["inner"]
    if error:
        rec["error"] = error
    benchmark.extra_info.update(rec)
    path = records_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if sync_fn is not None:
        def run():
            sync_fn()
            torch.cuda.synchronize()
        benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    return rec


class _StandIn:
    """The subset of pytest-benchmark's fixture that the suites use."""

    def __init__(self):
        self.extra_info = {}

    def pedantic(self, target, args=(), kwargs=None, rounds=1, iterations=1, warmup_rounds=0, setup=None):
        for _ in range(warmup_rounds + rounds * iterations):
            result = target(*args, **(kwargs or {}))
        return result

    def __call__(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


if not HAVE_PYTEST_BENCHMARK:
    @pytest.fixture
    def benchmark():
        return _StandIn()


def run_case(benchmark, *, op, case, impl, role, make, check=None, extra=None, graph=True):
    """Build the variant with make() -> (fns, sync_fn), check it once, time it, record it.

    make() raising pytest.skip.Exception skips; any other failure is recorded as an error (the
    summary shows it as FAIL) and re-raised so pytest reports it too."""
    extra = dict(extra or {})
    try:
        fns = make()
        if check is not None:
            ok, err = check(fns[0]())
            extra.update(correct=bool(ok), max_err=err)
        timing = measure(fns, graph=graph)
    except pytest.skip.Exception:
        raise
    except Exception as e:
        torch.cuda.synchronize()
        record(benchmark, op=op, case=case, impl=impl, role=role, timing=None,
               error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", **extra)
        raise
    rec = record(benchmark, op=op, case=case, impl=impl, role=role, timing=timing, sync_fn=fns[0], **extra)
    if extra.get("correct") is False:
        pytest.fail(f"{op} {impl} {case}: result differs from the reference (max error {extra.get('max_err')})")
    return rec


def cuda_op(name: str):
    """torch.ops.rgk.<name> when the extension loads (rgk._C, or the JIT build with RGK_JIT=1)."""
    from rgk.ops import _backend
    if _backend.cuda_ext() is None:
        pytest.skip("the rgk._C CUDA extension is not built")
    return getattr(torch.ops.rgk, name)


def triton_fn(module: str, name: str):
    try:
        mod = __import__(f"rgk.kernels.{module}", fromlist=[name])
        return getattr(mod, name)
    except ImportError as e:
        pytest.skip(f"Triton kernel rgk.kernels.{module}.{name} is not importable: {e}")
