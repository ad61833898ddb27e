"""benchmarks/repulse_frontier.py: the driver of the recorded RePULSe-vs-baselines run —
run end to end on a tiny model (train, evaluate, resume from its caches), and the table,
the matched-reward interpolation and the plot on hand-made points."""
from __future__ import annotations

import json

import pytest

from _bench import load_bench
from _tiny_model import save_tiny_head, save_tiny_model


@pytest.fixture(scope="module")
def fr():
    return load_bench("repulse_frontier")


def test_interp_by_hand(fr):
    xs, ys = [0.0, 1.0, 3.0], [1.0, 0.5, 0.0]
    assert fr._interp(xs, ys, 0.5) == pytest.approx(0.75)
    assert fr._interp(xs, ys, 2.0) == pytest.approx(0.25)
    assert fr._interp([3.0, 0.0, 1.0], [0.0, 1.0, 0.5], 2.0) == pytest.approx(0.25)   # order of points free
    assert fr._interp(xs, ys, 3.5) is None and fr._interp(xs, ys, -0.1) is None


def _pt(method, step, reward, p_bad, judge=0.1):
    return dict(method=method, seed=0, step=step, reward_mean=reward, reward_mean_ci=[reward - 0.1, reward + 0.1],
                p_bad=p_bad, p_bad_ci=[p_bad - 0.05, p_bad + 0.05], judge_mean=judge, judge_mean_ci=[judge, judge],
                judge_share=judge, judge_share_ci=[judge, judge], kl=0.01 * step, resp_len=20.0)


def test_report_table_matched_reward_and_plot(fr, tmp_path):
    ns = fr._args(["--out", str(tmp_path), "--methods", "repulse,rloo"])
    pts = [_pt("repulse", 0, 0.0, 0.6), _pt("repulse", 8, 1.0, 0.2), _pt("rloo", 0, 0.0, 0.6),
           _pt("rloo", 8, 1.0, 0.4)]
    fr.report(ns, pts, "python benchmarks/repulse_frontier.py --x", 12.0)
    md = (tmp_path / "results.md").read_text()
    assert "Command: `python benchmarks/repulse_frontier.py --x`" in md
    assert md.count("| unedited model |") == 1           # the shared step-0 point once
    assert "| repulse | 0 | 8 | 1.000 [0.900, 1.100] | 0.200 [0.150, 0.250] |" in md
    # matched reward: 5 levels on [0, 1]; at 0.5 the curves read 0.4 (RePULSe) and 0.5 (RLOO)
    assert "| 0.500 | 0.4000 | 0.5000 |" in md and "| 1.000 | 0.2000 | 0.4000 |" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["points"]) == 4 and data["command"].endswith("--x")
    assert (tmp_path / "frontier.png").stat().st_size > 10000


def test_bad_settings_are_refused(fr):
    with pytest.raises(SystemExit, match="--methods"):
        fr.main(["--methods", "repulse,ppo", "--plot-only"])
    with pytest.raises(SystemExit, match="--eval-every"):
        fr.main(["--steps", "4", "--eval-every", "8", "--plot-only"])


def test_run_end_to_end_on_a_tiny_model_and_resume(fr, tmp_path, shared_dir, capsys):
    save_tiny_model(tmp_path / "model")
    save_tiny_head(tmp_path / "head")
    out = tmp_path / "out"
    argv = ["--out", str(out), "--model", str(tmp_path / "model"), "--head", str(tmp_path / "head"),
            "--steps", "2", "--eval-every", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
            "--max-new-tokens", "3", "--eval-prompts", "2", "--eval-samples", "2", "--eval-batch-prompts", "2",
            "--device", "cpu"]
    assert fr.main(argv) == 0
    evals = sorted(p.name for p in (out / "evals").glob("*.json"))
    assert evals == ["base-step000.json"] + [f"{m}-s0-step{k:03d}.json" for m in ("repulse", "rloo", "transformed")
                                            for k in (1, 2)]
    data = json.loads((out / "results.json").read_text())
    assert {(p["method"], p["step"]) for p in data["points"]} == {(m, k) for m in fr.METHODS for k in (0, 1, 2)}
    for p in data["points"]:
        assert 0 <= p["p_bad"] <= 1 and 0 <= p["judge_share"] <= 1 and p["reward_mean_ci"][0] <= p["reward_mean"]
    before = {p.name: p.stat().st_mtime_ns for p in (out / "evals").glob("*.json")}
    capsys.readouterr()
    assert fr.main(argv) == 0          # the same command again: every run resumes at its end, evals cached
    assert {p.name: p.stat().st_mtime_ns for p in (out / "evals").glob("*.json")} == before
    assert "evaluate" not in capsys.readouterr().err
    assert fr.main(argv + ["--plot-only"]) == 0 and (out / "frontier.png").is_file()
