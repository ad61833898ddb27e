"""`rgk demo` on the real embedded model and the shipped head: ARGS beats greedy on reward."""
import re
import time

import pytest

from rgk.cli import main


@pytest.mark.default_model
def test_demo_args_beats_greedy(capsys):
    t0 = time.perf_counter()
    assert main(["demo"]) == 0
    dt = time.perf_counter() - t0
    out = capsys.readouterr().out
    m = re.search(r"mean reward\s+greedy ([-+.\d]+)\s+ARGS ([-+.\d]+)", out)
    assert m, out
    greedy, args = float(m.group(1)), float(m.group(2))
    assert args > greedy, out
    assert out.count("PROMPT:") == 4 and out.count("-- greedy") == 4 and out.count("-- ARGS") == 4
    assert dt < 180, f"rgk demo took {dt:.0f} s"


def test_cli_rejects_bad_arguments(capsys):
    for argv, name in ((["demo", "--k", "0"], "--k"), (["demo", "--w", "nan"], "--w"),
                       (["generate", "--prompt", "hi", "--temperature", "-1"], "--temperature"),
                       (["demo", "--max-new-tokens", "x"], "--max-new-tokens")):
        with pytest.raises(SystemExit):
            main(argv)
        assert name in capsys.readouterr().err
