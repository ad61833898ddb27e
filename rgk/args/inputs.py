"""Validated inputs of the ARGS entry points (shared by `args_generate`, `custom_generate`,
the static loop, the processor and the naive oracle), the output record and the per-step
choice.  Nothing here runs a model."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from rgk import ops
from rgk.args.rewards import RewardSource, Scores, as_source


@dataclass
class ARGSOutput:
    sequences: torch.Tensor     # [B, T + n] prompt (left-padded) + generated, pad after EOS
    rewards: torch.Tensor       # [B, n] reward of the chosen candidate at each step (fp32, 0 after EOS)
    logprobs: torch.Tensor      # [B, n] LM log-prob of the chosen token
    scores: torch.Tensor        # [B, n] ARGS score of the chosen token


# ----------------------------------------------------------------------------- argument checks
def as_int(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    """An int from an int, numpy integer or 0-d integer tensor (bool refused)."""
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool:
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{name}: expected an int in {rng}, got {v}")
    return v


def as_float(name: str, v, *, lo: float | None = None) -> float:
    """A finite float from a number, numpy scalar or 0-d tensor (bool refused)."""
    if isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype != torch.bool:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v) or (lo is not None and v < lo):
        raise ValueError(f"{name}: expected a finite number{'' if lo is None else f' >= {lo}'}, got {v!r}")
    return v


def check_args_params(*, k, w, temperature, vocab_size: int | None):
    """(k, w, temperature) normalised to (int, float, float), or a ValueError/TypeError naming one."""
    if vocab_size is None:
        k = as_int("k", k, 1)
    else:
        k = as_int("k", k, 1, vocab_size)
    w = as_float("w", w)
    temperature = as_float("temperature", temperature, lo=0.0)
    return k, w, temperature


def check_source(reward, model) -> RewardSource:
    src = as_source(reward)
    src.check_lm(model)
    return src


def infer_left_padding(input_ids: torch.Tensor, pad_token_id) -> torch.Tensor:
    """Mask [B, T] that treats each row's leading run of `pad_token_id` as left padding."""
    if pad_token_id is None:
        return torch.ones_like(input_ids)
    return 1 - (input_ids == int(pad_token_id)).long().cumprod(-1)


def check_mask(mask: torch.Tensor, name: str = "attention_mask") -> torch.Tensor:
    """A left-padding mask as int64: 0/1 values, every row has a real token, no 0 after a 1."""
    if mask.dtype == torch.bool:
        mask = mask.long()
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"{name}: expected an integer or bool tensor of 0/1, got {mask.dtype}")
    mask = mask.long()
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"{name}: expected only 0 and 1 values")
    if (mask.sum(-1) == 0).any():
        raise ValueError(f"{name}: row {int((mask.sum(-1) == 0).nonzero()[0])} has no real token")
    right = (mask[:, 1:] < mask[:, :-1]).any(-1)
    if right.any():
        raise ValueError(f"{name}: row {int(right.nonzero()[0])} is right-padded (a 0 after a real token); "
                         "ARGS needs left padding: set tokenizer.padding_side = 'left'")
    return mask


def check_inputs(input_ids, attention_mask, max_new_tokens, pad_token_id=None):
    """Validated (mask [B, T] int64, max_new_tokens).  Without a mask, each row's leading
    run of `pad_token_id` is taken as left padding (HF generate infers the same)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids: expected a LongTensor [batch, prompt_len]")
    if input_ids.dtype != torch.long:
        raise TypeError(f"input_ids: expected dtype int64 (torch.long), got {input_ids.dtype}")
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids: the batch is empty")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids: the prompt is empty")
    if attention_mask is None:
        attention_mask = infer_left_padding(input_ids, pad_token_id)
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask: expected a tensor, got {type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} (same as input_ids), "
                         f"got {tuple(attention_mask.shape)}")
    mask = check_mask(attention_mask.to(input_ids.device))
    max_new_tokens = as_int("max_new_tokens", max_new_tokens, 1)
    return mask, max_new_tokens


def eos_pad(model, eos_token_id, pad_token_id, device):
    """(eos ids tensor, pad id) from the arguments, else the model's generation config."""
    gc = getattr(model, "generation_config", None)
    if eos_token_id is None and gc is not None:
        eos_token_id = gc.eos_token_id
    if pad_token_id is None and gc is not None:
        pad_token_id = gc.pad_token_id
    if eos_token_id is None:
        eos = torch.empty(0, dtype=torch.long, device=device)
    else:
        eos = torch.as_tensor(eos_token_id, dtype=torch.long, device=device).flatten()
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if eos.numel() else 0
    return eos, as_int("pad_token_id", pad_token_id)


def _pad_for_mask(model, pad_token_id):
    if pad_token_id is not None:
        return pad_token_id
    gc = getattr(model, "generation_config", None)
    return getattr(gc, "pad_token_id", None)


class _Recorder:
    """Collects tokens and per-step statistics; marks rows done after EOS."""

    def __init__(self, input_ids, eos, pad):
        self.seqs, self.eos, self.pad = [input_ids], eos, pad
        self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self.r, self.lp, self.sc = [], [], []

    def add(self, tok, index, logp, score, r):
        """Rows finished before this step get pad and zero statistics."""
        tok = torch.where(self.done, torch.full_like(tok, self.pad), tok)
        take = lambda t: torch.where(self.done, 0.0, t.gather(1, index[:, None])[:, 0].float())  # noqa: E731
        self.seqs.append(tok[:, None])
        self.r.append(take(r)), self.lp.append(take(logp)), self.sc.append(take(score))
        if self.eos.numel():
            self.done = self.done | torch.isin(tok, self.eos)
        return tok

    def output(self):
        st = lambda xs: torch.stack(xs, 1)  # noqa: E731
        return ARGSOutput(torch.cat(self.seqs, 1), st(self.r), st(self.lp), st(self.sc))


def uniform_draws(B, temperature, generator, device):
    """One U[0,1) draw per row (None in greedy mode), from `generator` when given."""
    if temperature == 0:
        return None
    return torch.rand(B, generator=generator, device=generator.device if generator is not None else device).to(device)


def select(scores: Scores, logp, ids, *, w, temperature, uniform):
    """(token, index, score, reward) from a session's Scores: one fused launch for hidden + head."""
    if scores.rewards is not None:
        r = scores.rewards.float()
        tok, idx, score = ops.select_from_rewards(logp, ids, r, reward_weight=w, temperature=temperature,
                                                  uniform=uniform)
        return tok, idx, score, r
    return ops.reward_select(scores.hidden, logp, ids, *scores.head, reward_weight=w, temperature=temperature,
                             uniform=uniform)


def check_capacity(max_cache_len, prompt_len: int, max_new_tokens: int) -> int:
    """The cache capacity: prompt + max_new_tokens, or max_cache_len when it holds that."""
    need = prompt_len + max_new_tokens
    cap = need if max_cache_len is None else as_int("max_cache_len", max_cache_len, 1)
    if cap < need:
        raise ValueError(f"max_cache_len: {cap} cannot hold the prompt ({prompt_len} tokens) plus max_new_tokens="
                         f"{max_new_tokens}; pass max_cache_len >= {need} (or leave it None)")
    return cap


#: the static loop's ways to run (`rgk.args.decode`); "dynamic" is the Python loop
LOOPS = ("auto", "eager", "compiled", "graph")


def check_loop(loop) -> str:
    if not isinstance(loop, str) or loop not in LOOPS + ("dynamic",):
        raise ValueError(f"loop: expected one of {', '.join(LOOPS + ('dynamic',))}, got {loop!r}")
    return loop


EOS_REWARDS = ("candidate", "prefix")


def check_eos_reward(eos_reward) -> str:
    if not isinstance(eos_reward, str) or eos_reward not in EOS_REWARDS:
        raise ValueError(f"eos_reward: expected one of {', '.join(map(repr, EOS_REWARDS))}, got {eos_reward!r}")
    return eos_reward
