"""Speed targets of the fused kernels and the summary of a benchmark run.

    python benchmarks/_targets.py RESULTS... [--out-dir benchmarks/results] [--stamp NAME]

RESULTS are pytest-benchmark JSON files (--benchmark-json) and/or the JSONL records the
suites append to $RGK_BENCH_RECORDS (see _timing.py); the same measurement read twice counts
once.  Prints ONE table — target, case, fused implementation, timing mode, baseline median,
fused median, measured ratio, required ratio, PASS/FAIL — and writes
<out-dir>/gpu_check_<stamp>.csv and .png (ratios against the targets; matplotlib needed).

A row passes when baseline_median / fused_median >= required, both measured in the same run
in the target's mode, and the fused output matched the reference in that run.  Timing modes
(_timing.py): "graph" is device time of CUDA-graph replays, "eager" is the per-call cost of a
Python loop.  Kernel-level targets are judged on graph time (a stricter test than eager: the
PyTorch compositions are several launches, whose Python overhead it leaves out); argre_refine
is judged on eager time because its baseline is a Python autograd loop.  When a side could
not be captured in a graph, that row falls back to eager for both sides and says so.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

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
         baselines=["torch_autograd"], mode="eager", required=lambda r: 20.0 if r.get("B") == 1 else 5.0),
    # end to end: unedited / edited per-token time >= 1/1.05, i.e. editing adds <= 5%
    dict(op="argre_generate", target="ARGRE editing adds <= 5% per generated token (ratio >= 0.952)",
         baselines=["unedited"], mode="eager", required=lambda r: 1 / 1.05, measured_only=True),
]
FUSED = ["cuda", "triton"]
COLUMNS = ["target", "case", "fused", "mode", "baseline", "baseline_ms", "fused_ms", "ratio", "required", "verdict",
           "note"]


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
            if {"op", "case", "impl"} <= r.keys():
                recs[(r["op"], r["case"], r["impl"])] = r
    return list(recs.values())


def _ms(rec: dict | None, mode: str):
    return None if rec is None else rec.get(f"{mode}_ms")


def _fmt_ms(x):
    return "-" if x is None else (f"{x * 1000:.1f} us" if x < 1 else f"{x:.3f} ms")


def evaluate(records: list[dict]) -> list[dict]:
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in records:
        by_case.setdefault((r["op"], r["case"]), {})[r["impl"]] = r
    rows = []
    for t in TARGETS:
        cases = sorted((c for (op, c) in by_case if op == t["op"]), key=_case_key)
        for case in cases:
            impls = by_case[(t["op"], case)]
            any_rec = next(iter(impls.values()))
            for fused in FUSED:
                if t.get("measured_only") and fused not in impls:
                    continue  # end-to-end rows time only the implementation the default dispatch picked
                rows.append(_row(t, case, fused, impls, any_rec))
    return rows


def _case_key(case: str):
    import re
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", case)]


def _row(t, case, fused, impls, any_rec) -> dict:
    required = t["required"](any_rec)
    row = dict(target=t["target"], case=case, fused=fused, mode=t["mode"], baseline="-", baseline_ms=None,
               fused_ms=None, ratio=None, required=required, verdict="FAIL", note="")
    f = impls.get(fused)
    if f is None:
        row["note"] = "not measured (skipped or missing)"
        return row
    if f.get("error"):
        row["note"] = "error: " + f["error"][:120]
        return row
    notes = []
    mode = t["mode"]
    bases = [impls[b] for b in t["baselines"] if b in impls and not impls[b].get("error")]
    if not bases:
        row["note"] = "no baseline measured"
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
    other = "graph" if mode == "eager" else "eager"
    if _ms(base, other) and _ms(f, other):
        notes.append(f"{other} ratio {_ms(base, other) / _ms(f, other):.1f}x")
    row["verdict"] = "PASS" if row["ratio"] >= required and f.get("correct") is not False else "FAIL"
    row["note"] = "; ".join(notes)
    return row


def print_table(rows: list[dict], device: str) -> None:
    print(f"\nrgk fused-kernel targets — {device}")
    head = ["target", "case", "fused", "mode", "baseline median", "fused median", "ratio", "required", "verdict"]
    body = [[r["target"], r["case"], r["fused"], r["mode"], f"{_fmt_ms(r['baseline_ms'])} ({r['baseline']})",
             _fmt_ms(r["fused_ms"]), "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", f"{r['required']:g}x",
             r["verdict"]] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line)
    print("-" * len(line))
    last = None
    for r, b in zip(rows, body):
        if last is not None and r["target"] != last:
            print()
        last = r["target"]
        print("  ".join(x.ljust(w) for x, w in zip(b, widths)) + (f"   {r['note']}" if r["note"] else ""))
    n_pass = sum(r["verdict"] == "PASS" for r in rows)
    print(f"\n{n_pass} PASS, {len(rows) - n_pass} FAIL of {len(rows)} rows")


def write_csv(rows: list[dict], path: str, device: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + ["device"])
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
    if not shown:
        return False
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.22 * len(shown) + 1.5)))
    ys = list(range(len(shown)))[::-1]
    colors = ["tab:green" if r["verdict"] == "PASS" else "tab:red" for r in shown]
    ax.barh(ys, [r["ratio"] for r in shown], color=colors, height=0.7)
    ax.scatter([r["required"] for r in shown], ys, marker="|", s=120, color="black", zorder=3, label="required")
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r['target'].split(' ')[0]} {r['case']} [{r['fused']}, vs {r['baseline']}]" for r in shown],
                       fontsize=6)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("speed-up over the PyTorch baseline (log scale); bar green = meets its target")
    ax.set_title(f"rgk fused kernels vs PyTorch — {device}", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="*", help="pytest-benchmark JSON files and/or JSONL record files")
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--stamp", default=time.strftime("%Y%m%d-%H%M%S"))
    a = p.parse_args(argv)
    records = load_records(a.results)
    if not records:
        print("[summary] no benchmark records found: nothing to compare")
        return 1
    device = next((r.get("device") for r in records if r.get("device")), "unknown device")
    rows = evaluate(records)
    print_table(rows, device)
    os.makedirs(a.out_dir, exist_ok=True)
    csv_path = os.path.join(a.out_dir, f"gpu_check_{a.stamp}.csv")
    write_csv(rows, csv_path, device)
    print(f"[summary] wrote {csv_path}")
    png = os.path.join(a.out_dir, f"gpu_check_{a.stamp}.png")
    if plot(rows, png, device):
        print(f"[summary] wrote {png}")
    return 0 if rows and all(r["verdict"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
