"""Train a reward head (`rgk.models.RewardHead`) on Anthropic HH-RLHF preference pairs.

The head reads a causal LM's final hidden state (after the final norm) at the last
token of a dialogue and is trained with the Bradley–Terry loss
-log σ(r(chosen) − r(rejected)).  The shipped default head
(`rgk/data/heads/smollm2-hh`) was made with the `rgk train-reward-head` command below.

Data and split
--------------
Only the HH-RLHF *test* files are available (``../shared/data/hh_rlhf/``; Anthropic's
train split is not), so every number reported for these heads comes from our own split
of those test pairs:

1. the pairs of the chosen files are parsed and pooled in file order; pairs whose
   chosen == rejected, or whose dialogues do not parse (must start with a Human turn,
   alternate strictly Human/Assistant and end with a non-empty Assistant turn) are
   dropped;
2. ``n_pairs`` of them are drawn by a permutation with the fixed selection seed 0
   (independent of the training seed, so the cached features can be reused);
3. those are split into train / validation by a permutation with ``seed`` (default 0):
   the first ``round(val_frac * n)`` (default 10%) of the permuted pairs are the
   validation set, the rest the training set.

Format the head sees
--------------------
Each dialogue becomes chat messages (Human → user, Assistant → assistant).  Everything
before the final assistant turn is rendered with the tokenizer's chat template and
``add_generation_prompt=True`` (exactly how the demo renders prompts), then the final
assistant response is appended *without* its end-of-turn marker.  So the reward is read
at the last token of the response, the same kind of position where ARGS reads it for a
candidate token during decoding.  Only the last ``max_tokens`` tokens (default 128) of
each rendered dialogue are kept (left truncation), which keeps the response and drops
the oldest context.

Features are cached under ``rgk.models.cache_dir()/features/`` keyed by
(model, files, n_pairs, max_tokens, format), so a rerun only trains (seconds).
"""
from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from rgk import models
from rgk._argtypes import finite_float, int_at_least
from rgk.models import RewardHead, RewardHeadConfig

#: Short names of the HH-RLHF files in ``<shared data>/hh_rlhf/``.
HH_FILES = {
    "harmless-base": "harmless-base_test.jsonl.gz",
    "helpful-base": "helpful-base_test.jsonl.gz",
    "helpful-rejection-sampled": "helpful-rejection-sampled_test.jsonl.gz",
}
DEFAULT_FILES = ("harmless-base", "helpful-base")
SELECTION_SEED = 0          # which n_pairs pairs are used (fixed: part of the cache key)
FEATURE_FORMAT = "chat-template+gen-prompt+response-no-eot/v1"
#: Strong shrinkage: with lr 1e-3 each step multiplies the weights by 1 - 0.03.  Chosen by
#: 5-fold cross-validation on the *training* part of the default SmolLM2 run (linear head,
#: 10 epochs, wd in {0.05, 1, 3, 10, 30, 100, 300}: CV pair accuracy 0.549 ... 0.569, best
#: at 30); weaker decay overfits the 576-d features of ~2k pairs within an epoch or two.
DEFAULT_WEIGHT_DECAY = 30.0

_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


# ----------------------------------------------------------------------------- data

def shared_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The shared data folder: `data_dir`, else $RGK_SHARED_DATA, else ``../shared/data``
    beside the checkout.  Raises FileNotFoundError with a hint when it is missing."""
    path = Path(data_dir) if data_dir is not None else models.shared_data_dir()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data dir: {path} does not exist. The HH-RLHF pairs live in the shared data "
            "folder beside the checkout (../shared/data/hh_rlhf/); point to it with "
            "--data-dir or the RGK_SHARED_DATA environment variable.")
    return path


def resolve_hh_files(files: Iterable[str] | None = None,
                     data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Paths of HH-RLHF files given as short names (``harmless-base``), file names inside
    ``<data>/hh_rlhf/`` or explicit paths."""
    files = list(files) if files else list(DEFAULT_FILES)
    hh_dir = None
    out = []
    for f in files:
        p = Path(f)
        if p.is_file():
            out.append(p)
            continue
        if hh_dir is None:
            base = shared_data_dir(data_dir)
            hh_dir = base / "hh_rlhf" if (base / "hh_rlhf").is_dir() else base
        cand = hh_dir / HH_FILES.get(f, f)
        if not cand.is_file():
            raise FileNotFoundError(
                f"files: {f!r} is neither a file nor one of {sorted(HH_FILES)} in {hh_dir}")
        out.append(cand)
    return out


def parse_hh_dialogue(text: str) -> list[dict]:
    """Parse an HH-RLHF ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` dialogue into chat
    messages [{"role": "user"|"assistant", "content": ...}, ...].

    Raises ValueError unless the dialogue starts with a Human turn, alternates strictly
    and ends with a non-empty Assistant turn.
    """
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first turn marker")
    roles, contents = parts[1::2], parts[2::2]
    if not roles or roles[0] != "Human":
        raise ValueError("dialogue does not start with a Human turn")
    if roles[-1] != "Assistant":
        raise ValueError("dialogue does not end with an Assistant turn")
    if any(a == b for a, b in zip(roles, roles[1:])):
        raise ValueError("turns do not alternate")
    messages = [{"role": _ROLES[r], "content": c.strip()} for r, c in zip(roles, contents)]
    if not messages[-1]["content"]:
        raise ValueError("empty final Assistant turn")
    return messages


@dataclass
class HHPair:
    chosen: list[dict]        # chat messages, ending with the preferred assistant turn
    rejected: list[dict]      # chat messages, ending with the dispreferred assistant turn
    source: str = ""          # file name


def load_hh_pairs(files: Iterable[str | os.PathLike] | None = None, *,
                  data_dir: str | os.PathLike | None = None,
                  n_pairs: int | None = None,
                  selection_seed: int = SELECTION_SEED) -> list[HHPair]:
    """Load, parse and filter HH-RLHF pairs (see the module docstring).

    `files`: short names, names inside ``<data>/hh_rlhf/`` or paths (default:
    harmless-base + helpful-base).  `n_pairs`: draw this many of the valid pairs with a
    fixed-seed permutation (None: all, in file order).
    """
    pairs: list[HHPair] = []
    for path in resolve_hh_files([str(f) for f in files] if files else None, data_dir):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rec = json.loads(line)
                c, r = rec.get("chosen"), rec.get("rejected")
                if not isinstance(c, str) or not isinstance(r, str) or c == r:
                    continue
                try:
                    pc, pr = parse_hh_dialogue(c), parse_hh_dialogue(r)
                except ValueError:
                    continue
                if pc == pr:
                    continue
                pairs.append(HHPair(pc, pr, path.name))
    if n_pairs is not None and n_pairs < len(pairs):
        g = torch.Generator().manual_seed(selection_seed)
        idx = torch.randperm(len(pairs), generator=g)[:n_pairs].tolist()
        pairs = [pairs[i] for i in idx]
    return pairs


def render_dialogue(tokenizer, messages: Sequence[dict]) -> str:
    """Chat-template text of a dialogue: context with the generation prompt, then the final
    assistant response without its end-of-turn marker."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("messages must end with an assistant turn")
    prompt = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False,
                                           add_generation_prompt=True)
    return prompt + messages[-1]["content"]


# ----------------------------------------------------------------------------- features

@torch.inference_mode()
def extract_features(model, sequences: Sequence[Sequence[int]], *, max_tokens: int = 128,
                     batch_size: int = 16, pad_id: int = 0, progress: bool = True,
                     desc: str = "features") -> torch.Tensor:
    """Final hidden state at the last token of each token-id sequence -> float32 [N, d].

    Each sequence is cut to its last `max_tokens` ids; sequences are sorted by length and
    run in batches with left padding (attention mask and position ids that start at 0 at
    the first real token), so the result equals running each sequence alone.
    """
    from tqdm.auto import tqdm

    if max_tokens < 1:
        raise ValueError(f"max_tokens: expected >= 1, got {max_tokens}")
    seqs = [list(s)[-max_tokens:] for s in sequences]
    if any(len(s) == 0 for s in seqs):
        raise ValueError("extract_features: empty sequence")
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out: torch.Tensor | None = None
    with tqdm(total=len(seqs), desc=desc, unit="seq", disable=not progress,
              mininterval=5.0, file=sys.stderr) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                s = seqs[i]
                ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[row, width - len(s):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            h = models.final_hidden(model, ids.to(device), mask.to(device),
                                    position_ids=pos.to(device))[:, -1].float().cpu()
            if out is None:
                out = torch.empty(len(seqs), h.shape[-1], dtype=torch.float32)
            out[torch.tensor(idx)] = h
            bar.update(len(idx))
    return out


def _model_id(model_name: str | None) -> str:
    if model_name in (None, models.DEFAULT_MODEL):
        return models.DEFAULT_MODEL
    return str(Path(model_name).resolve())


def feature_cache_path(model_name: str | None, files: Sequence[Path], n_pairs: int,
                       max_tokens: int) -> Path:
    """Cache file for the features of (model, files, n_pairs, max_tokens, format)."""
    key = {"model": _model_id(model_name),
           "files": [[Path(f).name, Path(f).stat().st_size] for f in files],
           "n_pairs": int(n_pairs), "max_tokens": int(max_tokens),
           "selection_seed": SELECTION_SEED, "format": FEATURE_FORMAT}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = Path(_model_id(model_name)).name
    return models.cache_dir() / "features" / f"hh-{stem}-{n_pairs}x{max_tokens}-{digest}.safetensors"


def hh_features(model, tokenizer, pairs: Sequence[HHPair], *, max_tokens: int = 128,
                batch_size: int = 16, cache_path: Path | None = None,
                progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [N, d], rejected [N, d]) features of `pairs`, read from / written to
    `cache_path` when given."""
    from safetensors.torch import load_file, save_file

    if cache_path is not None and Path(cache_path).exists():
        t = load_file(str(cache_path))
        if t["chosen"].shape[0] == len(pairs):
            return t["chosen"], t["rejected"]
        if model is None:
            raise RuntimeError(f"feature cache {cache_path} holds {t['chosen'].shape[0]} pairs, "
                               f"expected {len(pairs)}; delete it and rerun")
    texts = []
    for p in pairs:
        texts += [render_dialogue(tokenizer, p.chosen), render_dialogue(tokenizer, p.rejected)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    feats = extract_features(model, ids, max_tokens=max_tokens, batch_size=batch_size,
                             pad_id=pad, progress=progress, desc="HH-RLHF features")
    chosen, rejected = feats[0::2].contiguous(), feats[1::2].contiguous()
    if cache_path is not None:
        cache_path = Path(cache_path)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + f".tmp{os.getpid()}")
        save_file({"chosen": chosen, "rejected": rejected}, str(tmp),
                  metadata={"n_pairs": str(len(pairs)), "max_tokens": str(max_tokens),
                            "format": FEATURE_FORMAT})
        os.replace(tmp, cache_path)
    return chosen, rejected


# ----------------------------------------------------------------------------- training

def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss, mean of -log σ(r_chosen − r_rejected)."""
    return F.softplus(r_rejected - r_chosen).mean()


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Fraction of pairs with r_chosen > r_rejected (ties count one half)."""
    d = r_chosen - r_rejected
    return float(((d > 0).float() + 0.5 * (d == 0).float()).mean())


def split_indices(n: int, val_frac: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train_idx, val_idx): a permutation of range(n) with `seed`; the first
    round(val_frac * n) (at least 1) are validation."""
    if not 0.0 < val_frac < 1.0:
        raise ValueError(f"val_frac: expected 0 < val_frac < 1, got {val_frac}")
    n_val = max(1, int(round(val_frac * n)))
    if n - n_val < 1:
        raise ValueError(f"val_frac: {val_frac} of {n} pairs leaves no training pairs")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def _raw_reward(head: RewardHead, x: torch.Tensor) -> torch.Tensor:
    """Head output without the (scale, shift) standardisation, differentiable."""
    z = head.fc1(x)
    if head.fc2 is not None:
        z = head.fc2(torch.relu(z))
    return z[..., 0]


@dataclass
class TrainResult:
    head: RewardHead
    val_pair_accuracy: float
    train_pair_accuracy: float
    best_epoch: int
    n_train: int
    n_val: int
    history: list[dict] = field(default_factory=list)


def train_reward_head(chosen: torch.Tensor, rejected: torch.Tensor, *, kind: str = "linear",
                      mlp_size: int = 256, epochs: int = 10, lr: float = 1e-3,
                      weight_decay: float = DEFAULT_WEIGHT_DECAY, batch_size: int = 64,
                      val_frac: float = 0.1, seed: int = 0, base_model: str = "",
                      split: tuple[torch.Tensor, torch.Tensor] | None = None,
                      verbose: bool = False) -> TrainResult:
    """Fit a RewardHead with the Bradley–Terry loss on pair features [N, d].

    Inputs are normalised per dimension with the training features' mean/std while
    training (then folded into the first layer), AdamW with decoupled weight decay,
    minibatches shuffled with `seed`; the epoch with the best validation pair accuracy
    (ties: lower validation loss) is kept.  Finally config.scale/shift are set so the
    rewards of all training responses (chosen and rejected) have mean 0 and std 1.

    `split`: explicit (train_idx, val_idx) instead of `split_indices(N, val_frac, seed)`.
    """
    if chosen.shape != rejected.shape or chosen.dim() != 2:
        raise ValueError(f"features: chosen {tuple(chosen.shape)} and rejected "
                         f"{tuple(rejected.shape)} must both be [N, d]")
    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    chosen, rejected = chosen.float(), rejected.float()
    tr, va = split if split is not None else split_indices(chosen.shape[0], val_frac, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # the head is tiny: extra threads only add sync overhead
    try:
        return _train(chosen, rejected, tr, va, kind=kind, mlp_size=mlp_size, epochs=epochs,
                      lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                      base_model=base_model, verbose=verbose)
    finally:
        torch.set_num_threads(threads)


def _train(chosen, rejected, tr, va, *, kind, mlp_size, epochs, lr, weight_decay, batch_size,
           seed, base_model, verbose) -> TrainResult:
    xc, xr, vc, vr = chosen[tr], rejected[tr], chosen[va], rejected[va]
    both = torch.cat([xc, xr])
    mu, sd = both.mean(0), both.std(0).clamp_min(1e-6)
    norm = lambda x: (x - mu) / sd  # noqa: E731

    torch.manual_seed(seed)
    cfg = RewardHeadConfig(hidden_size=chosen.shape[1], kind=kind,
                           mlp_size=mlp_size if kind == "mlp" else 0, base_model=base_model)
    head = RewardHead(cfg)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    nc, nr, nvc, nvr = norm(xc), norm(xr), norm(vc), norm(vr)

    best, history = None, []
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(tr), generator=g)
        tot = 0.0
        for start in range(0, len(perm), batch_size):
            b = perm[start:start + batch_size]
            loss = bt_loss(_raw_reward(head, nc[b]), _raw_reward(head, nr[b]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(b)
        head.eval()
        with torch.no_grad():
            rvc, rvr = _raw_reward(head, nvc), _raw_reward(head, nvr)
            val_loss, val_acc = float(bt_loss(rvc, rvr)), pair_accuracy(rvc, rvr)
        rec = {"epoch": epoch, "train_loss": tot / len(tr), "val_loss": val_loss, "val_acc": val_acc}
        history.append(rec)
        if verbose:
            print(f"epoch {epoch:3d}  train loss {rec['train_loss']:.4f}  "
                  f"val loss {val_loss:.4f}  val pair acc {val_acc:.4f}", flush=True)
        if best is None or (val_acc, -val_loss) > (best[0], -best[1]):
            best = (val_acc, val_loss, epoch, copy.deepcopy(head.state_dict()))

    val_acc, _, best_epoch, state = best
    head.load_state_dict(state)
    with torch.no_grad():                       # fold the input normalisation into fc1
        w = head.fc1.weight / sd
        head.fc1.bias -= w @ mu
        head.fc1.weight.copy_(w)
        r_train = torch.cat([_raw_reward(head, xc), _raw_reward(head, xr)])
        m, s = float(r_train.mean()), float(r_train.std().clamp_min(1e-12))
        train_acc = pair_accuracy(_raw_reward(head, xc), _raw_reward(head, xr))
    head.config.scale, head.config.shift = 1.0 / s, -m / s
    head.config.val_pair_accuracy = round(val_acc, 6)
    head.eval()
    return TrainResult(head, val_acc, train_acc, best_epoch, len(tr), len(va), history)


# ----------------------------------------------------------------------------- CLI

def default_out_path(model_name: str | None) -> Path:
    """Where a trained head goes unless --out/--install-default says otherwise."""
    return models.cache_dir() / "heads" / f"{Path(_model_id(model_name)).name}-hh"


def add_parser(subparsers) -> argparse.ArgumentParser:
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
    p.add_argument("--files", nargs="+", default=list(DEFAULT_FILES), metavar="FILE",
                   help=f"HH-RLHF files: short names {sorted(HH_FILES)}, names in "
                        f"hh_rlhf/ or paths (default: {' '.join(DEFAULT_FILES)})")
    p.add_argument("--n-pairs", type=int_at_least(10), default=2000,
                   help="pairs to use, drawn with a fixed seed from the valid pairs (default 2000)")
    p.add_argument("--max-tokens", type=int_at_least(2), default=128,
                   help="keep the last N tokens of each rendered dialogue (default 128)")
    p.add_argument("--kind", choices=("linear", "mlp"), default="linear",
                   help="head type (default linear)")
    p.add_argument("--mlp-size", type=int_at_least(1), default=None,
                   help="hidden width of the MLP head (only with --kind mlp; default 256)")
    p.add_argument("--epochs", type=int_at_least(1), default=10, help="default 10")
    p.add_argument("--lr", type=finite_float(0, lo_open=True), default=1e-3, help="AdamW learning rate (default 1e-3)")
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


class ArgumentValidationError(SystemExit):
    """Bad argument combination: a SystemExit whose message names the argument (the
    interpreter prints it and exits with status 1)."""

    def __init__(self, message: str):
        super().__init__(f"rgk train-reward-head: error: {message}")


def _validate(ns: argparse.Namespace) -> None:
    if ns.kind == "linear" and ns.mlp_size is not None:
        raise ArgumentValidationError("--mlp-size: only valid with --kind mlp")
    if ns.kind == "mlp" and ns.mlp_size is None:
        ns.mlp_size = 256
    n_val = max(1, int(round(ns.val_frac * ns.n_pairs)))
    if ns.n_pairs - n_val < 1:
        raise ArgumentValidationError(f"--val-frac: {ns.val_frac} of --n-pairs {ns.n_pairs} "
                                      "leaves no training pairs")
    if ns.model is not None and ns.model != models.DEFAULT_MODEL and not Path(ns.model).is_dir():
        raise ArgumentValidationError(f"--model: {ns.model} is not a local model folder")
    if ns.out is not None and Path(ns.out).is_dir():
        raise ArgumentValidationError(f"--out: {ns.out} is a folder; give a path prefix such "
                                      "as heads/my-head (writes .safetensors and .json)")
    try:
        ns.file_paths = resolve_hh_files(ns.files, ns.data_dir)
    except FileNotFoundError as e:
        msg = str(e)
        arg = "--data-dir" if msg.startswith("data dir") else "--files"
        raise ArgumentValidationError(f"{arg}: {msg.split(': ', 1)[1]}") from None


def run_train_command(ns: argparse.Namespace) -> int:
    """Entry point of `rgk train-reward-head`."""
    _validate(ns)
    t0 = time.time()
    pairs = load_hh_pairs(ns.file_paths, n_pairs=ns.n_pairs)
    if len(pairs) < ns.n_pairs:
        print(f"note: only {len(pairs)} valid pairs in {[p.name for p in ns.file_paths]}; "
              f"using all of them instead of --n-pairs {ns.n_pairs}", file=sys.stderr)
    n = len(pairs)
    if n - max(1, int(round(ns.val_frac * n))) < 1:
        raise ArgumentValidationError(f"--files: only {n} valid pairs, too few to split")
    cache = feature_cache_path(ns.model, ns.file_paths, n, ns.max_tokens)
    model = tok = None
    if not cache.exists():
        model, tok = models.load_model(ns.model)
    print(f"{n} pairs from {', '.join(p.name for p in ns.file_paths)}; last {ns.max_tokens} "
          f"tokens; features {'cached at' if model is None else 'will be cached at'} {cache}",
          flush=True)
    chosen, rejected = hh_features(model, tok, pairs, max_tokens=ns.max_tokens,
                                   batch_size=ns.batch_size, cache_path=cache,
                                   progress=not ns.no_progress)
    t_feat = time.time() - t0
    base = models.DEFAULT_MODEL if ns.model in (None, models.DEFAULT_MODEL) else str(ns.model)
    res = train_reward_head(chosen, rejected, kind=ns.kind, mlp_size=ns.mlp_size or 0,
                            epochs=ns.epochs, lr=ns.lr, weight_decay=ns.weight_decay,
                            val_frac=ns.val_frac, seed=ns.seed, base_model=base, verbose=True)
    res.head.config.notes = json.dumps({
        "data": "Anthropic HH-RLHF test pairs, own train/validation split "
                "(HH-RLHF train split not available)",
        "files": [p.name for p in ns.file_paths],
        "n_pairs": n, "n_train": res.n_train, "n_val": res.n_val,
        "seed": ns.seed, "val_frac": ns.val_frac, "selection_seed": SELECTION_SEED,
        "max_tokens": ns.max_tokens, "format": FEATURE_FORMAT,
        "val_pair_accuracy": round(res.val_pair_accuracy, 6),
        "train_pair_accuracy": round(res.train_pair_accuracy, 6),
        "best_epoch": res.best_epoch, "epochs": ns.epochs, "lr": ns.lr,
        "weight_decay": ns.weight_decay,
        "standardised": "scale/shift give training-response rewards mean 0, std 1",
    })
    out = models.DEFAULT_HEAD if ns.install_default else \
        Path(ns.out) if ns.out is not None else default_out_path(ns.model)
    res.head.save(out)
    print(f"validation pair accuracy {res.val_pair_accuracy:.4f} (n_val={res.n_val}, "
          f"best epoch {res.best_epoch}); train {res.train_pair_accuracy:.4f} "
          f"(n_train={res.n_train})")
    print(f"features {t_feat:.0f} s, total {time.time() - t0:.0f} s; wrote "
          f"{Path(out).with_suffix('.safetensors')} and {Path(out).with_suffix('.json')}")
    return 0
