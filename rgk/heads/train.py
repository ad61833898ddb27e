"""Train a reward head (`rgk.models.RewardHead`) on HH-RLHF preference pairs.

The head reads a causal LM's final hidden state (after the final norm) at the last
token of a dialogue (features: `rgk.heads.data`) and is trained with the
Bradley–Terry loss -log σ(r(chosen) − r(rejected)).  The shipped default head
(`rgk/data/heads/smollm2-hh`) was made with `rgk train-reward-head`
(`rgk.heads.cli`), which runs `train_head_from_data`.

- `train_reward_head(chosen, rejected, ...)`: fit on features [N, d] (see its docstring);
- `evaluate_head(head, chosen, rejected)`: Bradley–Terry loss and pair accuracy;
- `train_head_from_data(...)`: pairs -> features (cached) -> training -> saved head.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from rgk import models
from rgk.heads import data as head_data
from rgk.models import RewardHead, RewardHeadConfig

#: Strong shrinkage: with lr 1e-3 each step multiplies the weights by 1 - 0.03.  Chosen by
#: 5-fold cross-validation on the *training* part of the default SmolLM2 run (linear head,
#: 10 epochs, wd in {0.05, 1, 3, 10, 30, 100, 300}: CV pair accuracy 0.549 ... 0.569, best
#: at 30); weaker decay overfits the 576-d features of ~2k pairs within an epoch or two.
DEFAULT_WEIGHT_DECAY = 30.0


# ----------------------------------------------------------------------------- loss and metrics

def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss, mean of -log σ(r_chosen − r_rejected)."""
    return F.softplus(r_rejected - r_chosen).mean()


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Fraction of pairs with r_chosen > r_rejected (ties count one half)."""
    d = r_chosen - r_rejected
    return float(((d > 0).float() + 0.5 * (d == 0).float()).mean())


@torch.no_grad()
def evaluate_head(head: RewardHead, chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """{"loss": Bradley–Terry loss, "pair_accuracy": ...} of `head` on features [N, d]."""
    rc, rr = head(chosen), head(rejected)
    return {"loss": float(bt_loss(rc, rr)), "pair_accuracy": pair_accuracy(rc, rr), "n": int(rc.shape[0])}


# ----------------------------------------------------------------------------- training

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
        raise ValueError(f"chosen: chosen {tuple(chosen.shape)} and rejected "
                         f"{tuple(rejected.shape)} must both be [N, d]")
    if kind not in ("linear", "mlp"):
        raise ValueError(f"kind: expected 'linear' or 'mlp', got {kind!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected an int >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    chosen, rejected = chosen.float(), rejected.float()
    tr, va = split if split is not None else head_data.split_indices(chosen.shape[0], val_frac, seed)
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
            loss = bt_loss(head.raw(nc[b]), head.raw(nr[b]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(b)
        head.eval()
        with torch.no_grad():
            rvc, rvr = head.raw(nvc), head.raw(nvr)
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
        r_train = torch.cat([head.raw(xc), head.raw(xr)])
        m, s = float(r_train.mean()), float(r_train.std().clamp_min(1e-12))
        train_acc = pair_accuracy(head.raw(xc), head.raw(xr))
    head.config.scale, head.config.shift = 1.0 / s, -m / s
    head.config.val_pair_accuracy = round(val_acc, 6)
    head.eval()
    return TrainResult(head, val_acc, train_acc, best_epoch, len(tr), len(va), history)


# ----------------------------------------------------------------------------- pipeline and saving

def default_out_path(model_name: str | None) -> Path:
    """Where a trained head goes unless told otherwise: <cache dir>/heads/<model>-hh."""
    return models.cache_dir() / "heads" / f"{Path(head_data._model_id(model_name)).name}-hh"


def training_notes(res: TrainResult, *, files: Sequence[Path], n_pairs: int, seed: int, val_frac: float,
                   max_tokens: int, epochs: int, lr: float, weight_decay: float) -> str:
    """The JSON `notes` saved with a trained head (data, split and metrics)."""
    return json.dumps({
        "data": "Anthropic HH-RLHF test pairs, own train/validation split "
                "(HH-RLHF train split not available)",
        "files": [Path(p).name for p in files],
        "n_pairs": n_pairs, "n_train": res.n_train, "n_val": res.n_val,
        "seed": seed, "val_frac": val_frac, "selection_seed": head_data.SELECTION_SEED,
        "max_tokens": max_tokens, "format": head_data.FEATURE_FORMAT,
        "val_pair_accuracy": round(res.val_pair_accuracy, 6),
        "train_pair_accuracy": round(res.train_pair_accuracy, 6),
        "best_epoch": res.best_epoch, "epochs": epochs, "lr": lr,
        "weight_decay": weight_decay,
        "standardised": "scale/shift give training-response rewards mean 0, std 1",
    })


@dataclass
class HeadRun:
    """What `train_head_from_data` did."""
    result: TrainResult
    out: Path                 # prefix: <out>.json and <out>.safetensors were written
    files: tuple[Path, Path]  # (json, safetensors)
    n_pairs: int
    feature_cache: Path
    features_cached: bool     # True when the features came from the cache
    seconds_features: float
    seconds_total: float


def train_head_from_data(*, model_name: str | None = None, files: Sequence[str | os.PathLike] | None = None,
                         data_dir: str | os.PathLike | None = None, n_pairs: int = 2000,
                         max_tokens: int = 128, kind: str = "linear", mlp_size: int = 0, epochs: int = 10,
                         lr: float = 1e-3, weight_decay: float = DEFAULT_WEIGHT_DECAY, val_frac: float = 0.1,
                         seed: int = 0, batch_size: int = 16, out: str | os.PathLike | None = None,
                         progress: bool = True, verbose: bool = True, log=print) -> HeadRun:
    """Pairs -> features (cached) -> Bradley–Terry training -> head saved to `out`
    (default `default_out_path(model_name)`)."""
    t0 = time.time()
    file_paths = head_data.resolve_hh_files([str(f) for f in files] if files else None, data_dir)
    pairs = head_data.load_hh_pairs(file_paths, n_pairs=n_pairs)
    if len(pairs) < n_pairs:
        log(f"note: only {len(pairs)} valid pairs in {[p.name for p in file_paths]}; "
            f"using all of them instead of n_pairs {n_pairs}")
    n = len(pairs)
    if n - max(1, int(round(val_frac * n))) < 1:
        raise ValueError(f"files: only {n} valid pairs, too few to split")
    cache = head_data.feature_cache_path(model_name, file_paths, n, max_tokens)
    cached = head_data.read_feature_cache(cache, n)
    model = tok = None
    if cached is None:
        model, tok = models.load_model(model_name)
    log(f"{n} pairs from {', '.join(p.name for p in file_paths)}; last {max_tokens} tokens; features "
        f"{'cached at' if cached is not None else 'will be cached at'} {cache}")
    if cached is not None:
        chosen, rejected = cached
    else:
        chosen, rejected = head_data.hh_features(model, tok, pairs, max_tokens=max_tokens,
                                                 batch_size=batch_size, cache_path=cache, progress=progress)
    t_feat = time.time() - t0
    base = models.DEFAULT_MODEL if model_name in (None, models.DEFAULT_MODEL) else str(model_name)
    res = train_reward_head(chosen, rejected, kind=kind, mlp_size=mlp_size, epochs=epochs, lr=lr,
                            weight_decay=weight_decay, val_frac=val_frac, seed=seed, base_model=base,
                            verbose=verbose)
    res.head.config.notes = training_notes(res, files=file_paths, n_pairs=n, seed=seed, val_frac=val_frac,
                                           max_tokens=max_tokens, epochs=epochs, lr=lr,
                                           weight_decay=weight_decay)
    out = Path(out) if out is not None else default_out_path(model_name)
    written = res.head.save(out)
    return HeadRun(res, out, written, n, cache, cached is not None, t_feat, time.time() - t0)
