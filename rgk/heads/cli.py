"""`rgk train-reward-head`: train a reward head on HH-RLHF pairs (`rgk.heads.train`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from rgk import models
from rgk._argtypes import finite_float, int_at_least
from rgk.heads import data as head_data
from rgk.heads.train import DEFAULT_WEIGHT_DECAY


def add_train_head_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `train-reward-head` command."""
    p = subparsers.add_parser(
        "train-reward-head",
        help="train a reward head on HH-RLHF pairs",
        description="Train a reward head (linear or MLP on the final hidden state at the "
                    "last token) with the Bradley-Terry loss on Anthropic HH-RLHF test pairs, "
                    "split into train/validation with a fixed seed (the HH-RLHF train split "
                    "is not available). Features are cached, so reruns are fast.")
    p.add_argument("--model", default=None,
                   help=f"local HF model folder (default: embedded {models.DEFAULT_MODEL})")
    p.add_argument("--data-dir", default=None,
                   help="shared data folder holding hh_rlhf/ (default: $RGK_SHARED_DATA or "
                        "../shared/data beside the checkout)")
    p.add_argument("--files", nargs="+", default=list(head_data.DEFAULT_FILES), metavar="FILE",
                   help=f"HH-RLHF files: short names {sorted(head_data.HH_FILES)}, names in "
                        f"hh_rlhf/ or paths (default: {' '.join(head_data.DEFAULT_FILES)})")
    p.add_argument("--n-pairs", type=int_at_least(10), default=2000,
                   help="pairs to use, drawn with a fixed seed from the valid pairs (default 2000)")
    p.add_argument("--max-tokens", type=int_at_least(2), default=128,
                   help="keep the last N tokens of each rendered dialogue (default 128)")
    p.add_argument("--kind", choices=("linear", "mlp"), default="linear",
                   help="head type (default linear)")
    p.add_argument("--mlp-size", type=int_at_least(1), default=None,
                   help="hidden width of the MLP head (only with --kind mlp; default 256)")
    p.add_argument("--epochs", type=int_at_least(1), default=10, help="default 10")
    p.add_argument("--lr", type=finite_float(0, lo_open=True), default=1e-3,
                   help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=finite_float(0), default=DEFAULT_WEIGHT_DECAY,
                   help=f"AdamW (decoupled) weight decay on the input-normalised head "
                        f"(default {DEFAULT_WEIGHT_DECAY:g}, chosen by cross-validation)")
    p.add_argument("--seed", type=int_at_least(0), default=0,
                   help="train/validation split, init and shuffling seed (default 0)")
    p.add_argument("--val-frac", type=finite_float(0, 1, lo_open=True, hi_open=True), default=0.1,
                   help="fraction of pairs held out for validation (default 0.1)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16,
                   help="sequences per forward pass during feature extraction (default 16)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None,
                     help="output path prefix, writes OUT.safetensors + OUT.json "
                          "(default: <cache dir>/heads/<model>-hh)")
    out.add_argument("--install-default", action="store_true",
                     help=f"write the package's default head {models.DEFAULT_HEAD}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train_command)
    return p


def validate(ns: argparse.Namespace) -> None:
    """Check the argument combination before any data or model is read; ValueError /
    FileNotFoundError whose message starts with the option's name."""
    if ns.kind == "linear" and ns.mlp_size is not None:
        raise ValueError("--mlp-size: only valid with --kind mlp")
    if ns.kind == "mlp" and ns.mlp_size is None:
        ns.mlp_size = 256
    n_val = max(1, int(round(ns.val_frac * ns.n_pairs)))
    if ns.n_pairs - n_val < 1:
        raise ValueError(f"--val-frac: {ns.val_frac} of --n-pairs {ns.n_pairs} leaves no training pairs")
    if ns.model is not None and ns.model != models.DEFAULT_MODEL:
        models.check_model_folder(ns.model, "--model")
    if ns.out is not None and Path(ns.out).is_dir():
        raise ValueError(f"--out: {ns.out} is a folder; give a path prefix such as heads/my-head "
                         "(writes .safetensors and .json)")
    try:
        ns.file_paths = head_data.resolve_hh_files(ns.files, ns.data_dir)
    except FileNotFoundError as e:
        msg = str(e)
        arg = "--data-dir" if msg.startswith("data dir") else "--files"
        raise FileNotFoundError(f"{arg}: {msg.split(': ', 1)[1]}") from None


def run_train_command(ns: argparse.Namespace) -> int:
    """Entry point of `rgk train-reward-head`."""
    from rgk.heads.train import train_head_from_data

    validate(ns)
    out = models.DEFAULT_HEAD if ns.install_default else ns.out
    try:
        run = train_head_from_data(
            model_name=ns.model, files=ns.file_paths, n_pairs=ns.n_pairs, max_tokens=ns.max_tokens,
            kind=ns.kind, mlp_size=ns.mlp_size or 0, epochs=ns.epochs, lr=ns.lr, weight_decay=ns.weight_decay,
            val_frac=ns.val_frac, seed=ns.seed, batch_size=ns.batch_size, out=out,
            progress=not ns.no_progress, log=lambda m: print(m, flush=True))
    except ValueError as e:
        if str(e).startswith("files: "):
            raise ValueError(f"--{e}") from None
        raise
    res = run.result
    print(f"validation pair accuracy {res.val_pair_accuracy:.4f} (n_val={res.n_val}, "
          f"best epoch {res.best_epoch}); train {res.train_pair_accuracy:.4f} (n_train={res.n_train})")
    print(f"features {run.seconds_features:.0f} s, total {run.seconds_total:.0f} s; wrote "
          f"{run.files[1]} and {run.files[0]}")
    return 0
