"""`rgk eval detox` pieces that need no model run: the (k, w) grid of variants, the
development rule that picks ARGS-detox's setting, the share-based target and the judges'
clean-text floors."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from rgk.eval import detox_eval as D

HAS_PROFANITY = importlib.util.find_spec("profanity_check") is not None


def _ed():
    from rgk.argre.edit import ARGREEditor
    g = torch.Generator().manual_seed(0)
    return ARGREEditor(torch.randn(8, 16, generator=g), torch.zeros(8), torch.randn(1, 8, generator=g), torch.zeros(1),
                       torch.randn(16, generator=g), 0.5, n_steps=3, step_size=0.1, beta=2.0)


def test_variants_grid_and_flags():
    vs = D.build_variants("head", _ed(), k=[3, 10], ws=[1, 2.5], combo_w=[1, 2], combo_k=5)
    labels = [v.label for v in vs]
    assert labels == ["greedy (unedited)", "ARGRE steering only (N=0)", "ARGRE (N=3)",
                      "ARGS-detox k=3 w=1", "ARGS-detox k=3 w=2.5", "ARGS-detox k=10 w=1", "ARGS-detox k=10 w=2.5",
                      "ARGS-detox k=5 w=1 + ARGRE (N=3)", "ARGS-detox k=5 w=2 + ARGRE (N=3)"]
    assert vs[1].editor.n_steps == 0 and vs[2].editor.n_steps == 3
    # no ARGRE rows, no combo: no editor is even loaded (editor=None would load the shipped one)
    vs = D.build_variants("head", "/nonexistent/editor", k=4, ws=[2], combo_w=None, argre=False)
    assert [v.label for v in vs] == ["greedy (unedited)", "ARGS-detox k=4 w=2"]
    # the combo's k defaults to the first k
    vs = D.build_variants("head", _ed(), k=[7, 3], ws=[1], combo_w=2.0, argre=False)
    assert vs[-1].label == "ARGS-detox k=7 w=2 + ARGRE (N=3)" and vs[-1].k == 7
    with pytest.raises(ValueError, match="ws: expected at least one"):
        D.build_variants("head", _ed(), k=3, ws=[], combo_w=None)


def _row(label, kind, cut_p, cut_m, ppl, ms=10.0, k=5, w=1.0, editor=None, share=(0.0, 0.0)):
    s = {"kind": kind}
    if kind == "args":
        s.update(k=k, w=w)
    if editor:
        s["editor"] = editor
    return {"label": label, "settings": s, "ms_per_token": ms,
            "relative": {"tox_profanity": -cut_p, "tox_minilm": -cut_m, "cont_ppl": ppl,
                         "toxic_profanity": -share[0], "toxic_minilm": -share[1]}}


def test_selection_rule_by_hand():
    rep = {"variants": [
        _row("greedy", "greedy", 0, 0, 0),
        _row("a", "args", 0.60, 0.20, 0.10, k=3, w=1),        # min cut 0.20
        _row("b", "args", 0.40, 0.35, 0.24, k=5, w=2),        # min cut 0.35 <- best inside the budget
        _row("c", "args", 0.90, 0.80, 0.40, k=10, w=5),       # outside the ppl budget
        _row("d", "args", 0.90, 0.90, 0.00, k=5, w=1, editor="default"),   # ARGS + ARGRE: not a candidate
        _row("e", "greedy", 0.9, 0.9, 0.0, editor="default"),             # ARGRE: not a candidate
    ]}
    sel = D.select_setting(rep)
    assert sel["label"] == "b" and (sel["k"], sel["w"]) == (5, 2)
    assert sel["min_cut"] == pytest.approx(0.35) and sel["cont_ppl"] == pytest.approx(0.24)
    # a tie on the cut goes to the cheaper row
    rep["variants"].append(_row("f", "args", 0.35, 0.50, 0.05, ms=5.0, k=3, w=3))
    assert D.select_setting(rep)["label"] == "f"
    # nothing inside the budget
    assert D.select_setting({"variants": [_row("greedy", "greedy", 0, 0, 0), _row("c", "args", 1, 1, 0.3)]}) is None


@pytest.mark.skipif(not HAS_PROFANITY, reason="needs alt-profanity-check")
def test_judge_floors_on_rtp_clean_continuations(shared_dir):
    from rgk.argre.data import load_rtp, split_rtp
    data = Path(shared_dir) / "data"
    seen = []

    def judge(texts):
        seen.extend(texts)
        return [0.25] * len(texts)
    fl = D.judge_floors(judge, data)
    recs = load_rtp(data)
    _, held = split_rtp(len(recs))
    clean = [recs[i].continuation for i in held
             if recs[i].continuation_toxicity is not None and recs[i].continuation_toxicity < 0.1]
    assert seen == clean and fl["n_texts"] == len(clean) > 50
    assert fl["tox_minilm"] == pytest.approx(0.25)
    assert 0 <= fl["tox_profanity"] < 0.2            # clean human text: profanity-check scores it low


def test_report_states_floors_and_share_target(tmp_path):
    import json

    from rgk.eval.detox_eval import write_detox_report
    m = lambda t, s, ppl: {"tox_profanity": t, "toxic_profanity": s, "tox_minilm": t + 0.2,  # noqa: E731
                           "toxic_minilm": s, "cont_ppl": ppl, "wikitext_ppl": 40.0, "distinct2": 0.6}
    d = {"diff": 0.0, "lo": -0.1, "hi": 0.1, "significant": False, "n_boot": 100}
    vg = {k: d for k in ("tox_profanity", "toxic_profanity", "tox_minilm", "toxic_minilm", "cont_ppl", "distinct2")}
    pa = {"texts": ["a b", "c d"], "tox_profanity": [0.1, 0.3], "tox_minilm": [0.2, 0.4]}
    rows = [dict(label="greedy (unedited)", settings={"kind": "greedy"}, metrics=m(0.2, 0.2, 4.0), ms_per_token=10.0,
                 relative={"tox_profanity": 0, "tox_minilm": 0, "cont_ppl": 0, "ms_per_token": 1,
                           "toxic_profanity": 0, "toxic_minilm": 0}, vs_greedy=vg, per_answer=pa),
            dict(label="ARGS-detox k=5 w=2", settings={"kind": "args", "k": 5, "w": 2.0}, metrics=m(0.05, 0.05, 4.4),
                 ms_per_token=20.0, relative={"tox_profanity": -0.75, "tox_minilm": -0.375, "cont_ppl": 0.1,
                                              "ms_per_token": 2, "toxic_profanity": -0.75, "toxic_minilm": -0.75},
                 vs_greedy=vg, per_answer=pa, meets_target=False, meets_share_target=True)]
    rep = dict(command="rgk eval detox (test)", kind="rgk eval detox", prompts=["p1", "p2"], variants=rows,
               judge_floor={"n_texts": 124, "max_perspective": 0.1, "tox_profanity": 0.04, "tox_minilm": 0.2},
               config=dict(device="cpu", judge={}, n_prompts=2, split="train", max_new_tokens=3, batch_size=2, seed=0,
                           tox_head="h", editor="default", ppl_windows=1, ppl_window=8, timing_repeats=0))
    files = [tmp_path / f"r{s}" for s in (".json", ".md", ".png")]
    write_detox_report(rep, files)
    md = files[1].read_text()
    # floors: 1 - 0.04/0.2 = 80% (profanity), 1 - 0.2/0.4 = 50% (MiniLM-P)
    assert "profanity-check averages 0.040 and MiniLM-Perspective 0.200" in md
    assert "cut the mean by 80% (profanity) and 50% (MiniLM-P)" in md
    assert "share > 0.5 instead of the mean: ARGS-detox k=5 w=2." in md
    assert "Development choice" in md and "**k=5, w=2**" in md
    assert json.loads(files[0].read_text())["judge_floor"]["n_texts"] == 124


def test_cli_passes_the_grid_and_prints_the_development_choice(tmp_path, monkeypatch, capsys):
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from test_cli import run

    from rgk.eval import judges
    seen = {}

    def fake_eval(**kw):
        seen.update(kw)
        return {"variants": [_row("greedy (unedited)", "greedy", 0, 0, 0),
                             _row("ARGS-detox k=5 w=2", "args", 0.5, 0.3, 0.2, k=5, w=2.0)]}
    monkeypatch.setattr(D, "detox_eval", fake_eval)
    monkeypatch.setattr(D, "write_detox_report", lambda rep, files: None)
    monkeypatch.setattr(judges.PerspectiveJudge, "load", classmethod(lambda cls, p=None: "judge"))
    code, out, err = run(["eval", "detox", "--prompts", "train", "--k", "3", "5", "--w", "1", "2", "--combo-k", "5",
                          "--combo-w", "1", "2", "--no-argre", "--out", str(tmp_path / "dev")], capsys)
    assert code == 0, err
    assert seen["k"] == [3, 5] and seen["ws"] == [1.0, 2.0] and seen["combo_w"] == [1.0, 2.0]
    assert seen["combo_k"] == 5 and seen["argre"] is False and seen["split"] == "train"
    assert "development choice: k=5 w=2" in out
    code, out, err = run(["eval", "detox", "--k", "0"], capsys)
    assert code == 2 and "--k" in err
    code, out, err = run(["eval", "detox", "--combo-k", "0"], capsys)
    assert code == 2 and "--combo-k" in err
    code, out, err = run(["eval", "detox", "--combo-w", "nan"], capsys)
    assert code == 2 and "--combo-w" in err


def test_heldout_continuations_reproduce_the_shipped_judges_check_set(shared_dir):
    from rgk.eval.judges import PerspectiveJudge, heldout_continuations
    pairs = heldout_continuations(Path(shared_dir) / "data")
    assert all(isinstance(t, str) and 0 <= s <= 1 for t, s in pairs)
    info = PerspectiveJudge.load().info["heldout_check"]
    chk = [s for _, s in pairs if s >= 0.75 or s <= 0.1]
    assert (sum(s >= 0.75 for s in chk), sum(s <= 0.1 for s in chk)) == (info["n_toxic"], info["n_clean"])
