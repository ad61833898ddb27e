"""Per-call host overhead of the CUDA ops, three ways, on tiny inputs (kernel time ~ a few us):

  direct     rgk._C.<op>(...)        pybind11 straight into the C++ implementation
  torch.ops  torch.ops.rgk.<op>(...) the PyTorch dispatcher (what torch.compile and graphs see)
  rgk.ops    rgk.ops.<op>(...)       input validation in Python, then torch.ops (RGK_BACKEND=cuda)
  unchecked  rgk.ops.<op>(..., check=False), where the op has that fast path (validation off the
             per-layer hot path); "-" where it does not

Host time per call is measured without synchronising inside the loop (the launch queue
does not fill in 200 calls), so it is the CPU cost of issuing one call; "graph" is the
device time per call of the same call replayed from a CUDA graph, where none of this
overhead remains.  Prints a table; --json writes the numbers.

    python benchmarks/dispatch_overhead.py [--json out.json]
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--calls", type=int, default=200)
    a = p.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("dispatch_overhead: no CUDA device")
        return 2
    os.environ["RGK_BACKEND"] = "cuda"
    from rgk import ops
    from rgk.ops import _backend
    ext = _backend.cuda_ext()
    if ext is None:
        print("dispatch_overhead: rgk._C is not built")
        return 2
    dev = "cuda"
    x = torch.randn(1, 1024, device=dev)
    q = torch.randn(1, 4, 10, 64, device=dev, dtype=torch.bfloat16)
    kc = torch.randn(1, 2, 128, 64, device=dev, dtype=torch.bfloat16)
    kn = torch.randn(1, 2, 10, 64, device=dev, dtype=torch.bfloat16)
    cs, ce = torch.zeros(1, dtype=torch.int32, device=dev), torch.full((1,), 128, dtype=torch.int32, device=dev)
    hid, lp = torch.randn(1, 10, 64, device=dev), torch.randn(1, 10, device=dev)
    ids = torch.arange(10, device=dev)[None]
    w1, b1 = torch.randn(1, 64, device=dev), torch.zeros(1, device=dev)
    h = torch.randn(1, 64, device=dev)
    mw1, mb1, mw2, mb2 = torch.randn(32, 64, device=dev), torch.zeros(32, device=dev), torch.randn(1, 32, device=dev), \
        torch.zeros(1, device=dev)
    u = torch.randn(64, device=dev)
    cases = {
        "topk_logprobs": (lambda: ext.topk_logprobs(x, 10), lambda: torch.ops.rgk.topk_logprobs(x, 10),
                          lambda: ops.topk_logprobs(x, 10)),
        "fork_attention": (lambda: ext.fork_attention(q, kc, kc, kn, kn, cs, ce, 0.125),
                           lambda: torch.ops.rgk.fork_attention(q, kc, kc, kn, kn, cs, ce, 0.125),
                           lambda: ops.fork_attention(q, kc, kc, kn, kn, cs, ce, 0.125)),
        "reward_select": (lambda: ext.reward_select(hid, lp, ids, w1, b1, None, None, 1.5, 0.0, None),
                          lambda: torch.ops.rgk.reward_select(hid, lp, ids, w1, b1, None, None, 1.5, 0.0, None),
                          lambda: ops.reward_select(hid, lp, ids, w1, b1, reward_weight=1.5)),
        "argre_refine": (lambda: ext.argre_refine(h, mw1, mb1, mw2, mb2, u, 1.0, 1.0, 5, 0.5),
                         lambda: torch.ops.rgk.argre_refine(h, mw1, mb1, mw2, mb2, u, 1.0, 1.0, 5, 0.5),
                         lambda: ops.argre_refine(h, mw1, mb1, mw2, mb2, u, 1.0)),
    }
    unchecked = {
        "topk_logprobs": lambda: ops.topk_logprobs(x, 10, check=False),
        "fork_attention": lambda: ops.fork_attention(q, kc, kc, kn, kn, cs, ce, 0.125, check=False),
        "reward_select": lambda: ops.reward_select(hid, lp, ids, w1, b1, reward_weight=1.5, check=False),
        "argre_refine": lambda: ops.argre_refine(h, mw1, mb1, mw2, mb2, u, 1.0, check=False),
    }
    results = {}
    print(f"per-call host overhead, us (median of 7 rounds of {a.calls} calls) — {torch.cuda.get_device_name()}")
    print(f"{'op':16s} {'direct':>8s} {'torch.ops':>10s} {'rgk.ops':>8s} {'unchecked':>10s} {'dispatcher +':>13s} "
          f"{'graph (device)':>15s}")
    for op, fns in cases.items():
        row = {}
        names = ["direct", "torch.ops", "rgk.ops"]
        if "check" in inspect.signature(getattr(ops, op)).parameters:
            fns, names = (*fns, unchecked[op]), names + ["unchecked"]
        for name, fn in zip(names, fns):
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            rounds = []
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    fn()
                rounds.append((time.perf_counter() - t0) / a.calls * 1e6)
                torch.cuda.synchronize()
            row[name] = statistics.median(rounds)
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fns[1]()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(50):
                    fns[1]()
            g.replay()
            torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(5):
                g.replay()
            e1.record()
            torch.cuda.synchronize()
            row["graph_device"] = e0.elapsed_time(e1) * 1e3 / (5 * 50)
        except Exception as e:
            row["graph_device"] = None
            row["graph_error"] = f"{type(e).__name__}: {e}"[:200]
        row["dispatcher_overhead"] = row["torch.ops"] - row["direct"]
        results[op] = row
        gd = "-" if row["graph_device"] is None else f"{row['graph_device']:.1f}"
        un = "-" if "unchecked" not in row else f"{row['unchecked']:.1f}"
        print(f"{op:16s} {row['direct']:8.1f} {row['torch.ops']:10.1f} {row['rgk.ops']:8.1f} {un:>10s} "
              f"{row['dispatcher_overhead']:+13.1f} {gd:>15s}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "us_per_call": results}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
