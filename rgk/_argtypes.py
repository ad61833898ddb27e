"""argparse value types shared by the CLI commands (argparse prefixes errors with the
option's name, e.g. "argument --k: expected an integer >= 1, got 0")."""
from __future__ import annotations

import argparse
import math


def int_at_least(minimum: int = 1):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {v}")
        return v
    parse.__name__ = f"int>={minimum}"
    return parse


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False):
    """A finite float in [lo, hi] (open ends with lo_open/hi_open; None = unbounded)."""
    lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
    hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
    want = f"a finite number{'' if lo is None and hi is None else ' with ' + lo_s + 'value' + hi_s}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(v)
        ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
        ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return v
    parse.__name__ = "float"
    return parse


# ----------------------------------------------------------------------------- paths and text

def nonempty_text(text: str) -> str:
    """A prompt: any text with at least one non-blank character."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty prompt, got {text!r}")
    return text


nonempty_text.__name__ = "prompt"


def existing_file(text: str) -> str:
    """The path of an existing file."""
    from pathlib import Path
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, expected a file")
    return text


existing_file.__name__ = "file"


def model_folder(text: str) -> str:
    """A local Hugging Face model folder (holding config.json), or the embedded default's name."""
    from rgk import models
    if text == models.DEFAULT_MODEL:
        return text
    try:
        models.check_model_folder(text, "model")
    except FileNotFoundError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
    return text


model_folder.__name__ = "model folder"


def head_path(text: str) -> str:
    """A saved reward head: `<prefix>` (or `<prefix>.json`/`.safetensors`) whose
    `<prefix>.json` and `<prefix>.safetensors` both exist."""
    from rgk.models import _head_files, shipped_heads
    _, cfg, w = _head_files(text)
    for f in (cfg, w):
        if not f.is_file():
            raise argparse.ArgumentTypeError(f"reward head file {f} does not exist (a head is the pair "
                                             f"{cfg.name} + {w.name}, written by `rgk train-reward-head`, or "
                                             f"a shipped head's name: {', '.join(shipped_heads())})")
    return text


head_path.__name__ = "head"


def editor_path(text: str) -> str:
    """A saved ARGRE editor prefix (both files exist), or 'default'."""
    from pathlib import Path
    if text == "default":
        return text
    p = Path(text)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    for f in (p.with_name(p.name + ".json"), p.with_name(p.name + ".safetensors")):
        if not f.is_file():
            raise argparse.ArgumentTypeError(f"ARGRE editor file {f} does not exist (write it with "
                                             "`rgk argre train`, or use 'default')")
    return text


editor_path.__name__ = "editor"


# ----------------------------------------------------------------------------- checks after loading

def load_head_arg(path, flag: str = "--head"):
    """`RewardHead.load(path)` whose errors name `flag` instead of `path`."""
    from rgk.models import RewardHead
    try:
        return RewardHead.load(path)
    except (FileNotFoundError, ValueError) as e:
        msg = str(e)
        msg = msg.split(": ", 1)[1] if msg.startswith("path: ") else msg
        raise type(e)(f"{flag}: {msg}") from None


def check_k(k: int, model, flag: str = "--k") -> None:
    """ValueError naming `flag` when k exceeds the model's vocabulary."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = out.weight.shape[0] if out is not None else model.get_input_embeddings().num_embeddings
    if k > vocab:
        raise ValueError(f"{flag}: {k} candidates per step, but the model's vocabulary has only {vocab} tokens")
