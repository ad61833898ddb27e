"""The family matrix (tests/_families.py): every model type in the installed transformers'
causal-LM auto mapping, tiny and random, with prompts longer than its sliding window (8),
decoded with ARGS (k = 4, w = 1, 8 new tokens, a left-padded batch of 3) on the Python
loop, the eager static loop and the LogitsProcessor inside the model's own `generate`,
with the shared head and with a same-family reward model, against the naive oracle; the
compiled loop on families that exercise each fork-pass feature.  Every family ends as exact, refused before any work (with the reason), or
listed as not buildable from a tiny config or not runnable by its own forward — never a
crash inside transformers, never a different token.  One line per family is printed
(pytest -s) and, with RGK_FAMILY_TABLE=path, written as a markdown table (the README's).
"""
from __future__ import annotations

import os
import time

import pytest

import _families as F

# families users bring, which must build and decode exactly (not be refused or unbuilt)
MUST_BE_EXACT = ("llama", "qwen2", "qwen3", "qwen3_moe", "mistral", "mixtral", "gemma", "gemma2", "gemma3_text",
                 "phi3", "olmo2", "gpt_neox", "smollm3", "starcoder2", "gpt_bigcode", "opt", "falcon", "stablelm",
                 "cohere", "granite", "gpt2", "gpt_oss", "gemma3", "gemma3n_text", "gemma4", "gemma4_text",
                 "gptj", "codegen", "mllama", "dbrx", "dots1", "phi4_multimodal", "cohere_compass_text")
# the compiled loop (torch.compile fullgraph) on one family per fork-pass feature: sliding
# windows per layer, soft-caps and a final-logit tail, logit scale, attention without the
# forward's kwargs (Falcon), attention sinks
COMPILED = ("gemma3_text", "gemma2", "cohere", "falcon", "gpt_oss", "qwen2")
# in CI (each compile is ~30 s on two cores): Gemma 2 (per-layer windows, soft-caps, the logit
# tail) and Falcon (attention without the forward's kwargs), shared head; RGK_FAMILY_COMPILED=all
# runs all of COMPILED with both reward kinds
FULL = os.environ.get("RGK_FAMILY_COMPILED") == "all"
COMPILED_RUN = COMPILED if FULL else ("gemma2", "falcon")
COMPILED_KINDS = ("shared", "model") if FULL else ("shared",)
# Falcon's case is tracing (its attention gets no forward kwargs): in CI it compiles with the
# aot_eager backend (dynamo + AOT tracing, no C++ code generation); Gemma 2 with inductor
TRACE_ONLY = () if FULL else ("falcon",)


@pytest.fixture(scope="module")
def matrix():
    t0 = time.time()
    rows = [F.run_family(mt, loops=("dynamic", "eager", "processor")) for mt in F.families()]
    for r in rows:
        if r["family"] in COMPILED_RUN and r["status"] == "exact":
            import rgk.args.decode as D
            backend = D._COMPILE_BACKEND
            D._COMPILE_BACKEND = "aot_eager" if r["family"] in TRACE_ONLY else backend
            try:
                extra = F.run_family(r["family"], loops=("compiled",), reward_kinds=COMPILED_KINDS)
            finally:
                D._COMPILE_BACKEND = backend
            r["loops"].update(extra["loops"])
            if extra["status"] != "exact":
                r["status"], r["detail"] = extra["status"], extra["detail"]
    print(f"\nfamily matrix: {len(rows)} families in {time.time() - t0:.0f} s")
    for r in rows:
        print(f"{r['family']:<28} {r['status']:<12} {_loops(r)} {r['detail']}")
    path = os.environ.get("RGK_FAMILY_TABLE")
    if path:
        with open(path, "w") as f:
            f.write(table(rows))
    return rows


def _loops(r) -> str:
    ok = sorted({k.split("/")[1] for k, v in r["loops"].items() if v.startswith("exact")},
                key=("dynamic", "eager", "compiled", "processor").index)
    return ", ".join(ok) if ok else "-"


def table(rows) -> str:
    out = ["| family | result | loops exact (shared head and reward model) | why / note |", "|---|---|---|---|"]
    for r in rows:
        note = r["detail"].replace("|", "/")
        if any(v == "exact (tie)" for v in r["loops"].values()):
            note = (note + " " if note else "") + "(a float-precision tie in the oracle's scores: either token is exact)"
        out.append(f"| {r['family']} | {r['status']} | {_loops(r) if r['status'] == 'exact' else '-'} | {note} |")
    return "\n".join(out) + "\n"


def test_every_family_is_exact_or_refused(matrix):
    bad = [r for r in matrix if r["status"] in ("WRONG", "crash")]
    assert not bad, "\n".join(f"{r['family']}: {r['status']} {r['loops']} {r['detail']}" for r in bad)
    names = {r["family"] for r in matrix}
    assert names == set(F.families())                           # none skipped silently
    for r in matrix:
        assert r["status"] in ("exact", "refused", "unbuilt", "oracle-fails"), r
        if r["status"] == "exact":
            assert set(r["loops"]) >= {f"{kind}/{loop}" for kind in ("shared", "model")
                                       for loop in ("dynamic", "eager", "processor")}, r
        else:
            assert r["detail"], r                               # a reason, always


def test_the_families_users_bring_are_exact_on_every_loop(matrix):
    by = {r["family"]: r for r in matrix}
    for mt in MUST_BE_EXACT:
        assert by[mt]["status"] == "exact", by[mt]
    for mt in COMPILED_RUN:
        for kind in COMPILED_KINDS:
            assert by[mt]["loops"].get(f"{kind}/compiled", "").startswith("exact"), by[mt]


def test_the_gpu_checks_families_case_runs_on_cpu(tmp_path):
    """benchmarks/families_check.py (gpu_check --quick's Gemma-3/Qwen3 case) with 2 layers, fp32, eager."""
    import json
    import sys
    from pathlib import Path
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import families_check
    out = tmp_path / "families.json"
    rc = families_check.main(["--device", "cpu", "--layers", "2", "--prompt", "80", "--new", "4", "--out", str(out)])
    rows = json.loads(out.read_text())
    assert rc == 0 and [(r["shape"], r["reward"]) for r in rows] == [
        ("gemma3-135m", "shared"), ("gemma3-135m", "model"), ("qwen3-135m", "shared"), ("qwen3-135m", "model")]
    assert all(r["verdict"].startswith("PASS") for r in rows), rows
    assert rows[0]["window"] == 64 < rows[0]["prompt"]


@pytest.mark.parametrize("family", ["ctrl", "dbrx"])
def test_a_family_dynamo_cannot_trace_is_refused_by_the_compiled_loop_in_one_line(family):
    """CTRL's forward does not trace as one graph (a graph break), DBRX's expert routing is
    data-dependent (dynamo's UserError): loop='compiled' says so and names the way out."""
    import torch
    from rgk.args import args_generate
    lm = F.build(family)
    from rgk.models import RewardHead, RewardHeadConfig
    head = RewardHead(RewardHeadConfig(lm.get_output_embeddings().weight.shape[1], "linear"))
    ids, mask = F.prompts()
    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match=rf"^loop: 'compiled' cannot trace model_type '{family}' as one graph .* "
                                           r"use loop='eager'"):
        args_generate(lm, ids, mask, reward=head, loop="compiled", k=4, max_new_tokens=2, eos_token_id=-1,
                      pad_token_id=0)
    out = args_generate(lm, ids, mask, reward=head, loop="eager", k=4, max_new_tokens=2, eos_token_id=-1, pad_token_id=0)
    assert out.sequences.shape[1] == ids.shape[1] + 2


def test_the_matrix_script_resumes_from_its_jsonl(tmp_path, monkeypatch, capsys):
    """python tests/_families.py --jsonl PATH: one JSON row per family appended as it ends;
    a rerun skips the families PATH already holds (long compiled runs stop and resume)."""
    import json
    ran = []

    def fake(mt, loops, reward_kinds):
        ran.append((mt, loops, reward_kinds))
        return {"family": mt, "status": "exact", "detail": "", "seconds": 0.1,
                "loops": {f"{k}/{lp}": "exact" for k in reward_kinds for lp in loops}}
    monkeypatch.setattr(F, "run_family", fake)
    path = tmp_path / "rows.jsonl"
    F.main(["llama", "qwen2", "--only-compiled", "--model-only", "--jsonl", str(path)])
    assert ran == [("llama", ("compiled",), ("model",)), ("qwen2", ("compiled",), ("model",))]
    F.main(["llama", "qwen2", "gemma", "--only-compiled", "--model-only", "--jsonl", str(path)])
    assert [r[0] for r in ran] == ["llama", "qwen2", "gemma"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["family"] for r in rows] == ["llama", "qwen2", "gemma"]
    assert rows[2]["loops"] == {"model/compiled": "exact"}
    assert "gemma" in capsys.readouterr().out


def test_the_decoder_is_the_base_transformer_for_every_kind_of_model():
    """rgk.hf.decoder: a causal LM's base (get_decoder()), a sequence classifier's base, a
    base model itself, and a causal LM whose get_decoder() is itself (MllamaForCausalLM)."""
    from transformers import AutoModelForSequenceClassification
    from rgk import hf
    lm = F.build("llama")
    assert hf.decoder(lm) is lm.model
    assert hf.decoder(lm.model) is lm.model
    clf = AutoModelForSequenceClassification.from_config(F.tiny_config("llama"))
    assert hf.decoder(clf) is clf.model
    ml = F.build("mllama")
    assert ml.get_decoder() is ml and hf.decoder(ml) is ml.model
