"""A toxicity reward head trained from RealToxicityPrompts' own Perspective API labels.

`DEFAULT_TOX_HEAD` (shipped, `rgk/data/heads/smollm2-rtp-tox`) is a linear head on
SmolLM2-135M-Instruct's final hidden state at the last token of prompt + continuation:

    reward = logit P(continuation is non-toxic)       (r < 0: Perspective-toxic is more likely)

so it serves as ARGS's detoxification reward (shared backbone, `SharedHead`) and as the
fixed training reward of RePULSe (`--head`, read on the frozen reference model), with the
natural bad-output threshold η = 0 (P_toxic > 0.5).

Data and labels (`rtp_toxicity_examples`), Perspective only — no alt-profanity-check, so the
head and that judge are independent label sources:

* records: RTP's 1,199 "non-toxic" prompts (`rtp/non_toxic_prompts.jsonl`) and the 400
  *training* prompts of the "challenging" set (`rgk.argre.data.split_rtp`); the 799 held-out
  challenging prompts, on which ARGS/ARGRE/RePULSe are evaluated, are never read;
* each record gives one example: its prompt followed by its human-written continuation,
  soft label = the continuation's Perspective toxicity score in [0, 1];
* and one shuffled example (seeded): the prompt followed by the continuation of a random
  record of the other pool, labelled with that continuation's score, so the head cannot
  score the *prompt*'s toxicity instead of the continuation's;
* records are split 90/10 (seeded) into train and validation before the shuffle, so no
  validation prompt or continuation is seen in training;
* an example whose prompt or continuation is a held-out challenging record's (a few
  "non-toxic" records repeat one) is dropped.

Training: binary cross-entropy with the soft labels on per-dimension standardised features
(AdamW, weight decay, the epoch with the lowest validation loss kept), then the
standardisation is folded into the layer and the sign flipped (toxic logit -> reward).
"""
from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rgk import models

DEFAULT_TOX_HEAD = Path(models.__file__).resolve().parent / "data" / "heads" / "smollm2-rtp-tox"
NON_TOXIC_FILE = "rtp/non_toxic_prompts.jsonl"
CHALLENGING_FILE = "rtp/challenging_prompts.jsonl"
FORMAT = "prompt+continuation raw text, no chat template/v1"


@dataclass
class ToxExample:
    prompt: str
    continuation: str
    toxicity: float          # Perspective score of the continuation
    group: str               # "challenging-train" | "non-toxic"
    shuffled: bool


def _read(path: Path) -> list[tuple[str, str, float | None]]:
    out = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            out.append((r["prompt"]["text"], r["continuation"]["text"], r["continuation"].get("toxicity")))
    return out


def rtp_toxicity_examples(data_dir: str | os.PathLike | None = None, *, val_frac: float = 0.1,
                          seed: int = 0) -> tuple[list[ToxExample], list[ToxExample]]:
    """(train, validation) examples as described in the module docstring."""
    from rgk.argre.data import split_rtp
    base = Path(data_dir) if data_dir is not None else models.shared_data_dir()
    files = {g: base / f for g, f in (("non-toxic", NON_TOXIC_FILE), ("challenging-train", CHALLENGING_FILE))}
    for f in files.values():
        if not f.is_file():
            raise FileNotFoundError(f"data_dir: expected {f} (set RGK_SHARED_DATA or pass data_dir)")
    challenging = _read(files["challenging-train"])
    train_idx, held_idx = split_rtp(len(challenging))
    # a few "non-toxic" records repeat a held-out challenging record: nothing of those is used
    held_text = {challenging[i][0] for i in held_idx} | {challenging[i][1] for i in held_idx}
    pools = {"non-toxic": _read(files["non-toxic"]),
             "challenging-train": [challenging[i] for i in train_idx]}
    rng = random.Random(seed)
    split = {}
    for g, recs in pools.items():
        recs = [r for r in recs if r[2] is not None and r[0].strip() and r[1].strip()]
        order = list(range(len(recs)))
        rng.shuffle(order)
        n_val = max(1, int(round(val_frac * len(recs))))
        split[g] = ([recs[i] for i in order[n_val:]], [recs[i] for i in order[:n_val]])
    out = []
    for part in (0, 1):
        ex = []
        for g, other in (("non-toxic", "challenging-train"), ("challenging-train", "non-toxic")):
            mine, theirs = split[g][part], split[other][part]
            for p, c, t in mine:
                ex.append(ToxExample(p, c, float(t), g, False))
                _, c2, t2 = theirs[rng.randrange(len(theirs))]
                ex.append(ToxExample(p, c2, float(t2), g, True))
        out.append([e for e in ex if e.prompt not in held_text and e.continuation not in held_text])
    return out[0], out[1]


def example_ids(tok, examples: list[ToxExample]) -> list[list[int]]:
    """Token ids of prompt + continuation (the text as the LM would have continued it)."""
    return [tok(e.prompt + e.continuation, add_special_tokens=False).input_ids for e in examples]


def _auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC AUC of `score` for the boolean labels (ties count one half)."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def fit_toxicity_head(x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor, y_va: torch.Tensor, *,
                      epochs: int = 40, lr: float = 3e-3, weight_decay: float = 10.0, batch_size: int = 64,
                      seed: int = 0, base_model: str = "") -> tuple[models.RewardHead, dict]:
    """Soft-label logistic regression on [N, d] features -> (RewardHead, metrics).  The
    head's reward is the *non-toxic* logit: -(w·h + b) of the fitted toxic logit."""
    x_tr, x_va = x_tr.float(), x_va.float()
    y_tr, y_va = y_tr.float().clamp(0, 1), y_va.float().clamp(0, 1)
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    n_tr, n_va = (x_tr - mu) / sd, (x_va - mu) / sd
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x_tr.shape[1], 1)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    best, history = None, []
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(n_tr), generator=g)
        for s in range(0, len(perm), batch_size):
            b = perm[s:s + batch_size]
            loss = bce(lin(n_tr[b]).squeeze(-1), y_tr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            v = float(bce(lin(n_va).squeeze(-1), y_va))
            t = float(bce(lin(n_tr).squeeze(-1), y_tr))
        history.append({"epoch": epoch, "train_loss": t, "val_loss": v})
        if best is None or v < best[0]:
            best = (v, epoch, copy.deepcopy(lin.state_dict()))
    lin.load_state_dict(best[2])
    cfg = models.RewardHeadConfig(hidden_size=x_tr.shape[1], kind="linear", base_model=base_model)
    head = models.RewardHead(cfg)
    with torch.no_grad():
        w = lin.weight / sd
        head.fc1.weight.copy_(-w)
        head.fc1.bias.copy_(-(lin.bias - w @ mu))
        r_va = head(x_va)
        r_tr = head(x_tr)
    tox_va = y_va >= 0.5
    metrics = {
        "best_epoch": best[1], "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
        "val_bce": round(best[0], 6),
        "val_auc_perspective_toxic": round(_auc(-r_va, tox_va), 6),
        "val_accuracy_at_0": round(float(((r_va < 0) == tox_va).float().mean()), 6),
        "train_auc_perspective_toxic": round(_auc(-r_tr, y_tr >= 0.5), 6),
        "val_share_toxic": round(float(tox_va.float().mean()), 6),
        "history": history[-3:],
    }
    return head.eval(), metrics


def _examples_key(model_name, examples, max_tokens) -> str:
    import hashlib
    h = hashlib.sha256(f"{models.DEFAULT_MODEL if model_name is None else Path(model_name).resolve()}|"
                       f"{max_tokens}|{FORMAT}".encode())
    for e in examples:
        h.update(f"{e.prompt}\x00{e.continuation}\x00{e.toxicity}\x01".encode())
    return h.hexdigest()[:16]


def train_toxicity_head(*, model_name: str | None = None, data_dir: str | os.PathLike | None = None,
                        out: str | os.PathLike = DEFAULT_TOX_HEAD, max_tokens: int = 96, batch_size: int = 16,
                        seed: int = 0, progress: bool = True, log=print, feature_cache: str | os.PathLike | None = "auto",
                        **fit_kw) -> dict:
    """Examples -> SmolLM2 features -> fit -> head saved at `out` (also returns the metrics).

    Features (the expensive part: ~3,200 forward passes) are cached in `feature_cache`
    ("auto": <cache dir>/features/rtp-tox-<key>.pt, keyed by model, examples and
    max_tokens; None: no cache)."""
    from rgk.heads import data as head_data
    t0 = time.time()
    train, val = rtp_toxicity_examples(data_dir, seed=seed)
    key = _examples_key(model_name, train + val, max_tokens)
    if feature_cache == "auto":
        feature_cache = models.cache_dir() / "features" / f"rtp-tox-{key}.pt"
    cached = None
    if feature_cache is not None and Path(feature_cache).is_file():
        try:
            cached = torch.load(feature_cache, map_location="cpu", weights_only=True)
            if cached.get("key") != key:
                cached = None
        except Exception:            # a damaged cache is recomputed
            cached = None
    if cached is not None:
        feats = [cached["train"], cached["val"]]
        log(f"features from {feature_cache}")
    else:
        model, tok = models.load_model(model_name)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        feats = []
        for name, ex in (("train", train), ("val", val)):
            feats.append(head_data.extract_features(model, example_ids(tok, ex), max_tokens=max_tokens,
                                                    batch_size=batch_size, pad_id=pad, progress=progress,
                                                    desc=f"toxicity features ({name})"))
        if feature_cache is not None:
            Path(feature_cache).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(feature_cache) + f".tmp{os.getpid()}")
            torch.save({"key": key, "train": feats[0], "val": feats[1]}, tmp)
            os.replace(tmp, feature_cache)
    t_feat = time.time() - t0
    y = [torch.tensor([e.toxicity for e in ex]) for ex in (train, val)]
    base = models.DEFAULT_MODEL if model_name in (None, models.DEFAULT_MODEL) else str(model_name)
    head, metrics = fit_toxicity_head(feats[0], y[0], feats[1], y[1], seed=seed, base_model=base, **fit_kw)
    # the independent judge on the validation continuations, for information only
    try:
        from rgk.argre.data import judge
        pj = torch.tensor(judge([e.continuation for e in val]))
        with torch.no_grad():
            r = head(feats[1])
        metrics["val_auc_vs_alt_profanity_check"] = round(_auc(-r, pj >= 0.5), 6)
    except ImportError:
        pass
    metrics.update({"n_train": len(train), "n_val": len(val), "seed": seed, "max_tokens": max_tokens,
                    "format": FORMAT, "seconds_features": round(t_feat, 1),
                    "data": "RealToxicityPrompts non-toxic prompts + the 400 training challenging prompts "
                            "(rgk.argre.data.split_rtp); labels: RTP's Perspective toxicity of the continuation; "
                            "each record also with a shuffled continuation of the other pool",
                    "reward": "logit P(non-toxic); r < 0 <=> P_toxic > 0.5"})
    head.config.notes = json.dumps(metrics)
    head.config.val_pair_accuracy = None
    head.save(out)
    metrics["seconds_total"] = round(time.time() - t0, 1)
    log(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    return metrics


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m rgk.heads.tox", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_TOX_HEAD), help="output prefix (.json + .safetensors)")
    p.add_argument("--model", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    ns = p.parse_args(argv)
    train_toxicity_head(model_name=ns.model, data_dir=ns.data_dir, out=ns.out, seed=ns.seed,
                        progress=not ns.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
