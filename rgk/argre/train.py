"""ARGRE training: features, non-toxic direction, trajectories, token reward.

Given pairs (x, y⁺, y⁻) (see `rgk.argre.data`) and an LM:

- features: final hidden states (after the final norm, the input of lm_head) at the
  continuation tokens of (x, y⁺) and (x, y⁻); cached under `rgk.models.cache_dir()/argre`.
- direction: Δ_i = h(x, y⁺_i)[last] − h(x, y⁻_i)[last].  "mean": d_raw = mean_i Δ_i.
  "pca": u = first principal component of the Δ_i (centred), signed so ⟨u, mean Δ⟩ > 0,
  and d_raw = ⟨mean Δ, u⟩ u (the mean difference's part along u, so both variants
  steer by a comparable amount).  d̂ = d_raw / ‖d_raw‖.
- trajectories: on the positions t that both continuations have,
  e_t = ⟨h⁻[t] − h⁺[t], d̂⟩ d̂ and h⁽ᵏ⁾[t] = h⁺[t] + k/(N_in+1) e_t, k = 0..N_in+1.
- token reward θ(h) = Linear(1024→1)(ReLU(Linear(d→1024) h)) (`rgk.models.RewardMLP`); sequence reward
  R = Σ_t θ(h[t]); loss = mean_k −log σ(β_r (R(h⁽ᵏ⁾) − R(h⁽ᵏ⁺¹⁾))), β_r = 0.05.
- AdamW (lr 5e-4, weight decay 0.05), linear warm-up then cosine decay, 3 epochs; the
  epoch with the best validation pair accuracy (R(h⁺) > R(h⁻) on the original pairs,
  each summed over its own continuation tokens) is kept.
- r̄⁺ = mean token reward over the non-toxic continuation tokens of the training pairs.

Everything is saved as `<out>.safetensors` (w1, b1, w2, b2, direction = d_raw) and
`<out>.json` (r̄⁺, configuration, data statistics, metrics), loaded by
`rgk.argre.ARGREEditor.load`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rgk.models import RewardMLP

BETA_R = 0.05
N_IN = 7
MLP_SIZE = 1024


class TokenReward(RewardMLP):
    """θ(h) = w2 · relu(W1 h + b1) + b2 for h [..., d] -> [...] (fp32): `rgk.models.RewardMLP`
    with a hidden layer of `mlp_size` >= 1 units; `params()` is (w1 [m, d], b1 [m],
    w2 [1, m], b2 [1]) as `rgk.ops.argre_refine` takes them."""

    def __init__(self, hidden_size: int, mlp_size: int = MLP_SIZE):
        if isinstance(mlp_size, bool) or not isinstance(mlp_size, int) or mlp_size < 1:
            raise ValueError(f"mlp_size: expected an int >= 1 (ARGRE's reward is an MLP), got {mlp_size!r}")
        super().__init__(hidden_size, mlp_size)


# ----------------------------------------------------------------------------- features

@dataclass
class PairFeatures:
    """Padded continuation-token features of paired sequences.

    pos/neg [P, T, d] fp32 (zero where masked), pos_mask/neg_mask [P, T] bool; the
    valid tokens of each row are a prefix (right padding)."""
    pos: torch.Tensor
    neg: torch.Tensor
    pos_mask: torch.Tensor
    neg_mask: torch.Tensor

    def __len__(self) -> int:
        return self.pos.shape[0]

    def last(self, which: str) -> torch.Tensor:
        """Hidden state of the last continuation token of each row of `which` ("pos"/"neg")."""
        h, m = (self.pos, self.pos_mask) if which == "pos" else (self.neg, self.neg_mask)
        idx = m.long().sum(1) - 1
        return h[torch.arange(h.shape[0]), idx]

    def subset(self, idx) -> PairFeatures:
        return PairFeatures(self.pos[idx], self.neg[idx], self.pos_mask[idx], self.neg_mask[idx])


@torch.no_grad()
def continuation_hidden(model, prompts: list[list[int]], conts: list[list[int]], *, batch_size: int = 16,
                        pad_id: int = 0, desc: str = "features") -> list[torch.Tensor]:
    """Final hidden states at the continuation tokens of each prompt+continuation [L_i, d] (fp32)."""
    from rgk.models import final_hidden
    dev = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(conts[i]))
    out: list[torch.Tensor | None] = [None] * len(prompts)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[s:s + batch_size]
        seqs = [prompts[i] + conts[i] for i in idx]
        T = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for r, q in enumerate(seqs):
            ids[r, :len(q)] = torch.tensor(q)
            mask[r, :len(q)] = 1
        h = final_hidden(model, ids.to(dev), mask.to(dev)).float().cpu()
        for r, i in enumerate(idx):
            p, c = len(prompts[i]), len(conts[i])
            out[i] = h[r, p:p + c].clone()
    return out


def _pad(seqs: list[torch.Tensor], T: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.zeros(len(seqs), T, d)
    m = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        h[i, :len(s)] = s
        m[i, :len(s)] = True
    return h, m


def pair_features(model, tok, pairs, *, cache_file: Path | None = None, batch_size: int = 16) -> PairFeatures:
    """Features of `pairs` (`rgk.argre.data.Pair`), cached in `cache_file` (safetensors)."""
    from safetensors.torch import load_file, save_file
    if cache_file is not None and cache_file.exists():
        t = load_file(str(cache_file))
        return PairFeatures(t["pos"], t["neg"], t["pos_mask"].bool(), t["neg_mask"].bool())
    prompts = [p.prompt_ids for p in pairs]
    pos = continuation_hidden(model, prompts, [p.pos_ids for p in pairs], batch_size=batch_size,
                              pad_id=tok.pad_token_id, desc="features y+")
    neg = continuation_hidden(model, prompts, [p.neg_ids for p in pairs], batch_size=batch_size,
                              pad_id=tok.pad_token_id, desc="features y-")
    d = pos[0].shape[-1]
    T = max(max(len(x) for x in pos), max(len(x) for x in neg))
    ph, pm = _pad(pos, T, d)
    nh, nm = _pad(neg, T, d)
    feats = PairFeatures(ph, nh, pm, nm)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        save_file({"pos": ph, "neg": nh, "pos_mask": pm.to(torch.uint8), "neg_mask": nm.to(torch.uint8)}, str(tmp))
        os.replace(tmp, cache_file)
    return feats


def features_key(pairs, model_name: str) -> str:
    h = hashlib.sha1(model_name.encode())
    for p in pairs:
        h.update(json.dumps([p.prompt_ids, p.pos_ids, p.neg_ids]).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- direction & trajectories

def nontoxic_direction(pos_last: torch.Tensor, neg_last: torch.Tensor, kind: str = "mean") -> torch.Tensor:
    """d_raw [d] from last-token states pos_last/neg_last [P, d] (see module docstring)."""
    if pos_last.shape != neg_last.shape or pos_last.dim() != 2:
        raise ValueError(f"pos_last/neg_last: expected two [P, d] tensors, got {tuple(pos_last.shape)} "
                         f"and {tuple(neg_last.shape)}")
    diff = (pos_last - neg_last).double()
    mean = diff.mean(0)
    if kind == "mean":
        return mean.float()
    if kind == "pca":
        if diff.shape[0] < 2:
            raise ValueError("direction: 'pca' needs at least 2 pairs")
        _, _, vh = torch.linalg.svd(diff - mean, full_matrices=False)
        u = vh[0]
        proj = torch.dot(mean, u)
        if proj < 0:
            u, proj = -u, -proj
        return (proj * u).float()
    raise ValueError(f"direction: expected 'mean' or 'pca', got {kind!r}")


def trajectories(pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor, d_hat: torch.Tensor,
                 n_in: int = N_IN) -> torch.Tensor:
    """[n_in+2, B, T, d]: h⁽ᵏ⁾ = h⁺ + k/(n_in+1) ⟨h⁻ − h⁺, d̂⟩ d̂ on valid [B, T] positions (0 elsewhere)."""
    v = valid.to(pos.dtype)[..., None]
    proj = ((neg - pos) * d_hat).sum(-1, keepdim=True)
    e = proj * d_hat * v
    alphas = torch.arange(n_in + 2, dtype=pos.dtype, device=pos.device) / (n_in + 1)
    return (pos * v)[None] + alphas[:, None, None, None] * e[None]


def trajectory_loss(reward: nn.Module, feats: PairFeatures, d_hat: torch.Tensor, *, n_in: int = N_IN,
                    beta_r: float = BETA_R) -> torch.Tensor:
    """mean over k and pairs of −log σ(β_r (R(h⁽ᵏ⁾) − R(h⁽ᵏ⁺¹⁾))), R summed over shared positions."""
    valid = feats.pos_mask & feats.neg_mask
    traj = trajectories(feats.pos, feats.neg, valid, d_hat, n_in)
    R = (reward(traj) * valid.float()).sum(-1)          # [n_in+2, B]
    return -F.logsigmoid(beta_r * (R[:-1] - R[1:])).mean()


@torch.no_grad()
def pair_accuracy(reward: nn.Module, feats: PairFeatures, batch_size: int = 256) -> float:
    """Share of pairs with R(h⁺) > R(h⁻), each summed over its own continuation tokens."""
    hits = 0
    for s in range(0, len(feats), batch_size):
        f = feats.subset(slice(s, s + batch_size))
        rp = (reward(f.pos) * f.pos_mask.float()).sum(-1)
        rn = (reward(f.neg) * f.neg_mask.float()).sum(-1)
        hits += int((rp > rn).sum())
    return hits / max(1, len(feats))


@torch.no_grad()
def mean_token_reward(reward: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> float:
    r = reward(h)
    return float((r * mask.float()).sum() / mask.float().sum().clamp_min(1))


def cosine_with_warmup(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        prog = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


# ----------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    direction: str = "mean"
    n_in: int = N_IN
    beta_r: float = BETA_R
    mlp_size: int = MLP_SIZE
    lr: float = 5e-4
    weight_decay: float = 0.05
    epochs: int = 3
    batch_size: int = 4
    warmup_fraction: float = 0.1
    seed: int = 0


@dataclass
class TrainResult:
    reward: TokenReward
    direction: torch.Tensor
    r_plus: float
    r_minus: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)


def train_step(reward: nn.Module, opt: torch.optim.Optimizer, batch: PairFeatures, d_hat: torch.Tensor, *,
               n_in: int = N_IN, beta_r: float = BETA_R) -> float:
    """One optimiser step on the trajectory loss of `batch`; returns the loss before the step."""
    loss = trajectory_loss(reward, batch, d_hat, n_in=n_in, beta_r=beta_r)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def train_reward(train: PairFeatures, val: PairFeatures, cfg: TrainConfig | None = None,
                 progress: bool = True) -> TrainResult:
    """Direction + token reward from precomputed pair features (see module docstring)."""
    cfg = cfg or TrainConfig()
    if len(train) == 0:
        raise ValueError("train: no training pairs")
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    d = train.pos.shape[-1]
    d_raw = nontoxic_direction(train.last("pos"), train.last("neg"), cfg.direction)
    d_hat = d_raw / d_raw.norm()
    reward = TokenReward(d, cfg.mlp_size)
    opt = torch.optim.AdamW(reward.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = cosine_with_warmup(opt, int(cfg.warmup_fraction * total), total)
    best, best_key, best_epoch, history = None, None, -1, []
    for epoch in range(cfg.epochs):
        reward.train()
        perm = torch.randperm(len(train), generator=g)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        running = 0.0
        for step in bar:
            batch = train.subset(perm[step * cfg.batch_size:(step + 1) * cfg.batch_size])
            running += train_step(reward, opt, batch, d_hat, n_in=cfg.n_in, beta_r=cfg.beta_r)
            sched.step()
            bar.set_postfix(loss=f"{running / (step + 1):.4f}")
        reward.eval()
        with torch.no_grad():
            val_loss = float(trajectory_loss(reward, val, d_hat, n_in=cfg.n_in, beta_r=cfg.beta_r)) if len(val) else float("nan")
        rec = dict(epoch=epoch + 1, train_loss=running / steps_per_epoch, val_loss=val_loss,
                   train_pair_accuracy=pair_accuracy(reward, train),
                   val_pair_accuracy=pair_accuracy(reward, val) if len(val) else float("nan"))
        history.append(rec)
        if progress:
            tqdm.write(json.dumps(rec))
        key = (rec["val_pair_accuracy"], -val_loss) if len(val) else (epoch,)
        if best_key is None or key > best_key:
            best_key, best, best_epoch = key, copy.deepcopy(reward.state_dict()), epoch + 1
    reward.load_state_dict(best)
    reward.eval()
    r_plus = mean_token_reward(reward, train.pos, train.pos_mask)
    r_minus = mean_token_reward(reward, train.neg, train.neg_mask)
    return TrainResult(reward, d_raw, r_plus, r_minus, best_epoch, history)


def check_editor_out(path: str | os.PathLike, name: str = "out") -> tuple[Path, Path, Path]:
    """(prefix, prefix.safetensors, prefix.json) for saving an editor at `path`; raises
    (message starting with `name`) when `path` is a folder or its json exists and is not
    an ARGRE editor's."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    wf, jf = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
    if path.is_dir() or wf.is_dir() or jf.is_dir():
        raise IsADirectoryError(f"{name}: {path} is a folder; give a path prefix such as {path / 'editor'}")
    if jf.exists():
        try:
            old = json.loads(jf.read_text())
            ok = isinstance(old, dict) and "r_plus" in old and "hidden_size" in old
        except (OSError, ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise FileExistsError(f"{name}: {jf} exists and is not an ARGRE editor's json; choose another "
                                  "path or delete it")
    return path, wf, jf


def save_editor(path: str | os.PathLike, result: TrainResult, meta: dict) -> Path:
    """Write `<path>.safetensors` (w1, b1, w2, b2, direction) and `<path>.json`; the
    suffixes are appended to the whole name (`ed.v1` -> `ed.v1.json`), a trailing `.json`
    or `.safetensors` in `path` is dropped.  Both files are written to temporary files
    and renamed (the json last); a json there that is not an ARGRE editor's is never
    replaced.  Returns the prefix."""
    from safetensors.torch import save_file
    path, wf, jf = check_editor_out(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w1, b1, w2, b2 = result.reward.params()
    tensors = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "direction": result.direction}
    info = dict(hidden_size=int(w1.shape[1]), mlp_size=int(w1.shape[0]), r_plus=result.r_plus,
                r_minus=result.r_minus, best_epoch=result.best_epoch, history=result.history, **meta)
    tag = f".tmp{os.getpid()}"
    w_tmp, j_tmp = wf.with_name("." + wf.name + tag), jf.with_name("." + jf.name + tag)
    try:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(w_tmp))
        j_tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(w_tmp, wf)
        os.replace(j_tmp, jf)
    finally:
        for t in (w_tmp, j_tmp):
            if t.exists():
                t.unlink()
    return path


def train_from_data(*, model_name: str | None = None, out: str | os.PathLike, pair_cfg=None,
                    train_cfg: TrainConfig | None = None, data_dir=None, feature_batch: int = 16) -> dict:
    """The whole pipeline: pairs -> features -> direction + reward -> saved editor files."""
    train_cfg = train_cfg or TrainConfig()
    from rgk.argre.data import PairConfig, build_pairs
    from rgk.models import DEFAULT_MODEL, cache_dir, load_model
    pair_cfg = pair_cfg or PairConfig()
    name = model_name or DEFAULT_MODEL
    model, tok = load_model(model_name)
    train_pairs, val_pairs, stats = build_pairs(model, tok, pair_cfg, data_dir=data_dir, model_name=name)
    root = cache_dir() / "argre"
    tr = pair_features(model, tok, train_pairs, batch_size=feature_batch,
                       cache_file=root / f"feat-{features_key(train_pairs, name)}.safetensors")
    va = pair_features(model, tok, val_pairs, batch_size=feature_batch,
                       cache_file=root / f"feat-{features_key(val_pairs, name)}.safetensors")
    result = train_reward(tr, va, train_cfg)
    meta = dict(base_model=name, direction_kind=train_cfg.direction, train=asdict(train_cfg),
                pairs=asdict(pair_cfg), data=stats,
                val_pair_accuracy=result.history[result.best_epoch - 1]["val_pair_accuracy"],
                direction_norm=float(result.direction.norm()),
                edit_defaults=dict(n_steps=5, step_size=0.5, beta=1.0))
    save_editor(out, result, meta)
    return meta | dict(r_plus=result.r_plus, r_minus=result.r_minus, best_epoch=result.best_epoch,
                       history=result.history)
