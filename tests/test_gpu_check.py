"""benchmarks/gpu_check.sh: the budget table, the run without a GPU (every GPU stage skipped
with one line, the table says "not measured", results under $OUT), a stage cut at its budget
with the next stage still running, the global deadline, the quick case lists, the target
table's verdicts on synthetic records, and (CUDA only) the extension's capture rule for its
counter buffers.

The script runs on CPU with RGK_CHECK_NO_GPU=1 (so it behaves the same on a GPU machine) and
OUT in a temporary folder; each run takes a few seconds here."""
import csv
import importlib
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
SCRIPT = os.path.join(BENCH, "gpu_check.sh")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)


def _script() -> str:
    with open(SCRIPT) as f:
        return f.read()


def _budgets(kind: str) -> dict[str, int]:
    m = re.search(rf"^declare -A BUDGET_{kind}=\((.*?)^\)", _script(), re.S | re.M)
    assert m, f"no BUDGET_{kind} table in gpu_check.sh"
    return {k: int(v) for k, v in re.findall(r"\[(\w+)\]=(\d+)", m.group(1))}


def _stages() -> list[str]:
    return re.search(r"^STAGES=\(([^)]*)\)", _script(), re.M).group(1).split()


def _gpu_stages() -> list[str]:
    return re.search(r'^GPU_STAGES=" ([^"]*) "', _script(), re.M).group(1).split()


def _run(out, **env):
    full = {**os.environ, "OUT": str(out), "RGK_CHECK_NO_GPU": "1"}
    for k in ("RGK_GPU_CHECK_TEST_SLEEP_STAGE", "RGK_GPU_CHECK_TEST_SLEEP_BUDGET", "RGK_CHECK_DEADLINE",
              "RGK_CHECK_SKIP"):
        full.pop(k, None)
    full.update(env)
    t0 = time.time()
    p = subprocess.run(["bash", SCRIPT, "--quick"], env=full, capture_output=True, text=True, timeout=120)
    return p, time.time() - t0


def _stages_json(out) -> dict:
    with tarfile.open(os.path.join(out, "gpu_check_results.tar.gz")) as tar:
        return json.load(tar.extractfile("./stages.json"))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    p, elapsed = _run(out)
    return p, out, elapsed


def test_stage_budgets_fit():
    quick, full = _budgets("QUICK"), _budgets("FULL")
    stages = _stages()
    assert set(quick) == set(stages) == set(full), (sorted(quick), stages)
    assert set(_gpu_stages()) <= set(stages)
    assert sum(quick.values()) <= 300, quick
    assert sum(full.values()) < 600, full  # one device command is at most 10 minutes
    assert all(quick[s] > 0 for s in stages if s != "dispatch"), quick
    assert quick["summary"] > 0 and stages[-1] == "summary"
    assert "bench_args_e2e" in _gpu_stages() and quick["bench_args_e2e"] >= 45, quick  # two GPU cases fit


def test_budget_tables_in_the_docs_match_the_script():
    """The header comment of gpu_check.sh and benchmarks/README.md state the same budgets."""
    quick, full = _budgets("QUICK"), _budgets("FULL")
    header = _script().split("set -u -o pipefail")[0]
    with open(os.path.join(BENCH, "README.md")) as f:
        readme = f.read()
    for stage in _stages():
        q = str(quick[stage]) if stage != "dispatch" else "0"
        assert re.search(rf"^#   {stage}\s+{q}\s+{full[stage]}\s", header, re.M), stage
        q = str(quick[stage]) if quick[stage] else "—"
        assert re.search(rf"^\| {stage} \| {q} \| {full[stage]} \|", readme, re.M), stage
    assert f"| **total** | **{sum(quick.values())}** | **{sum(full.values())}** |" in readme


def test_quick_run_without_gpu(quick_run):
    p, out, elapsed = quick_run
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    assert elapsed < 60, f"gpu_check.sh --quick took {elapsed:.0f} s on CPU"
    quick = _budgets("QUICK")
    for stage in _gpu_stages():
        line = f"SKIP {stage}: no CUDA device" if quick[stage] else f"SKIP {stage}: not part of the quick check"
        assert log.count(line) == 1, f"missing or repeated {line!r}"
    assert log.count("SKIP bench_args_e2e: no CUDA device") == 1
    assert "[args_e2e]" not in log  # the benchmark itself never started
    assert "total 295s (limit 300s)" in log or re.search(r"total \d+s \(limit 300s\)", log)
    files = sorted(os.listdir(out))
    assert {"gpu_check.log", "gpu_check_results.tar.gz", "targets.md", "targets.csv"} <= set(files), files
    assert len(files) < 8, files
    with open(os.path.join(out, "gpu_check.log")) as f:
        logged = f.read()
    assert "SKIP build: no CUDA device" in logged and "== summary" in logged and "python " in logged
    stages = _stages_json(out)
    assert stages["mode"] == "quick" and stages["have_gpu"] == 0
    assert stages["stages"]["env"]["status"] == "ok"
    assert stages["stages"]["build"]["status"] == "skipped: no CUDA device"


def test_table_says_not_measured_for_every_target(quick_run):
    import _targets
    _, out, _ = quick_run
    with open(os.path.join(out, "targets.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows
    assert {r["target"] for r in rows} == {t["target"] for t in _targets.TARGETS}
    for r in rows:
        assert r["verdict"] == "not measured", r
        assert r["note"] == "waits for GPU", r
        assert r["baseline_ms"] == r["fused_ms"] == r["ratio"] == "", r  # no figure that was not measured
    with open(os.path.join(out, "targets.md")) as f:
        md = f.read()
    assert md.count("| not measured |") == len(rows)
    assert " us |" not in md and " ms |" not in md


def test_stage_over_budget_is_cut_and_next_stage_runs(tmp_path):
    p, elapsed = _run(tmp_path, RGK_GPU_CHECK_TEST_SLEEP_STAGE="smoke", RGK_GPU_CHECK_TEST_SLEEP_BUDGET="2")
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    assert "== smoke: TIMEOUT (cut at 2s)" in log, log[-3000:]
    after = log[log.index("== smoke: TIMEOUT"):]
    assert "SKIP sanitize: no CUDA device" in after and "== summary: ok" in after
    assert os.path.exists(tmp_path / "targets.md")
    smoke = _stages_json(tmp_path)["stages"]["smoke"]
    assert smoke["status"].startswith("TIMEOUT") and smoke["seconds"] <= 2 + 4, smoke
    assert elapsed < 60


def test_global_deadline_cuts_a_stage_and_keeps_the_summary(tmp_path):
    # deadline 20 s, of which the summary keeps 10: the (sleeping) build stage gets at most
    # 20 - 10 - (time env took) s of its 30 s budget, or none at all on a slow machine
    p, elapsed = _run(tmp_path, RGK_GPU_CHECK_TEST_SLEEP_STAGE="build", RGK_GPU_CHECK_TEST_SLEEP_BUDGET="30",
                      RGK_CHECK_DEADLINE="20")
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    m = re.search(r"== build \(budget 30s, limit (\d+)s\)", log)
    if m:
        assert int(m.group(1)) <= 10, log[-3000:]
        assert re.search(r"== build: TIMEOUT \(cut at \d+s\)", log)
    else:
        assert "SKIP build: global deadline (20s) reached" in log, log[-3000:]
    assert "== summary: ok" in log and os.path.exists(tmp_path / "targets.csv")
    assert elapsed < 30


def test_quick_cases_exist():
    import _targets
    import sanitize_driver
    ids = {}
    for op in ("topk_logprobs", "fork_attention", "reward_select", "argre_refine"):
        mod = importlib.import_module(f"bench_{op}")
        ids[op] = {mod.case_id(c) for c in mod.CASES}
    gen = importlib.import_module("bench_argre_generate")
    ids["argre_generate"] = {f"B{b}-P{gen.PROMPT_LEN}-N{gen.NEW_TOKENS}" for b in (1, 8, 32)}
    e2e = importlib.import_module("bench_args_e2e")  # the cases the ARGS stage runs in --quick
    quick_cases = re.search(r"^ARGS_E2E_QUICK=(\S+)$", _script(), re.M).group(1)
    ids["args_e2e"] = {c.id(128, 10) for c in e2e.parse_cases("--cases", quick_cases)}
    assert list(_targets.QUICK_CASES["args_e2e"]) == [c.id(128, 10) for c in e2e.parse_cases("--cases", quick_cases)]
    assert set(_targets.QUICK_CASES) == set(ids)
    for op, want in _targets.QUICK_CASES.items():
        assert want and set(want) <= ids[op], (op, sorted(set(want) - ids[op]))
    for op in sanitize_driver.OPS:  # builds the case list only; nothing runs
        got = [d for d, _ in sanitize_driver._cases(op, torch, "cpu", quick=True)]
        assert sorted(got) == sorted(sanitize_driver.QUICK[op])


def _stage_env(tmp_path, mode, **env):
    full = dict(os.environ)
    full.pop("RGK_ARGS_E2E_FLAGS", None)
    full.update(ROOT=ROOT, MODE=mode, WORK=str(tmp_path), PY=sys.executable, **env)
    return full


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_args_e2e_stage_command(tmp_path, mode):
    """The ARGS stage's own command line, as gpu_check.sh runs it on a GPU, with --plan added
    (parses every flag, prints the cases and variants, builds nothing): quick = QUICK_CASES,
    the naive reference only in the Llama-3.2-1B B=8 prompt-1024 case, the CUDA-graph loop in
    bf16, and a budget of the stage limit less 12 s."""
    import _targets
    p = subprocess.run(["bash", SCRIPT, "--stage", "bench_args_e2e"], capture_output=True, text=True, timeout=120,
                       env=_stage_env(tmp_path, mode, RGK_STAGE_LIMIT="55", RGK_ARGS_E2E_FLAGS="--plan"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    plan = dict(line.split(": ", 1) for line in p.stdout.splitlines() if ": " in line and "-k10" in line)
    want = _targets.QUICK_CASES["args_e2e"]
    if mode == "quick":
        assert list(plan) == want
    else:
        assert list(plan)[:len(want)] == want and len(plan) == 8
        assert {(c.split("-B")[0], c.split("-B")[1].split("-")[0], c.split("-P")[1].split("-")[0]) for c in plan} \
            == {(s, b, q) for s in ("smollm2-135m", "llama-3.2-1b") for b in ("1", "8") for q in ("128", "1024")}
    for case, keys in plan.items():
        keys = keys.split(", ")
        assert keys[:5] == ["hf", "native_shared", "native_rm", "native_vanilla", "processor"], keys
        assert ("naive" in keys) == case.startswith("llama-3.2-1b-B8-P1024-"), (case, keys)
        assert "floor" not in keys and not any(k.startswith(("dynamic", "compiled")) for k in keys)
    assert "device cuda, torch.bfloat16, loop graph, budget 43.0" in p.stdout, p.stdout


def _rec(op, case, impl, **kw):
    return dict(op=op, case=case, impl=impl, device="synthetic", **kw)


def test_target_verdicts_on_synthetic_records(tmp_path):
    """The table logic on made-up records (a unit test of _targets.py; not figures)."""
    import _targets
    recs = [
        _rec("topk_logprobs", "B1-V128256-k10", "torch_log_softmax_topk", graph_ms=0.100, eager_ms=0.2),
        _rec("topk_logprobs", "B1-V128256-k10", "torch_topk_logsumexp", graph_ms=0.080, eager_ms=0.3),
        _rec("topk_logprobs", "B1-V128256-k10", "cuda", graph_ms=0.010, eager_ms=0.05, correct=True),
        _rec("topk_logprobs", "B1-V128256-k10", "triton", graph_ms=0.040, eager_ms=0.05, correct=True),
        _rec("argre_refine", "B1-d2048", "torch_autograd", eager_ms=2.0, B=1),
        _rec("argre_refine", "B1-d2048", "cuda", eager_ms=0.05, graph_ms=0.01, B=1, correct=False, max_err=1.0),
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = _targets.evaluate(_targets.load_records([str(path)]), quick=True)
    by = {(r["target"].split(" ")[0], r["case"], r["fused"]): r for r in rows}
    cuda = by[("topk_logprobs", "B1-V128256-k10", "cuda")]
    assert cuda["verdict"] == "PASS" and cuda["ratio"] == pytest.approx(8.0)  # vs the faster baseline (0.08)
    assert cuda["baseline"] == "torch_topk_logsumexp"
    assert by[("topk_logprobs", "B1-V128256-k10", "triton")]["verdict"] == "FAIL"  # 2x < 4x
    missing = by[("topk_logprobs", "B64-V262144-k10", "cuda")]  # planned by QUICK_CASES, never measured
    assert missing["verdict"] == "not measured" and missing["ratio"] is None and missing["fused_ms"] is None
    wrong = by[("argre_refine", "B1-d2048", "cuda")]
    assert wrong["verdict"] == "FAIL" and "WRONG RESULT" in wrong["note"] and wrong["required"] == 20.0
    assert by[("argre_refine", "B64-d2048", "cuda")]["required"] == 5.0
    assert _targets.main([str(path), "--quick", "--out-dir", str(tmp_path)]) == 1  # a FAIL row
    assert (tmp_path / "targets.md").exists() and (tmp_path / "targets.csv").exists()


CAPTURE_RULE = r"""
import torch
from rgk.ops import _backend
assert _backend.cuda_ext() is not None, "no extension"
g = torch.Generator(device="cuda").manual_seed(0)
rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g)
fork = (rnd(2, 4, 3, 64), rnd(2, 2, 700, 64), rnd(2, 2, 700, 64), rnd(2, 2, 3, 64), rnd(2, 2, 3, 64),
        torch.zeros(2, dtype=torch.int32, device="cuda"), torch.full((2,), 700, dtype=torch.int32, device="cuda"))
logits = torch.randn(2, 20000, device="cuda", generator=g)
call = {"fork_attention": lambda: torch.ops.rgk.fork_attention(*fork, 0.125),
        "topk_logprobs": lambda: torch.ops.rgk.topk_logprobs(logits, 10)[0]}
# 1. the first call of the process inside a capture: no counter buffer may be made there
graph = torch.cuda.CUDAGraph()
try:
    with torch.cuda.graph(graph):
        call["fork_attention"]()
except RuntimeError as e:
    assert "outside capture" in str(e), str(e)
else:
    raise SystemExit("a capture with no warm-up did not raise")
torch.cuda.synchronize()
# 2. after one call outside capture (on the default stream), capturing on torch's capture stream works
for name, fn in call.items():
    want = fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = fn()
    for _ in range(3):  # the kernels leave the counters zeroed: every replay equals eager
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got, want), name
    assert torch.equal(fn(), want), name  # eager after the replays, too
print("CAPTURE RULE OK")
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_capture_rule():
    """csrc/bindings.cpp never allocates or zeroes its counter buffers inside a capture: a
    capture before any warm-up raises a clear error; after a warm-up it captures and replays."""
    from rgk.ops import _backend
    if _backend.cuda_ext() is None:
        pytest.skip("the rgk._C extension is not built")
    p = subprocess.run([sys.executable, "-c", CAPTURE_RULE], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0 and "CAPTURE RULE OK" in p.stdout, p.stdout[-2000:] + p.stderr[-4000:]


def test_sanitizer_log_verdicts(tmp_path):
    """sanitize_driver.py --parse on made-up compute-sanitizer logs: clean, a report, a cut run."""
    import sanitize_driver
    ops = ["topk_logprobs", "fork_attention"]
    clean = tmp_path / "clean.txt"
    clean.write_text("========= COMPUTE-SANITIZER\nRGK_SANITIZE topk_logprobs begin\nRGK_SANITIZE topk_logprobs end ok\n"
                     "RGK_SANITIZE fork_attention begin\nRGK_SANITIZE fork_attention end ok\n"
                     "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n")
    assert sanitize_driver.parse(str(clean), "racecheck", str(tmp_path / "c.json"), ops) == 0
    assert json.loads((tmp_path / "c.json").read_text())["kernels"]["fork_attention"]["verdict"] == "clean"
    bad = tmp_path / "bad.txt"
    bad.write_text("RGK_SANITIZE topk_logprobs begin\n"
                   "========= Error: Race reported between Write access at void rgk::topk_logprobs_kernel<float, 8>\n"
                   "RGK_SANITIZE topk_logprobs end ok\nRGK_SANITIZE fork_attention begin\n")
    assert sanitize_driver.parse(str(bad), "racecheck", str(tmp_path / "b.json"), ops) == 1
    kernels = json.loads((tmp_path / "b.json").read_text())["kernels"]
    assert kernels["topk_logprobs"]["verdict"].startswith("NOT CLEAN")
    assert kernels["fork_attention"]["verdict"].startswith("INCOMPLETE")  # cut before its end marker
    assert set(kernels) == set(ops)
