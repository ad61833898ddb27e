"""benchmarks/bench_args_e2e.py on CPU: the shapes of the GPU mode, the random-weight
models it builds (with one layer), a whole run through the GPU mode's code (random weights,
--cases, --budget, --warmup-new, records, JSON/Markdown/PNG), the time budget leaving
variants out without a figure, argument errors, the pytest-benchmark entry, and the ARGS
targets of _targets.py on made-up records.  Timings of these tiny runs mean nothing and
are not checked."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import _targets  # noqa: E402
import bench_args_e2e as e2e  # noqa: E402


def test_shapes_are_the_real_configs():
    s = e2e.model_config("smollm2-135m")
    assert (s.hidden_size, s.num_hidden_layers, s.num_attention_heads, s.num_key_value_heads, s.intermediate_size,
            s.vocab_size, s.head_dim, s.tie_word_embeddings) == (576, 30, 9, 3, 1536, 49152, 64, True)
    assert e2e.rope_theta(s) == 100000.0
    ll = e2e.model_config("llama-3.2-1b")
    assert (ll.hidden_size, ll.num_hidden_layers, ll.num_attention_heads, ll.num_key_value_heads,
            ll.intermediate_size, ll.vocab_size, ll.head_dim, ll.tie_word_embeddings) == \
        (2048, 16, 32, 8, 8192, 128256, 64, True)
    assert e2e.rope_theta(ll) == 500000.0
    assert e2e.model_config("llama-3.2-1b", layers=1).num_hidden_layers == 1
    with pytest.raises(ValueError, match="--shapes"):
        e2e.model_config("gpt-17")


def test_random_llama_1b_shape_builds_in_bf16():
    m, desc = e2e.build_model("llama-3.2-1b", "cpu", torch.bfloat16, random_weights=True, layers=1)
    assert desc == "random (llama-3.2-1b shape, 1 layers)"
    emb = m.get_input_embeddings().weight
    assert emb.shape == (128256, 2048) and emb.dtype == torch.bfloat16
    assert m.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # tied
    layer = m.model.layers[0]
    assert layer.self_attn.k_proj.weight.shape == (8 * 64, 2048)
    assert layer.mlp.up_proj.weight.shape == (8192, 2048)
    assert m.config._attn_implementation == "sdpa"
    del m


def _resolve(argv):
    ap = e2e.parser()
    return e2e.resolve(ap.parse_args(argv), ap)


def test_gpu_mode_settings():
    """What the GPU run will use, decided without a GPU."""
    ns = _resolve(["--device", "cuda", "--random-weights", "--cases", "llama-3.2-1b:8:1024,smollm2-135m:1:128",
                   "--budget", "40"])
    assert ns.loop == "graph" and ns.dtype == torch.bfloat16 and ns.floor is False
    assert ns.keys == list(e2e.CORE)
    assert e2e.case_keys(ns, ns.case_list[0])[-1] == "naive"  # auto + budget: only B=8, prompt 1024
    assert "naive" not in e2e.case_keys(ns, ns.case_list[1])
    assert _resolve(["--device", "cuda", "--random-weights", "--dtype", "fp16"]).dtype == torch.float16
    cpu = _resolve([])
    assert cpu.loop == "eager" and cpu.dtype == torch.float32 and cpu.floor is True
    assert cpu.case_list == [e2e.Case("smollm2-135m", 1, 128), e2e.Case("smollm2-135m", 4, 128)]
    assert "dynamic_shared" in cpu.keys and "naive" in e2e.case_keys(cpu, cpu.case_list[0])
    assert _resolve(["--variants", "hf,native_shared,dynamic loop"]).keys == ["hf", "native_shared", "dynamic_shared",
                                                                             "dynamic_rm"]


@pytest.mark.parametrize("argv,msg", [
    (["--cases", "smollm2-135m:1"], "--cases: expected shape:batch:prompt"),
    (["--cases", "nope:1:8", "--random-weights"], "--cases: unknown shape"),
    (["--batch", "0"], "--batch: expected integers >= 1"),
    (["--new", "0"], "--new: expected >= 1"),
    (["--budget", "-1"], "--budget"),
    (["--paired", "-1"], "--paired: expected"),
    (["--shapes", "llama-3.2-1b"], "pass --random-weights"),
    (["--variants", "nothing-like-this"], "--variants"),
    (["--device", "tpu"], "--device"),
])
def test_bad_arguments_name_the_argument(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        e2e.main(argv + ["--plan"])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


SMALL = ["--random-weights", "--shapes", "smollm2-135m", "--layers", "1", "--cases",
         "smollm2-135m:1:8,smollm2-135m:2:8", "--new", "2", "--naive-new", "1", "--repeats", "2", "--warmup-new", "1",
         "--naive-cases", "smollm2-135m:2:8", "--budget", "600"]


def test_run_through_the_gpu_mode_code(tmp_path, capsys):
    """Random weights, explicit cases, budget, short warm-ups, records and all outputs."""
    out, rec = tmp_path / "out", tmp_path / "records.jsonl"
    assert e2e.main(SMALL + ["--out", str(out), "--records", str(rec)]) == 0
    text = capsys.readouterr().out
    data = json.loads((out / "args_e2e.json").read_text())
    rows = {r["case"]: r for r in data["rows"]}
    assert list(rows) == ["smollm2-135m-L1-B1-P8-N2-k10", "smollm2-135m-L1-B2-P8-N2-k10"]
    for case, row in rows.items():
        assert not row["skipped"] and not row["errors"], row
        for name in (e2e.HF, e2e.SHARED, e2e.RM, e2e.VANILLA, e2e.PROCESSOR, *e2e.FLOORS):
            assert row["ms"][name] > 0, (case, name)
        assert (e2e.NAIVE in row["ms"]) == case.endswith("B2-P8-N2-k10")
        assert row["rounds"][e2e.HF] in (1, 2) and row["rounds"].get(e2e.NAIVE, 1) == 1
        assert row["ratios"][f"{e2e.PROCESSOR} / {e2e.RM}"] == pytest.approx(row["ms"][e2e.PROCESSOR] /
                                                                               row["ms"][e2e.RM])
    recs = [json.loads(line) for line in rec.read_text().splitlines()]
    assert {r["op"] for r in recs} == {"args_e2e"} and {r["backend"] for r in recs} == {"cpu"}
    assert {(r["case"], r["impl"]) for r in recs} == {(c, n) for c, row in rows.items() for n in row["ms"]
                                                      if not n.startswith("(")}
    # the CPU targets, judged on this run's figures: every row has a verdict and a ratio
    assert {t["target"] for t in data["targets"]} == {t["target"] for t in _targets.ARGS_CPU_TARGETS}
    assert all(t["verdict"] in ("PASS", "FAIL") and t["ratio"] > 0 for t in data["targets"])
    md = (out / "args_e2e.md").read_text()
    assert "## Targets" in md and "| HF greedy generate |" in md
    assert (out / "args_e2e.png").stat().st_size > 10000
    assert "ARGS end-to-end targets" in text
    # nothing a user saved is overwritten
    with pytest.raises(SystemExit):
        e2e.main(SMALL + ["--out", str(out)])
    assert "already holds results" in capsys.readouterr().err


def test_paired_floor_alternation(tmp_path, capsys):
    """--paired N: each native loop alternated N times with its floor; both medians, the
    per-pair ratios and the paired CPU targets land in the outputs."""
    out = tmp_path / "out"
    argv = ["--random-weights", "--shapes", "smollm2-135m", "--layers", "1", "--cases", "smollm2-135m:1:8",
            "--new", "2", "--repeats", "1", "--variants", "native_shared,native_rm,native_vanilla,processor,custom_shared", "--floor",
            "--paired", "3", "--out", str(out)]
    assert e2e.main(argv) == 0
    data = json.loads((out / "args_e2e.json").read_text())
    row = data["rows"][0]
    for name, floor in ((e2e.SHARED, e2e.FLOORS[0]), (e2e.RM, e2e.FLOORS[1]), (e2e.VANILLA, e2e.FLOORS[2])):
        a, b = row["samples_ms"][name + " (paired)"], row["samples_ms"][floor + " (paired)"]
        assert len(a) == len(b) == 3 and min(a + b) > 0
        per = row["paired"][f"{name} / {floor}"]
        assert per["ratios"] == sorted(x / y for x, y in zip(a, b))
        assert per["median"] == pytest.approx(sorted(per["ratios"])[1])
    a, b = row["samples_ms"][e2e.PROCESSOR + " (paired)"], row["samples_ms"][e2e.Bench.PROC_BASE]
    assert len(a) == len(b) == 3
    assert row["paired"][f"{e2e.PROCESSOR} / {e2e.RM}"]["ratios"] == sorted(x / y for x, y in zip(a, b))
    a, b = row["samples_ms"][e2e.CUSTOM + " (paired)"], row["samples_ms"][e2e.Bench.CUSTOM_BASE]
    assert len(a) == len(b) == 3
    assert row["paired"][f"{e2e.CUSTOM} / {e2e.SHARED}"]["ratios"] == sorted(x / y for x, y in zip(a, b))
    paired = {t["target"] for t in data["targets"] if "(paired)" in t["target"]}
    assert paired == {t["target"] for t in _targets.ARGS_CPU_PAIRED_TARGETS}
    assert all(t["verdict"] in ("PASS", "FAIL") for t in data["targets"] if t["target"] in paired)
    assert "| paired ratio (loop and floor alternated) |" in (out / "args_e2e.md").read_text()


def test_spent_budget_leaves_variants_out_without_a_figure(tmp_path, capsys):
    out, rec = tmp_path / "out", tmp_path / "records.jsonl"
    argv = [a if a != "600" else "0.001" for a in SMALL]
    assert e2e.main(argv + ["--out", str(out), "--records", str(rec)]) == 0
    data = json.loads((out / "args_e2e.json").read_text())
    for row in data["rows"]:
        assert row["ms"] == {} and row["rounds"] == {}
        assert set(row["skipped"]) >= {e2e.HF, e2e.SHARED, e2e.RM, e2e.VANILLA, e2e.PROCESSOR}
        assert all("time budget" in why for why in row["skipped"].values())
    assert not rec.exists() or rec.read_text() == ""
    assert all(t["verdict"] == "not measured" and t["ratio"] is None for t in data["targets"])
    assert "not measured: time budget" in (out / "args_e2e.md").read_text()
    assert "SKIP native ARGS, shared head" in capsys.readouterr().out


def test_pytest_benchmark_entry(tmp_path):
    flags = ("--shapes tiny --random-weights --layers 1 --batch 1 --prompt 8 --new 2 --naive-new 1 --repeats 1 "
             "--variants hf,native_shared,naive --no-floor")
    env = {**os.environ, "RGK_ARGS_E2E_FLAGS": flags, "RGK_ARGS_E2E_OUT": str(tmp_path)}
    env.pop("PYTHONSAFEPATH", None)
    # from the repository root, as the README says: `python -m pytest` puts the root first on sys.path
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
                        "benchmarks/bench_args_e2e.py"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "4 passed" in p.stdout, p.stdout[-2000:]
    data = json.loads((tmp_path / "args_e2e.json").read_text())
    assert set(data["rows"][0]["ms"]) == {e2e.HF, e2e.SHARED, e2e.NAIVE}


def _rec(case, impl, ms, backend="cuda"):
    return dict(op="args_e2e", case=case, impl=impl, eager_ms=ms, backend=backend, device="synthetic")


def test_args_gpu_targets_on_synthetic_records():
    """The ARGS rows of the GPU table on made-up figures (a unit test of _targets.py)."""
    big, small = "llama-3.2-1b-B8-P1024-N128-k10", "smollm2-135m-B1-P128-N128-k10"
    recs = [_rec(big, e2e.HF, 20.0), _rec(big, e2e.SHARED, 2.0), _rec(big, e2e.RM, 5.0), _rec(big, e2e.VANILLA, 1.6),
            _rec(big, e2e.PROCESSOR, 22.0), _rec(big, e2e.NAIVE, 50.0),
            _rec(small, e2e.HF, 10.0), _rec(small, e2e.SHARED, 2.0), _rec(small, e2e.VANILLA, 1.0),
            _rec("smollm2-135m-B1-P128-N32-k10", e2e.HF, 40.0, backend="cpu"),  # a CPU run: not a GPU row
            _rec("smollm2-135m-B1-P128-N32-k10", e2e.SHARED, 70.0, backend="cpu")]
    rows = _targets.evaluate(recs, quick=True, targets=_targets.ARGS_GPU_TARGETS)
    by = {(r["target"], r["case"]): r for r in rows}
    g = _targets.ARGS_GPU_TARGETS  # shared vs HF, shared vs vanilla, RM vs HF, RM vs vanilla, processor, naive
    assert [x["fused"][0] for x in g] == [e2e.SHARED, e2e.SHARED, e2e.RM, e2e.RM, e2e.PROCESSOR, e2e.SHARED]
    assert {r["case"] for r in rows} == {big, small}  # the CPU case is not judged by GPU targets

    def row(i, case):
        return by[(g[i]["target"], case)]
    assert row(0, big)["verdict"] == "PASS" and row(0, big)["ratio"] == pytest.approx(10)   # 20 / 2 >= 8
    assert row(0, small)["verdict"] == "FAIL"                                            # 10 / 2 < 8
    assert row(1, big)["ratio"] == pytest.approx(0.8) and row(1, big)["verdict"] == "PASS"  # 1.6 / 2 >= 1/1.3
    assert row(1, small)["verdict"] == "FAIL"                                            # 1 / 2 < 1/1.3
    assert row(2, big)["verdict"] == "FAIL"                                              # 20 / 5 < 5
    assert row(3, big)["verdict"] == "FAIL"                                              # 1.6 / 5 < 1/2.3
    assert row(2, small)["verdict"] == "not measured" and row(2, small)["ratio"] is None  # no figure, no number
    assert row(4, big)["ratio"] == pytest.approx(20 / 22) and row(4, big)["verdict"] == "PASS"  # 22 <= 1.15 * 20
    naive = [r for r in rows if r["target"] == g[5]["target"]]
    assert [r["case"] for r in naive] == [big] and naive[0]["verdict"] == "PASS"         # 50 / 2 >= 20
    cpu = _targets.evaluate(recs, targets=_targets.ARGS_CPU_TARGETS)
    assert {r["case"] for r in cpu} == {"smollm2-135m-B1-P128-N32-k10"}  # only the CPU run's case
    assert all(r["verdict"] == "not measured" and r["ratio"] is None for r in cpu)  # no floors in these records
