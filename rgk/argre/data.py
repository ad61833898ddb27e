"""Paired non-toxic / toxic continuations for ARGRE, built from RealToxicityPrompts.

The ARGRE paper trains on Lee et al.'s PPLM-made toxic pairs, which are not available
here.  We build pairs (x, y⁺, y⁻) that share the prompt x instead:

1. Split RTP's 1,199 "challenging" prompts (`rtp/challenging_prompts.jsonl`) with a fixed
   seed (`SPLIT_SEED` = 0) into `N_TRAIN` = 400 training prompts and 799 held-out
   evaluation prompts.  Evaluation prompts are never used for training or validation.
2. For every training prompt the LM writes 1 greedy and `n_samples` = 8 sampled
   continuations (20 new tokens, temperature 0.8, top-p 0.95, seeded per chunk), raw
   text continuation without a chat template.  They are cached on disk as token ids, so
   an interrupted run resumes.
3. Labels: a model continuation is toxic when alt-profanity-check's `predict_prob` on
   the continuation is >= 0.5 and non-toxic when it is <= 0.2 (in between: unused).
   RTP's own (human-written) continuation comes with a Perspective API toxicity score:
   it is toxic when that score is >= 0.5.
4. Pairs, per prompt, up to `pairs_per_prompt` = 2: the toxic side is a toxic model
   continuation (most toxic first) or, when the model wrote none, RTP's own continuation
   if Perspective calls it toxic; the non-toxic side is a non-toxic model continuation
   drawn at random (seeded).  Prompts without both sides give no pair.
5. Cut (`cut_after_toxic` = 2): the toxic side is cut 2 tokens after the token at which
   the judge's score of its prefix first reaches 0.5 (the offending word), and the
   non-toxic side is cut to the same length.  The last-token difference that defines
   the direction then contrasts "just said something toxic" with a clean continuation at
   the same depth, instead of whatever each continuation ends with; on the development
   sweep this turned a direction that mostly moved style tokens into one that demotes
   profanity (see benchmarks/argre_eval.md).
6. 10% of the training prompts (seeded) are kept aside as validation pairs for choosing
   the best epoch.

Caveat, stated wherever numbers are reported: the judge that labels most toxic sides is
the same alt-profanity-check that scores the evaluation, so the learned reward imitates
the evaluation metric on the model's own text (Perspective labels only the RTP
fallback; the cut position of step 5 is also found by the judge).  The held-out reward check in the tests uses RTP continuations labeled by
Perspective, i.e. independently of the judge.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rgk.models import shared_data_dir

SPLIT_SEED = 0
N_TRAIN = 400
RTP_FILE = "rtp/challenging_prompts.jsonl"


def _data_file(rel: str, data_dir: str | os.PathLike | None) -> Path:
    path = Path(data_dir) if data_dir is not None else shared_data_dir()
    f = path / rel
    if not f.exists():
        raise FileNotFoundError(f"data_dir: expected {f} (set RGK_SHARED_DATA or pass data_dir)")
    return f


@dataclass
class RTPRecord:
    prompt: str
    continuation: str
    continuation_toxicity: float | None   # Perspective API score shipped with RTP


def load_rtp(data_dir: str | os.PathLike | None = None) -> list[RTPRecord]:
    """The 1,199 RTP challenging prompts in file order."""
    out = []
    with open(_data_file(RTP_FILE, data_dir)) as f:
        for line in f:
            r = json.loads(line)
            out.append(RTPRecord(r["prompt"]["text"], r["continuation"]["text"], r["continuation"].get("toxicity")))
    return out


def split_rtp(n_total: int = 1199, n_train: int = N_TRAIN, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """(train indices, held-out evaluation indices), each sorted; disjoint, fixed by `seed`."""
    if not 0 < n_train < n_total:
        raise ValueError(f"n_train: expected in (0, {n_total}), got {n_train}")
    perm = list(range(n_total))
    random.Random(seed).shuffle(perm)
    return sorted(perm[:n_train]), sorted(perm[n_train:])


def judge(texts: list[str]) -> list[float]:
    """alt-profanity-check probability that each text is offensive."""
    from profanity_check import predict_prob
    if not texts:
        return []
    return [float(p) for p in predict_prob(list(texts))]


# ----------------------------------------------------------------------------- generation

def _strip(ids: list[int], stop: set[int]) -> list[int]:
    for j, t in enumerate(ids):
        if t in stop:
            return ids[:j]
    return ids


@torch.no_grad()
def generate_ids(model, tok, prompts: list[str], *, max_new_tokens: int = 20, do_sample: bool = False,
                 num_return_sequences: int = 1, temperature: float = 0.8, top_p: float = 0.95) -> list[list[int]]:
    """New token ids (EOS and what follows removed) for each prompt (x num_return_sequences, grouped by prompt)."""
    enc = tok(prompts, return_tensors="pt", padding=True).to(model.device)
    kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else dict(do_sample=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                         pad_token_id=tok.pad_token_id, **kw)
    new = out[:, enc.input_ids.shape[1]:].tolist()
    stop = {tok.eos_token_id, tok.pad_token_id}
    return [_strip(r, stop) for r in new]


def generate_training_continuations(model, tok, prompts: list[str], cache_file: Path, *, n_samples: int = 8,
                                    max_new_tokens: int = 20, chunk: int = 16, seed: int = 0) -> list[dict]:
    """Greedy + `n_samples` sampled continuations per prompt, cached in `cache_file` (jsonl,
    one record per finished chunk) so that a rerun resumes.  Returns [{"greedy": ids,
    "samples": [ids, ...]}] in prompt order."""
    done: dict[int, dict] = {}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    if cache_file.exists():
        for line in cache_file.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["i"]] = r
    starts = list(range(0, len(prompts), chunk))
    todo = [s for s in starts if any(i not in done for i in range(s, min(s + chunk, len(prompts))))]
    with open(cache_file, "a") as f:
        for s in tqdm(todo, desc="generate training continuations", unit="chunk"):
            part = prompts[s:s + chunk]
            greedy = generate_ids(model, tok, part, max_new_tokens=max_new_tokens)
            torch.manual_seed(seed * 1_000_003 + s)
            sampled = generate_ids(model, tok, part, max_new_tokens=max_new_tokens, do_sample=True,
                                   num_return_sequences=n_samples)
            for j in range(len(part)):
                r = {"i": s + j, "greedy": greedy[j], "samples": sampled[j * n_samples:(j + 1) * n_samples]}
                done[s + j] = r
                f.write(json.dumps(r) + "\n")
            f.flush()
    return [done[i] for i in range(len(prompts))]


# ----------------------------------------------------------------------------- pairs

@dataclass
class Pair:
    prompt_ids: list[int]
    pos_ids: list[int]          # non-toxic continuation
    neg_ids: list[int]          # toxic continuation
    prompt_index: int           # index into the RTP file
    neg_source: str             # "model" or "rtp"
    pos_score: float            # judge score of y⁺
    neg_score: float            # judge score (model) or Perspective score (rtp) of y⁻
    meta: dict = field(default_factory=dict)


@dataclass
class PairConfig:
    n_train: int = N_TRAIN
    split_seed: int = SPLIT_SEED
    n_samples: int = 8
    max_new_tokens: int = 20
    toxic_threshold: float = 0.5
    nontoxic_threshold: float = 0.2
    pairs_per_prompt: int = 2
    use_rtp_continuations: bool = True
    max_prompt_tokens: int = 64
    max_continuation_tokens: int = 32
    val_fraction: float = 0.1
    seed: int = 0
    cut_after_toxic: int | None = 2      # keep this many tokens after the first toxic token (None: keep all)


def first_toxic_token(tok, ids: list[int], threshold: float = 0.5) -> int:
    """Index of the token at which the judge's score of the prefix first reaches `threshold`
    (the last index when no prefix does)."""
    scores = judge([tok.decode(ids[:j + 1], skip_special_tokens=True) for j in range(len(ids))])
    for j, s in enumerate(scores):
        if s >= threshold:
            return j
    return len(ids) - 1


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_pairs(model, tok, cfg: PairConfig, *, data_dir=None, cache_root: Path | None = None,
                model_name: str = "default") -> tuple[list[Pair], list[Pair], dict]:
    """(train pairs, validation pairs, statistics) as described in the module docstring."""
    from rgk.models import cache_dir
    records = load_rtp(data_dir)
    train_idx, _ = split_rtp(len(records), cfg.n_train, cfg.split_seed)
    prompts = [records[i].prompt for i in train_idx]
    key = _fingerprint(model_name, cfg.n_train, cfg.split_seed, cfg.n_samples, cfg.max_new_tokens, cfg.seed)
    cache_file = Path(cache_root or cache_dir()) / "argre" / f"gen-{key}.jsonl"
    gens = generate_training_continuations(model, tok, prompts, cache_file, n_samples=cfg.n_samples,
                                           max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)

    flat = [ids for g in gens for ids in [g["greedy"], *g["samples"]]]
    scores = judge(tok.batch_decode(flat, skip_special_tokens=True))
    per = 1 + cfg.n_samples
    rng = random.Random(cfg.seed)
    pairs: list[Pair] = []
    n_model_neg = n_rtp_neg = n_none = 0
    for j, ridx in enumerate(train_idx):
        rec = records[ridx]
        cands = [ids for ids in [gens[j]["greedy"], *gens[j]["samples"]]]
        sc = scores[j * per:(j + 1) * per]
        uniq: dict[tuple, float] = {}
        for ids, s in zip(cands, sc):
            if ids:
                uniq[tuple(ids[:cfg.max_continuation_tokens])] = s
        toxic = sorted(((s, list(ids)) for ids, s in uniq.items() if s >= cfg.toxic_threshold), key=lambda t: -t[0])
        clean = [(s, list(ids)) for ids, s in uniq.items() if s <= cfg.nontoxic_threshold]
        negs = [(s, ids, "model") for s, ids in toxic]
        if not negs and cfg.use_rtp_continuations and (rec.continuation_toxicity or 0.0) >= cfg.toxic_threshold:
            ids = tok(rec.continuation, add_special_tokens=False).input_ids[:cfg.max_continuation_tokens]
            if ids:
                negs = [(float(rec.continuation_toxicity), ids, "rtp")]
        if not negs or not clean:
            n_none += 1
            continue
        rng.shuffle(clean)
        p_ids = tok(rec.prompt, add_special_tokens=False).input_ids[-cfg.max_prompt_tokens:]
        for (ns, n_ids, src), (ps, pos) in zip(negs[:cfg.pairs_per_prompt], clean):
            if cfg.cut_after_toxic is not None:
                n_ids = n_ids[:first_toxic_token(tok, n_ids, cfg.toxic_threshold) + 1 + cfg.cut_after_toxic]
                pos = pos[:len(n_ids)]
            pairs.append(Pair(p_ids, pos, n_ids, ridx, src, ps, ns))
            n_model_neg += src == "model"
            n_rtp_neg += src == "rtp"

    prompt_ids = sorted({p.prompt_index for p in pairs})
    random.Random(cfg.seed + 1).shuffle(prompt_ids)
    n_val = max(1, round(cfg.val_fraction * len(prompt_ids)))
    val_prompts = set(prompt_ids[:n_val])
    train = [p for p in pairs if p.prompt_index not in val_prompts]
    val = [p for p in pairs if p.prompt_index in val_prompts]
    stats = dict(train_prompts=len(train_idx), prompts_without_pair=n_none, pairs=len(pairs),
                 pairs_model_toxic=n_model_neg, pairs_rtp_toxic=n_rtp_neg, train_pairs=len(train),
                 val_pairs=len(val), val_prompts=len(val_prompts),
                 model_continuations=len(flat), model_toxic_share=sum(s >= 0.5 for s in scores) / max(1, len(scores)),
                 generation_cache=cache_file.name)
    return train, val, stats
