"""HH-RLHF preference pairs for reward-head training: loading, parsing, the train /
validation split, and final-hidden-state features (with an on-disk cache).

Used by `rgk.heads.train` (Bradley–Terry training) and the `rgk train-reward-head`
command (`rgk.heads.cli`).

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
   validation set, the rest the training set (`split_indices`).

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
(model, files, n_pairs, max_tokens, format), so a rerun only trains (seconds).  A cache
file that cannot be read, or holds another number of pairs, is recomputed.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from rgk import hf, models

#: Short names of the HH-RLHF files in ``<shared data>/hh_rlhf/``.
HH_FILES = {
    "harmless-base": "harmless-base_test.jsonl.gz",
    "helpful-base": "helpful-base_test.jsonl.gz",
    "helpful-rejection-sampled": "helpful-rejection-sampled_test.jsonl.gz",
}
DEFAULT_FILES = ("harmless-base", "helpful-base")
SELECTION_SEED = 0          # which n_pairs pairs are used (fixed: part of the cache key)
FEATURE_FORMAT = "chat-template+gen-prompt+response-no-eot/v1"

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


# ----------------------------------------------------------------------------- split

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
            ids, mask = hf.left_pad([seqs[i] for i in idx], pad_id)
            pos = hf.positions(mask)
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


def read_feature_cache(cache_path: str | os.PathLike | None,
                       n_pairs: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(chosen, rejected) from a feature cache file holding `n_pairs` pairs, else None
    (no file, another number of pairs, or a file that cannot be read: those are noted on
    stderr and recomputed by `hh_features`)."""
    from safetensors.torch import load_file

    if cache_path is None or not Path(cache_path).exists():
        return None
    try:
        t = load_file(str(cache_path))
        chosen, rejected = t["chosen"], t["rejected"]
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
        print(f"note: feature cache {cache_path} is unreadable ({type(e).__name__}); recomputing",
              file=sys.stderr)
        return None
    if chosen.dim() != 2 or chosen.shape != rejected.shape or chosen.shape[0] != n_pairs:
        print(f"note: feature cache {cache_path} holds {tuple(chosen.shape)} features, expected "
              f"{n_pairs} pairs; recomputing", file=sys.stderr)
        return None
    return chosen, rejected


def hh_features(model, tokenizer, pairs: Sequence[HHPair], *, max_tokens: int = 128,
                batch_size: int = 16, cache_path: Path | None = None,
                progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [N, d], rejected [N, d]) features of `pairs`, read from / written to
    `cache_path` when given (written atomically)."""
    from safetensors.torch import save_file

    cached = read_feature_cache(cache_path, len(pairs))
    if cached is not None:
        return cached
    if model is None or tokenizer is None:
        raise ValueError(f"model: needed to compute the features of {len(pairs)} pairs "
                         f"(no usable cache at {cache_path})")
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
