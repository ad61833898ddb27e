"""Speed targets of the fused kernels and the summary of a benchmark run.

    python benchmarks/_targets.py RESULTS... [--out-dir DIR] [--quick] [--no-gpu]

RESULTS are pytest-benchmark JSON files (--benchmark-json) and/or the JSONL records the
suites append to $RGK_BENCH_RECORDS (see _timing.py); the same measurement read twice counts
once; missing files are skipped.  Prints ONE table — target, case, fused implementation,
timing mode, baseline median, fused median, measured ratio, required ratio, verdict — and
writes DIR/targets.md, DIR/targets.csv and DIR/targets.png (matplotlib needed for the PNG).

Verdicts: PASS / FAIL when both sides were measured in the same run; "not measured" when a
planned row has no measurement (the note says why: "waits for GPU" with --no-gpu, else
skipped, killed at its time limit or errored); "reported" for figures that have no
required ratio.  No figure is ever filled in that was not measured.  The planned
rows are every case of QUICK_CASES with --quick (the cases `gpu_check.sh --quick` runs), else
every case found in the results, and at least one row per target.

A row passes when baseline_median / fused_median >= required, both measured in the same run
in the target's mode, and the fused output matched the reference in that run.  Timing modes
(_timing.py): "graph" is device time of CUDA-graph replays, "eager" is the per-call cost of a
Python loop.  Kernel-level targets are judged on graph time (a stricter test than eager: the
PyTorch compositions are several launches, whose Python overhead it leaves out); argre_refine
is judged on eager time because its baseline is a Python autograd loop; ARGS end to end
(bench_args_e2e.py) on synchronised wall time per generated token ("eager" here), each side
the median of its timed runs in one process.  When a side could
not be captured in a graph, that row falls back to eager for both sides and says so.
Exit status: 0 when every row is PASS or reported, 1 when any row FAILs, 2 when nothing
failed but some row was not measured.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys

_E2E = dict(op="args_e2e", mode="eager")
HF, SHARED, RM, VANILLA = ("HF greedy generate", "native ARGS, shared head", "native ARGS, separate RM",
                           "native vanilla greedy")
PROCESSOR, NAIVE = "processor in generate (separate RM)", "naive ARGS (shared head)"
CUSTOM = "custom_generate in generate (shared head)"
#: the native shared-head loop's name when it is timed in alternation with custom_generate
CUSTOM_BASE = SHARED + " (paired with custom_generate)"
ARGS_GPU_TARGETS = [
    dict(_E2E, target="ARGS native shared head >= 8x HF greedy generate's tokens/s", baselines=[HF], fused=[SHARED],
         required=lambda r: 8.0, backend="cuda"),
    dict(_E2E, target="ARGS native shared head time/token <= 1.3x native vanilla's (ratio >= 0.769)",
         baselines=[VANILLA], fused=[SHARED], required=lambda r: 1 / 1.3, backend="cuda"),
    dict(_E2E, target="ARGS native separate RM >= 5x HF greedy generate's tokens/s", baselines=[HF], fused=[RM],
         required=lambda r: 5.0, backend="cuda"),
    dict(_E2E, target="ARGS native separate RM time/token <= 2.3x native vanilla's (ratio >= 0.435)",
         baselines=[VANILLA], fused=[RM], required=lambda r: 1 / 2.3, backend="cuda"),
    dict(_E2E, target="ARGS processor in generate time/token <= 1.15x HF greedy's (ratio >= 0.870)", baselines=[HF],
         fused=[PROCESSOR], required=lambda r: 1 / 1.15, backend="cuda"),
    dict(_E2E, target="ARGS native shared head >= 20x naive ARGS (B=8, prompt 1024, Llama-3.2-1B shape)",
         baselines=[NAIVE], fused=[SHARED], required=lambda r: 20.0, backend="cuda",
         case_re=r"^llama-3\.2-1b-B8-P1024-"),
]
# ARGS end to end on CPU (the real SmolLM2): not part of the GPU check; bench_args_e2e.py
# prints them for its CPU runs.  The floors are forwards against the prefix cache measured
# in the same run (bench_args_e2e.floor_ms).
ARGS_CPU_TARGETS = [
    dict(_E2E, target=f"ARGS CPU: {name} within 5% of its compute floor (floor / loop >= 0.952)", baselines=[floor],
         fused=[name], required=lambda r: 1 / 1.05, backend="cpu")
    for name, floor in ((SHARED, "floor: k-token LM forward"), (RM, "floor: 1-token LM + k-token RM forward"),
                        (VANILLA, "floor: 1-token LM forward"))
] + [
    dict(_E2E, target="ARGS CPU: processor in generate time/token <= 1.1x the native separate-RM loop's "
                      "(ratio >= 0.909)",
         baselines=[RM], fused=[PROCESSOR], required=lambda r: 1 / 1.1, backend="cpu"),
]

# the same with `--paired`: each loop alternated with its floor in one stretch of time
ARGS_CPU_PAIRED_TARGETS = [
    dict(_E2E, target=f"ARGS CPU (paired): {name} within 5% of its compute floor (floor / loop >= 0.952)",
         baselines=[floor + " (paired)"], fused=[name + " (paired)"], required=lambda r: 1 / 1.05, backend="cpu")
    for name, floor in ((SHARED, "floor: k-token LM forward"), (RM, "floor: 1-token LM + k-token RM forward"),
                        (VANILLA, "floor: 1-token LM forward"))
] + [
    dict(_E2E, target="ARGS CPU (paired): processor in generate time/token <= 1.1x the native separate-RM loop's "
                      "(ratio >= 0.909)",
         baselines=[RM + " (paired with the processor)"], fused=[PROCESSOR + " (paired)"], required=lambda r: 1 / 1.1,
         backend="cpu"),
    dict(_E2E, target="ARGS CPU (paired): custom_generate time/token within 3% of args_generate's, same loop "
                      "(ratio >= 0.971)",
         baselines=[CUSTOM_BASE], fused=[CUSTOM + " (paired)"], required=lambda r: 1 / 1.03, backend="cpu"),
]

TARGETS = [
    dict(op="topk_logprobs", target="topk_logprobs >= 4x log_softmax+topk (bf16)",
         baselines=["torch_log_softmax_topk", "torch_topk_logsumexp"], mode="graph", required=lambda r: 4.0),
    dict(op="fork_attention", target="fork_attention >= 3x prefix expanded k times + SDPA",
         baselines=["torch_expand_sdpa"], mode="graph", required=lambda r: 3.0),
    dict(op="fork_attention", target="fork_attention >= 1.5x one SDPA call with a tree mask",
         baselines=["torch_tree_sdpa", "torch_tree_sdpa_mha"], mode="graph", required=lambda r: 1.5),
    dict(op="reward_select", target="reward_select >= 3x PyTorch composition",
         baselines=["torch_reference"], mode="graph", required=lambda r: 3.0),
    dict(op="argre_refine", target="argre_refine >= 20x (B=1) / 5x (B=64) autograd loop",
         baselines=["torch_autograd"], mode="eager", required=lambda r: 20.0 if r.get("B") == 1 else 5.0,
         required_label="20x at B=1, 5x at B>1"),
    # end to end: unedited / edited per-token time >= 1/1.05, i.e. editing adds <= 5%
    dict(op="argre_generate", target="ARGRE editing adds <= 5% per generated token (ratio >= 0.952)",
         baselines=["unedited"], mode="eager", required=lambda r: 1 / 1.05, fused=["cuda", "triton", "torch"],
         measured_only=True),
    # ARGS end to end on CUDA (bench_args_e2e.py: random weights of SmolLM2-135M's and
    # Llama-3.2-1B's shapes, CUDA-graph native loop), ms per generated token, same run.
    # "within Nx of vanilla" reads vanilla / ARGS >= 1/N; "processor <= 1.15x greedy's time"
    # reads greedy / processor >= 1/1.15.
    *ARGS_GPU_TARGETS,
]
FUSED = ["cuda", "triton"]

# The cases that decide each target in `gpu_check.sh --quick` (a small-batch and a large-batch
# case per kernel; ARGS end to end: the Llama-3.2-1B-shaped B=8 prompt-1024 case and the
# SmolLM2-135M-shaped B=1 prompt-128 case, 128 new tokens, k=10).  The benchmark suites run
# exactly these when RGK_BENCH_QUICK=1 (_timing.quick_cases); tests/test_gpu_check.py checks
# that every id is one of its suite's case ids.
QUICK_CASES = {
    "topk_logprobs": ["B1-V128256-k10", "B64-V262144-k10"],
    "fork_attention": ["B1-L4096-h32x8-d128", "B8-L2048-h9x3-d64"],
    "reward_select": ["linear-B1-d576", "mlp1024-B64-d2048"],
    "argre_refine": ["B1-d2048", "B64-d2048"],
    "argre_generate": ["B1-P32-N64"],
    "args_e2e": ["llama-3.2-1b-B8-P1024-N128-k10", "smollm2-135m-B1-P128-N128-k10"],
}
COLUMNS = ["target", "case", "fused", "mode", "baseline", "baseline_ms", "fused_ms", "ratio", "required", "verdict",
           "note"]
NOT_MEASURED = "not measured"


def load_records(paths: list[str]) -> list[dict]:
    """extra_info dicts from pytest-benchmark JSON files and records from JSONL files."""
    recs = {}
    for path in paths:
        if not os.path.exists(path):
            print(f"[summary] {path}: not found, skipped", file=sys.stderr)
            continue
        with open(path) as f:
            text = f.read()
        items = []
        try:
            data = json.loads(text)
            if isinstance(data, dict) and "benchmarks" in data:
                items = [b.get("extra_info", {}) for b in data["benchmarks"]]
            elif isinstance(data, dict):
                items = [data]
        except json.JSONDecodeError:
            for line in text.splitlines():
                line = line.strip()
                if line:
                    try:
                        items.append(json.loads(line))
                    except json.JSONDecodeError:
                        print(f"[summary] {path}: unreadable line skipped", file=sys.stderr)
        for r in items:
            if isinstance(r, dict) and {"op", "case", "impl"} <= r.keys():
                recs[(r["op"], r["case"], r["impl"])] = r
    return list(recs.values())


def _ms(rec: dict | None, mode: str):
    return None if rec is None else rec.get(f"{mode}_ms")


def _fmt_ms(x):
    return "-" if x is None else (f"{x * 1000:.1f} us" if x < 1 else f"{x:.3f} ms")


def _case_key(case: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", case)]


def _applies(t: dict, case: str, impls: dict | None) -> bool:
    """Whether target t judges this case: its case pattern, and (for measured cases) the
    backend its records were measured on ("cuda" / "cpu", set by bench_args_e2e.py)."""
    if t.get("case_re") and not re.search(t["case_re"], case):
        return False
    if t.get("backend") and impls is not None:
        return any(r.get("backend") == t["backend"] for r in impls.values())
    return True


def evaluate(records: list[dict], quick: bool = False, why_missing: str = "", targets: list[dict] | None = None
             ) -> list[dict]:
    """One row per (target, planned case, fused implementation); targets default to TARGETS."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in records:
        by_case.setdefault((r["op"], r["case"]), {})[r["impl"]] = r
    rows = []
    for t in TARGETS if targets is None else targets:
        found = {c for (op, c) in by_case if op == t["op"] and _applies(t, c, by_case[(op, c)])}
        planned = {c for c in QUICK_CASES.get(t["op"], []) if _applies(t, c, None)} if quick else set()
        cases = sorted(found | planned, key=_case_key)
        if not cases:
            rows.append(_missing(t, "all cases", "-", why_missing or "no measurement in the results"))
            continue
        for case in cases:
            impls = by_case.get((t["op"], case), {})
            fused_names = t.get("fused", FUSED)
            if t.get("measured_only"):  # end to end: only the implementation the default dispatch picked
                present = [f for f in fused_names if f in impls]
                if not present:
                    rows.append(_missing(t, case, "default", why_missing or "not measured in this run"))
                    continue
                fused_names = present
            for fused in fused_names:
                rows.append(_row(t, case, fused, impls, why_missing))
    return rows


def _missing(t, case, fused, note) -> dict:
    row = dict(target=t["target"], case=case, fused=fused, mode=t["mode"], baseline="-", baseline_ms=None,
               fused_ms=None, ratio=None, required=None, verdict=NOT_MEASURED, note=note)
    if t["required"] is not None:
        if t.get("required_label") and case == "all cases":
            row["required_label"] = t["required_label"]  # depends on the case: no single number
        else:
            row["required"] = t["required"]({})
    return row


def _row(t, case, fused, impls, why_missing="") -> dict:
    f = impls.get(fused)
    ctx = dict(f or next(iter(impls.values()), {}))
    m = re.search(r"(?:^|-)B(\d+)(?:-|$)", case)  # the batch size, also when nothing was measured
    if "B" not in ctx and m:
        ctx["B"] = int(m.group(1))
    row = _missing(t, case, fused, "")
    row["required"] = None if t["required"] is None else t["required"](ctx)
    if f is None:
        row["note"] = why_missing or "not measured (skipped, cut at its time limit, or not built)"
        return row
    if f.get("error"):
        row["verdict"] = "FAIL"
        row["note"] = "error: " + f["error"][:120]
        return row
    notes = []
    mode = t["mode"]
    bases = [impls[b] for b in t["baselines"] if b in impls and not impls[b].get("error")]
    if not bases:
        row["note"] = "baseline not measured"
        return row
    if mode == "graph" and (_ms(f, "graph") is None or any(_ms(b, "graph") is None for b in bases)):
        mode = "eager"
        notes.append("graph capture failed on one side: eager for both")
    base = min(bases, key=lambda b: _ms(b, mode) if _ms(b, mode) is not None else float("inf"))
    bms, fms = _ms(base, mode), _ms(f, mode)
    row.update(mode=mode, baseline=base["impl"], baseline_ms=bms, fused_ms=fms)
    if bms is None or fms is None or fms <= 0:
        row["note"] = "; ".join(notes + ["timing missing"])
        return row
    row["ratio"] = bms / fms
    if f.get("correct") is False:
        notes.append(f"WRONG RESULT (max err {f.get('max_err')})")
    if t["op"] == "fork_attention" and f.get("prefix_bytes"):
        gbps = f["prefix_bytes"] / (fms * 1e-3) / 1e9
        note = f"{gbps:.0f} GB/s reading the prefix once"
        if f.get("copy_gbps"):
            note += f" ({100 * gbps / f['copy_gbps']:.0f}% of {f['copy_gbps']:.0f} GB/s copy)"
        notes.append(note)
    if t["op"] == "args_e2e":
        if f.get("rounds"):
            notes.append(f"median of {f['rounds']} run(s) vs {base.get('rounds', '?')}")
        if f.get("weights"):
            notes.append(f"{f['weights']} weights, {f.get('dtype', '?')}")
    other = "graph" if mode == "eager" else "eager"
    if _ms(base, other) and _ms(f, other):
        notes.append(f"{other} ratio {_ms(base, other) / _ms(f, other):.1f}x")
    if row["required"] is None:
        row["verdict"] = "reported"
    else:
        row["verdict"] = "PASS" if row["ratio"] >= row["required"] and f.get("correct") is not False else "FAIL"
    row["note"] = "; ".join(notes)
    return row


def _cells(r: dict) -> list[str]:
    base = "-" if r["baseline_ms"] is None else f"{_fmt_ms(r['baseline_ms'])} ({r['baseline']})"
    return [r["target"], r["case"], r["fused"], r["mode"], base, _fmt_ms(r["fused_ms"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r.get("required_label") or ("-" if r["required"] is None else f"{r['required']:.3g}x"), r["verdict"],
            r["note"]]


HEAD = ["target", "case", "fused", "mode", "baseline median", "fused median", "ratio", "required", "verdict", "note"]


def tally(rows: list[dict]) -> str:
    n = {v: sum(r["verdict"] == v for r in rows) for v in ("PASS", "FAIL", NOT_MEASURED, "reported")}
    return (f"{n['PASS']} PASS, {n['FAIL']} FAIL, {n[NOT_MEASURED]} not measured, {n['reported']} reported "
            f"of {len(rows)} rows")


def print_table(rows: list[dict], device: str, title: str = "rgk fused-kernel targets") -> None:
    print(f"\n{title} — {device}")
    body = [_cells(r) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(HEAD[:-1])]
    line = "  ".join(h.ljust(w) for h, w in zip(HEAD, widths))
    print(line)
    print("-" * len(line))
    last = None
    for r, b in zip(rows, body):
        if last is not None and r["target"] != last:
            print()
        last = r["target"]
        print("  ".join(x.ljust(w) for x, w in zip(b, widths)) + (f"   {b[-1]}" if b[-1] else ""))
    print(f"\n{tally(rows)}")


def write_markdown(rows: list[dict], path: str, device: str, title: str) -> None:
    def esc(x):
        return str(x).replace("|", "\\|")
    with open(path, "w") as f:
        f.write(f"# {title}\n\nDevice: {device}.  {tally(rows)}.\n\n")
        f.write("| " + " | ".join(HEAD) + " |\n|" + " --- |" * len(HEAD) + "\n")
        for r in rows:
            f.write("| " + " | ".join(esc(c) for c in _cells(r)) + " |\n")
        f.write("\nratio = baseline median / fused median, both from this run in the row's timing mode "
                "(graph: CUDA-graph replay device time; eager: per-call time from a Python loop).  "
                "\"not measured\" rows carry no figure.\n")


def write_csv(rows: list[dict], path: str, device: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + ["device"], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "device": device})


def plot(rows: list[dict], path: str, device: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[summary] matplotlib is not installed: no PNG (re-run this script where it is)", file=sys.stderr)
        return False
    shown = [r for r in rows if r["ratio"] is not None]
    if not shown:  # a picture of what is missing, with no number in it
        targets = list(dict.fromkeys(r["target"] for r in rows))
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(targets) + 1.2))
        ax.axis("off")
        ax.set_title(f"rgk targets — {device}: no measurement", fontsize=9)
        for i, t in enumerate(targets):
            note = next((r["note"] for r in rows if r["target"] == t and r["note"]), "")
            ax.text(0.0, 1 - (i + 0.5) / len(targets), f"{t}: not measured" + (f" ({note})" if note else ""),
                    fontsize=7, va="center", transform=ax.transAxes)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return True
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.22 * len(shown) + 1.5)))
    ys = list(range(len(shown)))[::-1]
    colors = ["tab:green" if r["verdict"] == "PASS" else "tab:grey" if r["verdict"] == "reported" else "tab:red"
              for r in shown]
    ax.barh(ys, [r["ratio"] for r in shown], color=colors, height=0.7)
    req = [(y, r["required"]) for y, r in zip(ys, shown) if r["required"] is not None]
    if req:
        ax.scatter([q for _, q in req], [y for y, _ in req], marker="|", s=120, color="black", zorder=3,
                   label="required")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r['target'].split(' ')[0]} {r['case']} [{r['fused']}, vs {r['baseline']}]" for r in shown],
                       fontsize=6)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("baseline / fused time (log scale; kernels: speed-up over PyTorch); green = meets its target, "
                  "red = misses it, grey = reported only")
    ax.set_title(f"rgk fused kernels vs PyTorch — {device}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="*", help="pytest-benchmark JSON files and/or JSONL record files")
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--quick", action="store_true", help="plan the rows of QUICK_CASES (gpu_check.sh --quick)")
    p.add_argument("--no-gpu", action="store_true", help="this run had no CUDA device: missing rows wait for GPU")
    p.add_argument("--title", default="rgk GPU check: targets")
    a = p.parse_args(argv)
    records = load_records(a.results)
    if not records:
        print("[summary] no benchmark records found" + (" (no CUDA device in this run)" if a.no_gpu else ""))
    device = next((r.get("device") for r in records if r.get("device")), None)
    device = device or ("no CUDA device" if a.no_gpu else "unknown device")
    rows = evaluate(records, quick=a.quick, why_missing="waits for GPU" if a.no_gpu else "")
    print_table(rows, device)
    os.makedirs(a.out_dir, exist_ok=True)
    paths = {ext: os.path.join(a.out_dir, f"targets.{ext}") for ext in ("md", "csv", "png")}
    write_markdown(rows, paths["md"], device, a.title)
    write_csv(rows, paths["csv"], device)
    wrote = [paths["md"], paths["csv"]]
    if plot(rows, paths["png"], device):
        wrote.append(paths["png"])
    print(f"[summary] wrote {', '.join(wrote)}")
    if any(r["verdict"] == "FAIL" for r in rows):
        return 1
    return 2 if any(r["verdict"] == NOT_MEASURED for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
