"""The Triton kernels compile for sm_90 (H100) in every launch configuration the host wrappers
pick there: an ahead-of-time compile check that needs no GPU.

Why.  CI has no GPU, so the kernel tests run in Triton's interpreter (TRITON_INTERPRET=1),
which executes the kernel bodies with numpy and never lowers them.  Whatever only the
compiler sees passes there unnoticed: ops or layouts sm_90 does not support, dtype rules of
tl.dot (operand dtypes, input_precision), shape / constexpr errors in branches the CPU shapes
never take (e.g. SPLIT > 1, which the wrappers only choose on CUDA), ptxas failures, shared
memory or registers beyond an H100's per-block limits, and register spills.  This test
compiles those configurations down to a cubin with the ptxas bundled in the triton wheel.

How.  The host wrappers `topk_logprobs_triton`, `fork_attention_triton`,
`reward_select_triton` and `argre_refine_triton` are driven on CPU tensors (allocated, never
read) over the shapes they see on a GPU: dtypes fp32/bf16/fp16; topk B in {1, 8, 64},
k in {1, 10, 64}, V in {49152, 128256}; fork_attention D in {64, 128}, K in {1, 10, 64},
MHA and GQA head ratios (1, 3, 4, 7, 8), prefixes of 500 and 4096 tokens, B in {1, 8, 64},
laid out as rgk.args.cache passes them; reward_select linear / MLP heads, greedy / sampled,
K in {1, 10, 64}, d in {576, 2048}, B in {1, 8, 64}; argre_refine d in {576, 2048, 4096}.  A stand-in Triton
driver reports an sm_90 target, so each launch goes through Triton's own JIT binder with the
argument specialisation it gets on the GPU (16-byte alignment, integers divisible by 16 or
equal to 1); `knobs.runtime.jit_cache_hook` records the launch's specialisation and tells the
JIT to skip it, so nothing is compiled or launched there.  The splits the wrappers only
choose for CUDA tensors are reproduced: topk's and reward_select's `_pick_split` run as for
a CUDA device with 132 SMs (H100 SXM), fork_attention gets `split=` from its launch plan's
own formula (the test checks it against `_plan`'s source), and all three also launch with
SPLIT = 1 (their choice inside a CUDA-graph capture and for large grids).  Each selected specialisation is then
compiled by `JITFunction.preload`, the JIT's own path to `triton.compile(ASTSource(...))`,
for the sm_90 target; ptxas' -v log gives registers, stack frame and spills.

Cost, and what is left out.  The grid makes 1394 launches with 403 distinct
specialisations, about 10 minutes of compiling on two cores (topk's split variants take up
to 15 s each: a bitonic merge tree over [SPLIT, K_PAD] keys).  So by default
(RGK_TRITON_AOT unset or "cover") the test compiles ONE REPRESENTATIVE per class (kernel,
tl.constexpr tile parameters, SPLIT == 1 or > 1, num_warps, num_stages) — 45 compiles —
taking the largest SPLIT of the class (deepest merge tree, most partials) and otherwise
the fewest integer arguments specialised to 1 (the most general code), with the data dtype
rotated over the classes so that every kernel is compiled for each dtype it is launched
with (the tile choice of fork_attention depends on the dtype, so its fp32 classes are
always fp32).  Not compiled by default: the other dtypes of a class (bf16 and fp16 differ
only in the element type of loads, stores and tl.dot operands; RGK_TRITON_AOT=dtypes adds
them: 105 compiles), the other SPLIT values, and variants that differ only in the JIT's
integer specialisation (RGK_TRITON_AOT=full compiles all 403).

Checks.  Every selected configuration must compile (the test fails with the compiler's
message otherwise), fit an H100's per-block shared memory and register file (what Triton
checks when it loads the cubin, raising OutOfResources at the first launch), and spill at
most SPILL_LIMIT bytes per thread with no local memory in the PTX (see SPILLS below); any
spill at all is reported as a warning.
Registers, spills, stack and shared memory per configuration are printed (pytest -s or -rP).

SPILLS.  With Triton 3.9's ptxas one or two configurations report an 8-byte stack frame with
8 bytes of spill stores/loads (which one moves with the dtype rotation: topk_logprobs bf16
SPLIT=32 K_PAD=16 in one run, fork_attention fp16 D=64 BLOCK_M=16 SPLIT=16 at 72 registers
in another).  That is not register pressure (those kernels use 72-112 of the 255 registers a
thread may have at 4 warps) and not the kernel's own local memory: the PTX Triton emits has
no .local array and no call (checked below for every configuration: `ptx_local`).  It is
ptxas parking one 64-bit value (a pointer or a 64-bit offset live across the split loop) in
the stack frame, an L1-resident 8 bytes per thread, loaded once per loop trip: immeasurable
beside the tile loads.  So the test allows exactly that much (SPILL_LIMIT = 8 bytes, PTX
without local memory), still reports it as a warning, and fails on anything more: a real
spill from a tile choice that is too large shows tens to hundreds of bytes.

Everything runs in a subprocess (this file, run as a script) with TRITON_INTERPRET unset,
so `@triton.jit` gives real JITFunctions and nothing leaks into the rest of the suite; the
compiles run in a process pool, one worker per core (about 35 s on an idle two-core
machine, 95 s on a busy one).  Skipped when triton's NVIDIA backend or its ptxas is
missing, on machines with a CUDA device (the GPU tests compile the kernels for the device
itself, and this would take minutes of the GPU check's budget; RGK_TRITON_AOT=1 forces it
there), and with RGK_TRITON_AOT=0.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = ("cuda", 90, 32)  # what an H100 reports to Triton: backend, capability, warp size
H100_SMS = 132
KERNELS = {  # module under rgk.kernels -> kernel
    "topk_logprobs": "_topk_logprobs_kernel",
    "fork_attention": "_fork_attention_kernel",
    "reward_select": "_reward_select_kernel",
    "argre_refine": "_argre_refine_kernel",
}
# fork_attention's most splits on CUDA, in its launch plan `_plan` (mirrored in _fork_split below;
# the split itself is `split_count(want, span, BLOCK_N)`, span = the valid-length bound or L)
FORK_SPLIT_SRC = "want = max(1, min(triton.cdiv(2 * _sm_count(device), tiles), 32))"
H100_MAX_SHARED = 232448  # bytes of shared memory per block (opt-in), as Triton's driver reports it
H100_MAX_REGS = 65536  # 32-bit registers per block
SPILL_LIMIT = 8  # bytes per thread (ptxas -v "spill stores"): one 64-bit value; see SPILLS
TIMEOUT_S = {"cover": 300, "dtypes": 900, "full": 2400}  # seconds, for two cores


# ----------------------------------------------------------------------------- pytest side

def test_triton_kernels_compile_for_sm90(tmp_path):
    mode = os.environ.get("RGK_TRITON_AOT", "auto").lower()
    if mode in ("0", "off", "no"):
        pytest.skip("RGK_TRITON_AOT=0")
    if mode == "auto":
        import torch
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present: the GPU tests compile the kernels for it "
                        "(RGK_TRITON_AOT=1 runs this check anyway)")
    mode = {"auto": "cover", "1": "cover"}.get(mode, mode)
    if mode not in TIMEOUT_S:
        pytest.fail(f"RGK_TRITON_AOT={mode!r}: expected 0, 1, cover, dtypes or full")

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    out = tmp_path / "result.json"
    t0 = time.time()
    # own session, so that a timeout takes the compile workers down with their parent
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), mode, str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S[mode])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"AOT compile of the Triton kernels took over {TIMEOUT_S[mode]} s\n"
                    f"{stdout[-5000:]}{stderr[-5000:]}")
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"the compile driver failed (exit {proc.returncode}):\n{stdout[-5000:]}\n{stderr[-5000:]}")
    res = json.loads(out.read_text())
    if res.get("skip"):
        pytest.skip(res["skip"])

    rows = res["results"]
    print(f"\nTriton {res['triton']} AOT for sm_90 ({mode}): {res['n_launches']} launches, "
          f"{res['n_distinct']} distinct specialisations, {len(rows)} compiled in {time.time() - t0:.0f} s")
    print(f"{'kernel':<15} {'dtype':<5} {'warps':>5} {'regs':>4} {'spill st/ld':>11} {'stack':>5} "
          f"{'smem':>6} {'time':>5}  constexprs")
    for r in sorted(rows, key=lambda r: (r["kernel"], r["label"])):
        spill = f"{r['spill_stores']}/{r['spill_loads']}" if r["ok"] else "FAILED"
        print(f"{r['kernel'][1:-7]:<15} {r['dtype']:<5} {r['num_warps']:>5} {r.get('regs', '-')!s:>4} "
              f"{spill:>11} {r.get('stack', '-')!s:>5} {r.get('smem', '-')!s:>6} {r['seconds']:>4.1f}s  {r['label']}")

    spilling = [r for r in rows if r["ok"] and (r["spill_stores"] or r["spill_loads"])]
    if spilling:
        worst = sorted(spilling, key=lambda r: -r["spill_stores"] - r["spill_loads"])
        warnings.warn(UserWarning(
            f"{len(spilling)} of {len(rows)} Triton kernel configurations spill registers on sm_90 (bytes per "
            "thread): " + "; ".join(f"{r['kernel']}[{r['dtype']}, num_warps={r['num_warps']}, {r['label']}] "
                                    f"{r['spill_stores']} B stores / {r['spill_loads']} B loads" for r in worst[:8])
            + ("; ..." if len(worst) > 8 else "")))
    failed = [r for r in rows if not r["ok"]]
    # what Triton checks when it loads the cubin on the device (OutOfResources)
    unloadable = [r for r in rows if r["ok"] and (r["smem"] > H100_MAX_SHARED
                                                   or (r["regs"] or 0) * r["num_warps"] * 32 > H100_MAX_REGS)]
    heavy = [r for r in spilling if max(r["spill_stores"], r["spill_loads"]) > SPILL_LIMIT]
    local = [r for r in rows if r["ok"] and r.get("ptx_local")]
    assert not local, "Triton kernels whose PTX uses local memory or calls (a dynamically indexed array?): " + \
        "; ".join(f"{r['kernel']} [{r['dtype']}, {r['label']}]" for r in local)
    assert not failed, f"{len(failed)} of {len(rows)} Triton kernel configurations fail to compile for sm_90:\n" + \
        "\n".join(f"--- {r['kernel']} [{r['dtype']}, num_warps={r['num_warps']}, {r['label']}]\n{r['error']}"
                  for r in failed)
    assert not unloadable, f"{len(unloadable)} Triton kernel configurations compile but exceed an H100's " \
        f"per-block limits ({H100_MAX_SHARED} B shared memory, {H100_MAX_REGS} registers):\n" + "\n".join(
            f"{r['kernel']} [{r['dtype']}, num_warps={r['num_warps']}, {r['label']}]: {r['smem']} B shared, "
            f"{r['regs']} registers x {r['num_warps'] * 32} threads" for r in unloadable)
    assert not heavy, f"{len(heavy)} Triton kernel configurations spill more than {SPILL_LIMIT} bytes per " \
        "thread on sm_90 (their wrapper's tile choice is too large):\n" + "\n".join(
            f"{r['kernel']} [{r['dtype']}, num_warps={r['num_warps']}, {r['label']}]: {r['regs']} registers, "
            f"{r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads" for r in heavy)
    assert rows and res["n_distinct"] >= len(rows)


# ----------------------------------------------------------------------------- the subprocess

class _H100Driver:
    """The part of a Triton driver that the JIT binder needs, for an sm_90 device."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget(*TARGET)


def _kernels():
    import importlib
    return {f"rgk.kernels.{mod}.{name}": getattr(importlib.import_module(f"rgk.kernels.{mod}"), name)
            for mod, name in KERNELS.items()}


def _unavailable() -> str | None:
    """Why sm_90 compiles cannot run here, or None."""
    try:
        import triton  # noqa: F401
        from triton.backends import backends
    except ImportError as e:
        return f"triton is not importable ({e})"
    if "nvidia" not in backends:
        return "triton has no NVIDIA backend"
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(TARGET[1]).path
        subprocess.run([ptxas, "--version"], check=True, capture_output=True)
    except Exception as e:  # noqa: BLE001 - any failure means no usable ptxas
        return f"triton's ptxas for sm_90 is unavailable ({type(e).__name__}: {e})"
    return None


def _fork_split(B, Hq, Hkv, K, L, BLOCK_M, BLOCK_N, sms=H100_SMS):
    """fork_attention_triton's split for CUDA tensors without a valid-length bound
    (FORK_SPLIT_SRC, then the module's split_count over the capacity L: the largest split a
    bounded call of that shape can take)."""
    import triton

    from rgk.kernels.fork_attention import split_count
    tiles = B * Hkv * triton.cdiv((Hq // Hkv) * K, BLOCK_M)
    return split_count(max(1, min(triton.cdiv(2 * sms, tiles), 32)), L, BLOCK_N)


def _record() -> dict:
    """Drive the wrappers over the GPU configuration grid; {specialisation data: launches}."""
    import inspect
    import types

    import torch
    from triton import knobs
    from triton.runtime.driver import driver

    from rgk.kernels import argre_refine as A
    from rgk.kernels import fork_attention as F
    from rgk.kernels import reward_select as R
    from rgk.kernels import topk_logprobs as T

    src = " ".join(inspect.getsource(F._plan).split())
    assert FORK_SPLIT_SRC in src, ("fork_attention's _plan no longer picks its CUDA split with "
                                   f"`{FORK_SPLIT_SRC}`: update _fork_split in this test")

    launches: dict[str, int] = {}
    last: list[dict] = []

    def hook(*, compile, **_):
        launches[compile["specialization_data"]] = launches.get(compile["specialization_data"], 0) + 1
        last.append(compile["constants"])
        return True  # recorded: neither compile nor launch

    def empty(*shape, dtype=torch.float32):
        return torch.empty(*shape, dtype=dtype)  # never read: no kernel runs

    floats = (torch.float32, torch.bfloat16, torch.float16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "_active", _H100Driver())
        mp.setattr(knobs.runtime, "jit_cache_hook", hook)
        # topk: the split _pick_split gives a CUDA device with an H100's SM count
        mp.setattr(torch.cuda, "get_device_properties",
                   lambda device=None: types.SimpleNamespace(multi_processor_count=H100_SMS))
        pick = T._pick_split
        mp.setattr(T, "_pick_split", lambda B, V, block, device: pick(B, V, block, torch.device("cuda", 0)))
        # reward_select: the MLP head's slices of hidden units, likewise
        pick_r = R._pick_split
        mp.setattr(R, "_pick_split", lambda B, m, block_h, device: pick_r(B, m, block_h, torch.device("cuda", 0)))

        for dt in floats:
            for V in (49152, 128256):
                for B in (1, 8, 64):
                    for k in (1, 10, 64):
                        logits = empty(B, V, dtype=dt)
                        T.topk_logprobs_triton(logits, k)
                        T.topk_logprobs_triton(logits, k, split=1)

        # fork_attention as rgk.args.cache calls it: q a transposed projection, the cache and
        # the candidates' own entries views of one [B, Hkv, L + K, D] buffer, int32 bounds
        fork = F._fork_attention_kernel
        for dt in floats:
            for D in (64, 128):
                for Hq, Hkv in ((8, 8), (9, 3), (32, 8), (28, 4), (32, 4)):
                    for K in (1, 10, 64):
                        for B in (1, 8, 64):
                            for L in (500, 4096):
                                q = empty(B, K, Hq, D, dtype=dt).transpose(1, 2)
                                kb, vb = empty(B, Hkv, L + K, D, dtype=dt), empty(B, Hkv, L + K, D, dtype=dt)
                                start = torch.zeros(B, dtype=torch.int32)
                                end = torch.full((B,), L, dtype=torch.int32)
                                args = (q, kb[:, :, :L], vb[:, :, :L], kb[:, :, L:], vb[:, :, L:], start, end,
                                        D ** -0.5)
                                F.fork_attention_triton(*args, split=1)
                                c = {fork.arg_names[i[0]]: v for i, v in last[-1].items()}
                                split = _fork_split(B, Hq, Hkv, K, L, c["BLOCK_M"], c["BLOCK_N"])
                                if split > 1:
                                    F.fork_attention_triton(*args, split=split)

        # reward_select as rgk.ops passes it: fp32 head weights, hidden states in the model dtype
        for dt in floats:
            for d in (576, 2048):
                for K in (1, 10, 64):
                    for mlp in (False, True):
                        m = 1024 if mlp else 1
                        head = (empty(m, d), empty(m)) + ((empty(1, m), empty(1)) if mlp else (None, None))
                        for temperature in (0.0, 0.7):
                            for B in (1, 8, 64):
                                for split in (None, 1) if mlp else (None,):  # 1: the capture fallback
                                    R.reward_select_triton(empty(B, K, d, dtype=dt), empty(B, K),
                                                           empty(B, K, dtype=torch.int64), *head, reward_weight=1.5,
                                                           temperature=temperature, uniform=empty(B), split=split)

        # argre_refine as rgk.ops passes it: fp32 head and direction, hidden states in the model dtype
        for dt in floats:
            for d in (576, 2048, 4096):
                for B in (1, 8):
                    A.argre_refine_triton(empty(B, d, dtype=dt), empty(1024, d), empty(1024), empty(1, 1024),
                                          empty(1), empty(d), -1.5, beta=1.0, n_steps=5, step_size=0.5)
    return launches


def _describe(spec: str, kernels: dict) -> dict:
    o = json.loads(spec)
    fn = kernels[o["name"]]
    declared = {p.name for p in fn.params if p.is_constexpr}
    consts = {fn.arg_names[k[0]]: v for k, v in zip(o["constant_keys"], o["constant_vals"])}
    tiles = {n: v for n, v in consts.items() if n in declared}
    ones = sorted(n for n in consts if n not in declared)  # integer args the JIT specialised to 1
    ptrs = tuple(v for v in o["signature"].values() if isinstance(v, str) and v.startswith("*"))
    label = " ".join(f"{n}={v}" for n, v in tiles.items()) + (f" [{','.join(ones)}=1]" if ones else "")
    return dict(kernel=o["name"].rsplit(".", 1)[1], dtype=ptrs[0][1:], ptrs=ptrs, tiles=tiles, ones=ones,
                split=tiles.get("SPLIT", 1), num_warps=o["options"]["num_warps"],
                num_stages=o["options"]["num_stages"], label=label)


def _select(specs: list[str], kernels: dict, level: str) -> list[str]:
    """The specialisations to compile.  Classes: (kernel, tile constexprs, SPLIT > 1, num_warps,
    num_stages).  "full": all; "dtypes": one per class and pointer dtypes; "cover": one per
    class, its dtype rotated so that each kernel is compiled for each dtype it is launched
    with.  Within a class (and dtype) the largest SPLIT, then the fewest integer arguments
    specialised to 1."""
    if level == "full":
        return list(specs)
    classes: dict = {}
    for s in specs:
        d = _describe(s, kernels)
        tiles = tuple(sorted((n, v) for n, v in d["tiles"].items() if n not in ("SPLIT", "LOG2_SPLIT")))
        cls = (d["kernel"], tiles, d["split"] > 1, d["num_warps"], d["num_stages"])
        classes.setdefault(cls, {}).setdefault(d["ptrs"], []).append((-d["split"], len(d["ones"]), s))
    chosen, used = [], {}
    for cls in sorted(classes, key=repr):
        by_ptrs = classes[cls]
        if level == "dtypes":
            picks = list(by_ptrs)
        else:
            # the dtype this kernel was compiled for least often, at this SPLIT kind, then overall
            picks = [min(by_ptrs, key=lambda p: (used.get((cls[0], cls[2], p), 0), used.get((cls[0], p), 0), p))]
        for p in picks:
            used[cls[0], cls[2], p] = used.get((cls[0], cls[2], p), 0) + 1
            used[cls[0], p] = used.get((cls[0], p), 0) + 1
            chosen.append(min(by_ptrs[p])[2])
    return chosen


def _cost(spec: str, kernels: dict) -> float:
    """Rough compile seconds, to start the slow ones first."""
    d = _describe(spec, kernels)
    if d["kernel"] == "_topk_logprobs_kernel":
        return 3.0 + 0.1 * d["tiles"]["K_PAD"] * d["tiles"]["LOG2_SPLIT"]
    return {"_fork_attention_kernel": 2.5}.get(d["kernel"], 1.0)


_WORKER: dict = {}


def _init_worker():
    import warnings as w
    w.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    from triton import knobs
    from triton.runtime.driver import driver
    mp = pytest.MonkeyPatch()  # for this worker process's lifetime
    mp.setattr(driver, "_active", _H100Driver())
    mp.setattr(knobs.nvidia, "dump_ptxas_log", True)  # ptxas -v output, printed to stdout
    mp.setattr(knobs.compilation, "always_compile", True)
    _WORKER["kernels"] = _kernels()


def _compile(spec: str) -> dict:
    kernels = _WORKER["kernels"]
    d = _describe(spec, kernels)
    res = {k: d[k] for k in ("kernel", "dtype", "num_warps", "label")}
    log = io.StringIO()
    t = time.time()
    try:
        with contextlib.redirect_stdout(log):
            kernel = kernels[json.loads(spec)["name"]].preload(spec)
        res["ok"] = True
        res["smem"] = kernel.metadata.shared
        res["ptx_local"] = bool(re.search(r"\.local\b|\bcall(\.uni)?\s", kernel.asm["ptx"]))
        text = log.getvalue()
        regs = re.search(r"Used (\d+) registers", text)
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
        res["regs"] = int(regs.group(1)) if regs else None
        res["stack"], res["spill_stores"], res["spill_loads"] = map(int, frame.groups()) if frame else (None,) * 3
    except Exception as e:  # noqa: BLE001 - every failure is reported
        res["ok"] = False
        res["error"] = f"{type(e).__name__}: {e}"[:6000]
    res["seconds"] = time.time() - t
    return res


def _main(mode: str, out_path: str) -> None:
    import multiprocessing as mproc
    import warnings as w
    w.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "the compile check needs real JITFunctions"
    why = _unavailable()
    if why:
        with open(out_path, "w") as f:
            json.dump({"skip": why}, f)
        return
    import triton

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n_proc = max(1, min(cores, 8))
    # start the workers (they import triton and rgk) while this process records the launches
    with mproc.get_context("spawn").Pool(n_proc, initializer=_init_worker) as pool:
        kernels = _kernels()
        launches = _record()
        specs = list(launches)
        jobs = _select(specs, kernels, mode)
        jobs.sort(key=lambda s: -_cost(s, kernels))
        results = []
        for r in pool.imap_unordered(_compile, jobs):
            results.append(r)
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['seconds']:5.1f}s {r['kernel']} {r['dtype']} {r['label']}",
                  flush=True)
    with open(out_path, "w") as f:
        json.dump({"triton": triton.__version__, "n_launches": sum(launches.values()), "n_distinct": len(specs),
                   "results": results}, f)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
