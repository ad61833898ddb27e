"""Evaluate a policy on held-out prompts: average reward, P(r < η), worst-tail mean, KL to a reference."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from rgk.repulse.losses import sequence_logprob
from rgk.repulse.rollout import (bad_fraction, check_policy_model, encode_prompts, left_pad, rewards, sample,
                                 tail_mean, token_logprobs)

__all__ = ["evaluate_policy", "bootstrap_ci"]


def bootstrap_ci(per_prompt: torch.Tensor, *, n: int = 2000, level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval [lo, hi] of the mean of `per_prompt` [P] (resampling prompts)."""
    x = per_prompt.double().flatten()
    if x.numel() < 2:
        return [float(x.mean()), float(x.mean())] if x.numel() else [float("nan"), float("nan")]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n, x.numel()), generator=g)
    m = x[idx].mean(-1)
    a = (1 - level) / 2
    return [float(torch.quantile(m, a)), float(torch.quantile(m, 1 - a))]


def _pos_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return v


@torch.no_grad()
def evaluate_policy(model, reward, prompts, *, tokenizer=None, reference=None, samples_per_prompt: int = 20,
                    max_new_tokens: int = 20, threshold: float = -5.0, tail_fraction: float = 1e-4,
                    batch_prompts: int = 8, seed: int = 0, max_prompt_tokens: int = 64, chat_template: bool = False,
                    progress: bool = True, n_examples: int = 3, judge=None, ci_samples: int = 2000,
                    keep_samples: bool = False) -> dict:
    """Sample `samples_per_prompt` responses (temperature 1) per prompt from `model` and report

    reward_mean / reward_std, p_bad = P(r < threshold), tail_mean = mean of the worst
    ⌈tail_fraction · n⌉ rewards (at least one), kl = mean Σ_t (log p − log p_ref) when a
    `reference` model is given, and a few decoded examples (worst rewards first).

    reward: an rgk reward source (see `RePULSeTrainer`); a shared-backbone head reads
    `reference` when given (the fixed reward of training), else `model`.  Sampling is
    seeded per batch of `batch_prompts` prompts from `seed`.

    judge: optionally a second, independent scorer, `judge(texts) -> P(bad)` per decoded
    response (e.g. alt-profanity-check's `predict_prob`): adds judge_mean and
    judge_share (share of responses with P > 0.5).  Every mean comes with a 95% bootstrap
    interval over prompts (`ci_samples` resamples, seeded; `*_ci` = [lo, hi]), since the
    samples of one prompt are not independent.  keep_samples: also return the per-sample
    rewards (and judge scores) under "samples", prompt-major."""
    from rgk.args.rewards import RewardModel, SharedHead, as_source
    check_policy_model(model)
    if reference is not None:
        check_policy_model(reference, "reference")
    K = _pos_int("samples_per_prompt", samples_per_prompt)
    _pos_int("max_new_tokens", max_new_tokens)
    _pos_int("batch_prompts", batch_prompts)
    _pos_int("seed", seed, 0)
    for name, v in (("threshold", threshold), ("tail_fraction", tail_fraction)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if not 0 < tail_fraction <= 1:
        raise ValueError(f"tail_fraction: expected a number in (0, 1], got {tail_fraction!r}")
    rows = encode_prompts(prompts, tokenizer, max_prompt_tokens, chat_template=chat_template)
    source = as_source(reward)
    source.check_lm(model)
    dev = next(model.parameters()).device
    if isinstance(source, SharedHead):
        source.head.to(dev)
    elif isinstance(source, RewardModel):
        source.model.to(dev)
        source.head.to(dev)
    reward_lm = reference if reference is not None else model
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = model.generation_config.pad_token_id if model.generation_config.pad_token_id is not None else 0
    if judge is not None and tokenizer is None:
        raise ValueError("judge: needs a tokenizer to decode the responses")
    _pos_int("ci_samples", ci_samples, 0)
    rs, kls, lens, texts, js = [], [], [], [], []
    batches = range(0, len(rows), batch_prompts)
    for b, lo in enumerate(tqdm(batches, desc="evaluate", unit="batch", disable=not progress)):
        pid, pm = left_pad(rows[lo:lo + batch_prompts], pad, dev)
        rid, rm = pid.repeat_interleave(K, 0), pm.repeat_interleave(K, 0)
        g = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + b)
        resp, mask = sample(model, rid, rm, max_new_tokens=max_new_tokens, pad_id=pad, generator=g)
        r = rewards(source, reward_lm, rid, rm, resp, mask)
        rs.append(r.double().cpu())
        lens.append(mask.sum(-1).double().cpu())
        if reference is not None:
            lp = sequence_logprob(token_logprobs(model, rid, rm, resp, mask), mask)
            lr = sequence_logprob(token_logprobs(reference, rid, rm, resp, mask), mask)
            kls.append((lp - lr).double().cpu())
        if judge is not None:
            decoded = [tokenizer.decode(resp[j][mask[j].bool()].tolist(), skip_special_tokens=True)
                       for j in range(resp.shape[0])]
            js.append(torch.as_tensor([float(v) for v in judge(decoded)], dtype=torch.float64))
        if tokenizer is not None and n_examples:
            for j in range(resp.shape[0]):
                texts.append((float(r[j]), lo + j // K, resp[j][mask[j].bool()].tolist()))
    r = torch.cat(rs)
    tm, tn = tail_mean(r, tail_fraction)
    out = {"n_prompts": len(rows), "samples_per_prompt": K, "n_samples": int(r.numel()),
           "reward_mean": float(r.mean()), "reward_std": float(r.std()) if r.numel() > 1 else 0.0,
           "threshold": float(threshold), "p_bad": bad_fraction(r, threshold), "n_bad": int((r < threshold).sum()),
           "tail_fraction": float(tail_fraction), "tail_n": tn, "tail_mean": tm,
           "kl": float(torch.cat(kls).mean()) if kls else None, "resp_len": float(torch.cat(lens).mean())}
    per = {"reward_mean": r.view(-1, K), "p_bad": (r < threshold).double().view(-1, K)}
    if js:
        j = torch.cat(js)
        out["judge_mean"], out["judge_share"] = float(j.mean()), float((j > 0.5).double().mean())
        per["judge_mean"], per["judge_share"] = j.view(-1, K), (j > 0.5).double().view(-1, K)
    if ci_samples:
        for name, v in per.items():
            out[name + "_ci"] = bootstrap_ci(v.mean(-1), n=ci_samples, seed=seed)
    if keep_samples:
        out["samples"] = {"reward": r.tolist(), **({"judge": torch.cat(js).tolist()} if js else {})}
    if texts:
        texts.sort(key=lambda t: t[0])
        out["worst_examples"] = [{"reward": v, "prompt": i, "response": tokenizer.decode(ids, skip_special_tokens=True)}
                                 for v, i, ids in texts[:n_examples]]
    return out
