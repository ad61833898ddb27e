"""benchmarks/repulse_tail.py: thresholds from the unedited model, CVaR, paired differences
against RLOO by hand, the report on hand-made samples, and refused settings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _bench import load_bench


@pytest.fixture(scope="module")
def rt():
    return load_bench("repulse_tail")


def test_thresholds_and_cvar_by_hand(rt):
    r = np.arange(10, dtype=float)           # 0..9
    assert rt.thresholds(r, [0.1, 0.5]) == {0.1: pytest.approx(0.9), 0.5: pytest.approx(4.5)}
    assert rt.cvar(r, 0.1) == 0.0            # worst ceil(1) value
    assert rt.cvar(r, 0.25) == pytest.approx(1.0)   # worst ceil(2.5) = 3 values: 0, 1, 2
    assert rt.cvar(r, 1e-9) == 0.0           # at least one value


def test_paired_difference_cancels_prompt_difficulty(rt):
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 5, 200)                  # large prompt effect, shared
    a = difficulty + 0.3 + rng.normal(0, 0.1, 200)
    b = difficulty + rng.normal(0, 0.1, 200)
    idx = rt.M.bootstrap_indices(200, 1000, 0)
    d = rt.paired_diff(a, b, 1000, 0)
    assert d["significant"] and d["lo"] < 0.3 < d["hi"] and d["hi"] - d["lo"] < 0.1
    lo, hi = rt.mean_ci(a, idx)                          # the unpaired interval is far wider
    assert hi - lo > 1.0


def _samples(rewards, K):
    return {"reward": list(map(float, rewards)), "judge": [0.9 if x < 0 else 0.1 for x in rewards],
            "samples_per_prompt": K, "kl": 0.5, "seconds": 1.0}


def test_analyse_by_hand(rt):
    # 4 prompts x 2 samples; the unedited model's rewards -3.5..3.5 by 1
    base = np.arange(8, dtype=float) - 3.5
    rloo = base + 1.0                               # shifted up: fewer below eta
    rep = base.copy()
    rep[:2] = [0.0, 0.0]                            # only the worst two raised
    res = rt.analyse({"base": _samples(base, 2), "rloo": _samples(rloo, 2), "repulse": _samples(rep, 2)},
                     [0.25], n_boot=200)
    eta = res["thresholds"]["0.25"]
    assert eta == pytest.approx(np.quantile(base, 0.25))          # -1.75
    m = res["models"]
    assert m["base"]["p_bad@q0.25"]["value"] == pytest.approx(2 / 8)      # -3.5, -2.5
    assert m["rloo"]["p_bad@q0.25"]["value"] == pytest.approx(1 / 8)      # -2.5
    assert m["repulse"]["p_bad@q0.25"]["value"] == pytest.approx(0.0)
    assert m["repulse"]["cvar@q0.25"]["value"] == pytest.approx(np.mean([-1.5, -0.5]))   # worst ceil(2) values
    d = res["vs_rloo"]["repulse"]
    assert d["p_bad@q0.25"]["diff"] == pytest.approx(-1 / 8)
    assert d["reward_mean"]["diff"] == pytest.approx(rep.mean() - rloo.mean())
    assert d["judge_share"]["diff"] == pytest.approx((rep < 0).mean() - (rloo < 0).mean())
    assert "rloo" not in res["vs_rloo"] and "base" in res["vs_rloo"]
    with pytest.raises(ValueError, match="same prompts"):
        rt.analyse({"base": _samples(base, 2), "rloo": _samples(rloo[:6], 2)}, [0.25], n_boot=200)


def test_report_from_cached_samples(rt, tmp_path):
    rng = np.random.default_rng(1)
    runs = tmp_path / "runs"
    for m in ("repulse", "rloo", "transformed"):
        (runs / f"{m}-s0" / "policy").mkdir(parents=True)
        (runs / f"{m}-s0" / "policy" / "config.json").write_text("{}")
    (runs / "rloo-s0" / "checkpoints").mkdir()
    (runs / "rloo-s0" / "checkpoints" / "latest").write_text("step-000024\n")
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    for n, shift in (("base", 0.0), ("repulse", 0.5), ("rloo", 0.4), ("transformed", 0.3)):
        (out / "samples" / f"{n}.json").write_text(json.dumps(_samples(rng.normal(shift, 1, 40 * 4), 4)))
    argv = ["--runs", str(runs), "--out", str(out), "--n-prompts", "40", "--samples", "4", "--report-only",
            "--n-boot", "200"]
    assert rt.main(argv) == 0
    md = (out / "tail.md").read_text()
    assert "--report-only`)" in md and "Command: `python benchmarks/repulse_tail.py --runs" in md
    assert json.loads((out / "tail.json").read_text())["command"].count("--report-only") == 0
    assert "Final (step-24) policies" in md and "| RePULSe |" in md and "Difference against RLOO" in md
    assert md.count("| RLOO |") == 1                     # not compared with itself
    data = json.loads((out / "tail.json").read_text())
    assert set(data["thresholds"]) == {"0.05", "0.1", "0.25"} and data["n_prompts"] == 40
    assert (out / "tail.png").stat().st_size > 10000


def test_bad_settings_are_refused(rt, tmp_path):
    for argv, msg in ((["--methods", "repulse"], "--methods"), (["--methods", "repulse,ppo"], "--methods"),
                      (["--prompt-start", "700", "--n-prompts", "200"], "--prompt-start"),
                      (["--quantiles", "0.1", "1.5"], "--quantiles"), (["--primary", "0.2"], "--primary"),
                      (["--samples", "1"], "--samples"), (["--n-boot", "5"], "--n-boot")):
        with pytest.raises(SystemExit, match=msg):
            rt.main(argv + ["--report-only", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--runs"):
        rt.main(["--runs", str(tmp_path / "none"), "--out", str(tmp_path), "--report-only"])
