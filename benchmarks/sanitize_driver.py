"""Runs every CUDA kernel of rgk._C on small inputs (all dtypes, a few shapes) — the program
that benchmarks/gpu_check.sh runs under compute-sanitizer — and parses the sanitizer's report
into clean / not clean per kernel.

    python benchmarks/sanitize_driver.py [--ops a,b] [--smoke] [--quick]
        runs the ops; prints "RGK_SANITIZE <op> begin|end ok|end error" markers.  --smoke also
        compares each result with rgk.ops.reference, replays a CUDA-graph capture of the op on
        new inputs, and traces it with torch.compile(fullgraph=True) (the fake kernels).
        --quick runs only QUICK's cases: one per op, and for the two ticket-merge kernels
        (topk_logprobs, fork_attention) cases that split each row over several blocks, so
        that racecheck sees the merge (`gpu_check.sh --quick`).
    python benchmarks/sanitize_driver.py --parse LOG --tool memcheck|racecheck [--ops a,b] [--json OUT]
        reads a compute-sanitizer log of the first form and reports per kernel (of --ops).

Run it under the sanitizer with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so that every tensor is
its own allocation and an out-of-bounds access is caught at the tensor's edge.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import traceback

OPS = ["topk_logprobs", "fork_attention", "reward_select", "argre_refine"]
# --quick: the cases run (by description).  topk B2 V20000 splits each row into 10 chunks and
# fork L700 into 5 KV splits (both merge by ticket); fork runs its tensor-core (bf16) and its
# simple (fp32) kernel.
QUICK = {
    "topk_logprobs": ["torch.bfloat16 B2 V20000 k64 -inf"],
    "fork_attention": ["torch.bfloat16 B1 h8x2 K10 D128 L700", "torch.float32 B1 h8x2 K10 D128 L700"],
    "reward_select": ["torch.bfloat16 B2 K10 d64 m40 t0.0"],
    "argre_refine": ["torch.bfloat16 B3 d100 m48 steps2"],
}
KERNEL_NAMES = {"topk_logprobs": "topk_logprobs_kernel", "fork_attention": "fork_attention_",
                "reward_select": "reward_select_", "argre_refine": "argre_refine_kernel"}


def _cases(op, torch, dev, quick=False):
    """(description, thunk returning (fused output, reference output, tolerance)) for one op;
    with quick=True only the cases QUICK names."""
    from rgk.ops import reference
    g = torch.Generator().manual_seed(0)
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
    rgk = torch.ops.rgk

    def rnd(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(dev)

    out = []
    if op == "topk_logprobs":
        for dt in dtypes:
            for B, V, k, neginf in [(3, 3000, 10, False), (2, 20000, 64, True), (1, 70000, 5, False)]:
                def run(dt=dt, B=B, V=V, k=k, neginf=neginf):
                    x = rnd(B, V, scale=3.0).float()
                    if neginf:
                        x[torch.rand(B, V, generator=g).to(dev) < 0.5] = -math.inf
                        x[0] = -math.inf
                    x = x.to(dt)
                    return rgk.topk_logprobs(x, k)[0], reference.topk_logprobs(x, k)[0], 1e-5
                out.append((f"{dt} B{B} V{V} k{k}{' -inf' if neginf else ''}", run))
    elif op == "fork_attention":
        for dt in dtypes:
            for B, Hq, Hkv, K, D, L in [(2, 4, 2, 3, 64, 100), (1, 8, 2, 10, 128, 700), (2, 6, 3, 5, 80, 50)]:
                def run(dt=dt, B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, L=L):
                    q = rnd(B, K, Hq, D, dtype=dt).transpose(1, 2)
                    kc = rnd(B, Hkv + 1, L + 5, D, dtype=dt)[:, 1:, 2:L + 2]
                    vc = rnd(B, Hkv + 1, L + 5, D, dtype=dt)[:, 1:, 2:L + 2]
                    kn, vn = rnd(B, Hkv, K, D, dtype=dt), rnd(B, Hkv, K, D, dtype=dt)
                    cs = torch.tensor([3] + [0] * (B - 1), dtype=torch.int32, device=dev)
                    ce = torch.tensor([L - 4] + [L] * (B - 1), dtype=torch.int32, device=dev)
                    args = (q, kc, vc, kn, vn, cs, ce)
                    return rgk.fork_attention(*args, 0.11), reference.fork_attention(*args, 0.11), tol[dt]
                out.append((f"{dt} B{B} h{Hq}x{Hkv} K{K} D{D} L{L}", run))
    elif op == "reward_select":
        for dt in dtypes:
            for B, K, d, m, temp in [(3, 10, 100, 0, 0.0), (2, 10, 64, 40, 0.0), (4, 7, 96, 0, 0.7), (2, 64, 50, 20, 1.0)]:
                def run(dt=dt, B=B, K=K, d=d, m=m, temp=temp):
                    hidden = rnd(B, K, d, dtype=dt)
                    logp = torch.log_softmax(rnd(B, K, scale=2.0), -1)
                    logp[0, 0] = -math.inf
                    ids = torch.randint(0, 1000, (B, K), generator=g).to(dev)
                    if m == 0:
                        head = (rnd(1, d, scale=0.1), rnd(1), None, None)
                    else:
                        head = (rnd(m, d, scale=0.1), rnd(m), rnd(1, m, scale=0.1), rnd(1))
                    u = torch.rand(B, generator=g).to(dev) if temp > 0 else None
                    got = rgk.reward_select(hidden, logp, ids, *head, 1.5, temp, u)
                    want = reference.reward_select(hidden, logp, ids, *head, reward_weight=1.5, temperature=temp,
                                                   uniform=u)
                    return torch.cat([got[2], got[1][:, None].float()], 1), torch.cat([want[2], want[1][:, None].float()],
                                                                                      1), 1e-4
                out.append((f"{dt} B{B} K{K} d{d} m{m} t{temp}", run))
    elif op == "argre_refine":
        for dt in dtypes:
            for B, d, m, steps in [(3, 100, 48, 2), (1, 576, 64, 1), (9, 64, 130, 3)]:
                def run(dt=dt, B=B, d=d, m=m, steps=steps):
                    h = rnd(B, d, dtype=dt)
                    w1, b1 = rnd(m, d, scale=1 / math.sqrt(d)), rnd(m, scale=0.1)
                    w2, b2, u = rnd(1, m, scale=1 / math.sqrt(m)), rnd(1), rnd(d, scale=0.1)
                    r_plus = float(reference.argre_reward(h.float(), w1, b1, w2, b2).median())
                    got = rgk.argre_refine(h, w1, b1, w2, b2, u, r_plus, 1.0, steps, 0.5)
                    want = reference.argre_refine(h, w1, b1, w2, b2, u, r_plus, beta=1.0, n_steps=steps, step_size=0.5)
                    return got, want, tol[dt]
                out.append((f"{dt} B{B} d{d} m{m} steps{steps}", run))
    if quick:
        picked = [c for c in out if c[0] in QUICK[op]]
        missing = set(QUICK[op]) - {c[0] for c in picked}
        if missing:
            raise RuntimeError(f"sanitize_driver.QUICK[{op!r}] names cases that do not exist: {sorted(missing)}")
        out = picked
    return out


def _close(got, want, tol) -> tuple[bool, float]:
    got, want = got.float().cpu(), want.float().cpu()
    fin = want.isfinite()
    if not (got.isfinite() == fin).all() or not (got[~fin] == want[~fin]).all():
        return False, float("inf")
    err = float(((got[fin] - want[fin]).abs() / (1 + want[fin].abs())).max()) if fin.any() else 0.0
    return err <= tol, err


def _graph_and_compile(op, torch, dev) -> list[tuple[bool, str]]:
    """CUDA-graph replay on new inputs equals eager; torch.compile traces the op (fake kernel)."""
    msgs = []
    rgk = torch.ops.rgk
    x = torch.randn(4, 5000, device=dev)
    calls = {
        "topk_logprobs": (lambda x: rgk.topk_logprobs(x, 8)[0], [x]),
        "fork_attention": (lambda q, k: rgk.fork_attention(q, k, k, q[:, :2], q[:, :2],
                                                          torch.zeros(2, dtype=torch.int32, device=dev),
                                                          torch.full((2,), 300, dtype=torch.int32, device=dev), 0.1),
                           [torch.randn(2, 2, 6, 128, device=dev, dtype=torch.bfloat16),
                            torch.randn(2, 2, 300, 128, device=dev, dtype=torch.bfloat16)]),
        "reward_select": (lambda h, lp: rgk.reward_select(h, lp, torch.arange(6, device=dev).expand(3, 6).contiguous(),
                                                          torch.ones(1, 32, device=dev), torch.zeros(1, device=dev),
                                                          None, None, 1.0, 0.0, None)[2],
                          [torch.randn(3, 6, 32, device=dev), torch.randn(3, 6, device=dev)]),
        "argre_refine": (lambda h: rgk.argre_refine(h, torch.ones(16, 64, device=dev) * 0.1, torch.zeros(16, device=dev),
                                                    torch.ones(1, 16, device=dev), torch.zeros(1, device=dev),
                                                    torch.ones(64, device=dev), 5.0, 1.0, 3, 0.5),
                         [torch.randn(2, 64, device=dev)]),
    }
    fn, args = calls[op]
    static = [a.clone() for a in args]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(*static)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    fresh = [torch.randn_like(a) for a in args]
    for a, f in zip(static, fresh):
        a.copy_(f)
    graph.replay()
    graph.replay()  # twice: the kernels must leave their counters at zero
    torch.cuda.synchronize()
    ok = torch.equal(out, fn(*fresh))
    msgs.append((ok, f"cuda graph replay on new inputs {'equals eager' if ok else 'DIFFERS from eager'}"))
    try:
        compiled = torch.compile(fn, backend="eager", fullgraph=True)
        ok = torch.equal(compiled(*fresh), fn(*fresh))
        msgs.append((ok, f"torch.compile(fullgraph=True) {'equals eager' if ok else 'DIFFERS from eager'}"))
    except Exception as e:
        msgs.append((False, f"torch.compile FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"))
    return msgs


def run(ops: list[str], smoke: bool, quick: bool = False) -> int:
    import torch
    from rgk.ops import _backend
    if not torch.cuda.is_available():
        print("RGK_SANITIZE no CUDA device")
        return 2
    if _backend.cuda_ext() is None:
        print("RGK_SANITIZE rgk._C not built (set RGK_JIT=1 for the JIT build)")
        return 2
    dev = torch.device("cuda")
    bad = 0
    for op in ops:
        print(f"RGK_SANITIZE {op} begin", flush=True)
        status = "ok"
        for desc, thunk in _cases(op, torch, dev, quick):
            try:
                got, want, tol = thunk()
                torch.cuda.synchronize()
                if smoke:
                    ok, err = _close(got, want, tol)
                    print(f"  {op} {desc}: {'ok' if ok else 'MISMATCH'} (max rel err {err:.2e})", flush=True)
                    status = status if ok else "mismatch"
            except Exception as e:
                print(f"  {op} {desc}: EXCEPTION {type(e).__name__}: {e}", flush=True)
                traceback.print_exc(limit=2)
                status = "error"
        if smoke and status != "error":
            try:
                for ok, msg in _graph_and_compile(op, torch, dev):
                    print(f"  {op} {msg}", flush=True)
                    status = status if ok else "mismatch"
            except Exception as e:
                print(f"  {op} graph/compile check: EXCEPTION {type(e).__name__}: {e}", flush=True)
                status = "error"
        try:
            torch.cuda.synchronize()
        except Exception as e:  # a sticky CUDA error: every later op would fail as well
            print(f"  {op}: CUDA error after the op: {e}", flush=True)
            status = "error"
        print(f"RGK_SANITIZE {op} end {status}", flush=True)
        bad += status != "ok"
    return 1 if bad else 0


def parse(log_path: str, tool: str, json_out: str | None, ops: list[str] | None = None) -> int:
    """Per-op verdict (of `ops`, default all) from a compute-sanitizer log of `run`."""
    text = open(log_path, errors="replace").read().splitlines()
    result = {op: {"reached": False, "finished": None, "issues": 0, "examples": []} for op in (ops or OPS)}
    current = None
    summary = None
    issue = re.compile(r"^=========\s+(Invalid|Error|Race|.*[Hh]azard|Program hit|Uninitialized|Barrier|Out-of-range|"
                       r"Misaligned|Malloc|Leaked|.*error)")
    for line in text:
        m = re.match(r"^RGK_SANITIZE (\S+) (begin|end)(?: (\S+))?", line)
        if m and m.group(1) in result:
            op = m.group(1)
            if m.group(2) == "begin":
                current = op
                result[op]["reached"] = True
            else:
                result[op]["finished"] = m.group(3)
                current = None
            continue
        s = re.search(r"ERROR SUMMARY: (\d+) error", line) or re.search(r"RACECHECK SUMMARY: (\d+) hazard", line)
        if s:
            summary = int(s.group(1))
            continue
        if issue.match(line) and "ERROR SUMMARY" not in line:
            owner = current
            for op, kname in KERNEL_NAMES.items():
                if kname in line:
                    owner = op
            if owner in result:
                result[owner]["issues"] += 1
                if len(result[owner]["examples"]) < 3:
                    result[owner]["examples"].append(line.strip()[:200])
    rc = 0
    print(f"compute-sanitizer --tool {tool}: per kernel")
    for op, r in result.items():
        if not r["reached"]:
            verdict = "NOT RUN (driver stopped before it: timeout or crash)"
        elif r["issues"]:
            verdict = f"NOT CLEAN ({r['issues']} reports)"
        elif r["finished"] is None:
            verdict = "INCOMPLETE (no end marker: timeout or crash)"
        elif r["finished"] != "ok":
            verdict = f"ran with errors ({r['finished']})"
        else:
            verdict = "clean"
        r["verdict"] = verdict
        rc |= verdict != "clean"
        print(f"  {op:16s} {verdict}")
        for ex in r["examples"]:
            print(f"      {ex}")
    if summary is not None:
        print(f"  sanitizer summary line: {summary} error(s) in the whole process")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"tool": tool, "summary_errors": summary, "kernels": result}, f, indent=1)
    return 1 if rc else 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--parse")
    p.add_argument("--tool", default="memcheck")
    p.add_argument("--json")
    a = p.parse_args()
    ops = [o for o in a.ops.split(",") if o]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        p.error(f"--ops: unknown op(s) {unknown}; expected some of {OPS}")
    if a.parse:
        return parse(a.parse, a.tool, a.json, ops)
    return run(ops, a.smoke, a.quick)


if __name__ == "__main__":
    sys.exit(main())
