"""ARGS decoding loops: the cached/forked native loop and the naive reference.

At step t, with context x and generated prefix y<t: the base LM's top-k tokens by
probability are scored  score(v) = log p_LM(v | x, y<t) + w · r([x, y<t, v]); greedy
mode (temperature 0) takes the argmax (lowest candidate index on ties), stochastic mode
samples from softmax(score / temperature) over the k candidates with one U[0,1) draw per
row (drawn from `generator`, so both loops pick the same tokens for the same seed).

`args_generate` costs, per token: shared backbone, one k-token forward of the LM; separate
reward model, one 1-token LM forward + one k-token reward-model forward against its
prefix cache (fork attention, no copies); text reward, one LM forward + the callable.
`naive_args_generate` re-runs everything over every full candidate sequence each step:
it is the oracle of the tests and the baseline of the benchmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rgk import ops
from rgk.ops import reference
from rgk.args.cache import ForkCache
from rgk.args.rewards import reward_kind
from rgk.models import RewardHead, final_hidden


@dataclass
class ARGSOutput:
    sequences: torch.Tensor     # [B, T + n] prompt (left-padded) + generated, pad after EOS
    rewards: torch.Tensor       # [B, n] reward of the chosen candidate at each step (fp32, 0 after EOS)
    logprobs: torch.Tensor      # [B, n] LM log-prob of the chosen token
    scores: torch.Tensor        # [B, n] ARGS score of the chosen token


def _lm_vocab(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def check_args_params(*, k, w, temperature, vocab_size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab_size:
        raise ValueError(f"k: expected an int in [1, vocab size {vocab_size}], got {k!r}")
    if not isinstance(w, (int, float)) or not math.isfinite(w):
        raise ValueError(f"w: expected a finite number, got {w!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0 (0 = greedy), got {temperature!r}")


def check_reward(reward, model) -> str:
    kind = reward_kind(reward)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if kind == "shared" and reward.config.hidden_size != cfg.hidden_size:
        raise ValueError(f"reward: head hidden_size {reward.config.hidden_size} does not match the LM's "
                         f"hidden_size {cfg.hidden_size}")
    if kind == "model" and reward.vocab_size != _lm_vocab(model):
        raise ValueError(f"reward: the reward model's vocabulary ({reward.vocab_size} tokens) differs from the "
                         f"LM's ({_lm_vocab(model)}); the cached path needs the same tokenizer — wrap a "
                         "text-level reward in TextReward(fn, tokenizer) instead")
    return kind


def _check_inputs(input_ids, attention_mask, max_new_tokens):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError("input_ids: expected a LongTensor [batch, prompt_len]")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids: the prompt is empty")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} (same as input_ids), "
                         f"got {tuple(attention_mask.shape)}")
    if (attention_mask.long().sum(-1) == 0).any():
        raise ValueError("attention_mask: a row has no real token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
    return attention_mask.long()


def _eos_pad(model, eos_token_id, pad_token_id, device):
    gc = getattr(model, "generation_config", None)
    if eos_token_id is None and gc is not None:
        eos_token_id = gc.eos_token_id
    if pad_token_id is None:
        pad_token_id = getattr(gc, "pad_token_id", None) if gc is not None else None
    if eos_token_id is None:
        eos = torch.empty(0, dtype=torch.long, device=device)
    else:
        eos = torch.as_tensor(eos_token_id, dtype=torch.long, device=device).flatten()
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if eos.numel() else 0
    return eos, int(pad_token_id)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


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


def _uniform(B, temperature, generator, device):
    if temperature == 0:
        return None
    return torch.rand(B, generator=generator, device=generator.device if generator is not None else device).to(device)


def head_params(head: RewardHead, device):
    """The head's (w1, b1, w2, b2) as fp32 on `device`, as `ops.reward_select` takes them."""
    return [None if p is None else p.detach().float().to(device) for p in head.params()]


def row_lists(input_ids, mask):
    """Each row's real (unpadded) tokens as a list."""
    return [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]


@torch.no_grad()
def args_generate(model, input_ids, attention_mask=None, *, reward, k: int = 10, w: float = 1.5,
                  temperature: float = 0.0, max_new_tokens: int = 32, eos_token_id=None, pad_token_id=None,
                  generator: torch.Generator | None = None, max_cache_len: int | None = None,
                  progress: bool = False) -> ARGSOutput:
    """ARGS decoding with caches: see the module docstring.

    model: a HF causal LM; input_ids/attention_mask [B, T] left-padded; reward: RewardHead
    (shared backbone), RewardModel or TextReward.  max_cache_len defaults to T + max_new_tokens.
    """
    mask = _check_inputs(input_ids, attention_mask, max_new_tokens)
    check_args_params(k=k, w=w, temperature=temperature, vocab_size=_lm_vocab(model))
    kind = check_reward(reward, model)
    B, T = input_ids.shape
    dev = input_ids.device
    cap = T + max_new_tokens if max_cache_len is None else max_cache_len
    if T > cap:
        raise ValueError(f"input_ids: the prompt ({T} tokens) is longer than max_cache_len={cap}")
    eos, pad = _eos_pad(model, eos_token_id, pad_token_id, dev)
    rec = _Recorder(input_ids, eos, pad)
    lm_head = model.get_output_embeddings()
    steps = tqdm(range(max_new_tokens), desc="ARGS", disable=not progress, leave=False)

    if kind == "shared":
        dec = model.get_decoder()
        cache = ForkCache.for_model(model, B, cap, k)
        logits = lm_head(cache.extend(dec, input_ids, mask)[:, -1])
        params = head_params(reward, dev)
        for _ in steps:
            logp, ids = ops.topk_logprobs(logits, k)
            hc = cache.fork(dec, ids)
            u = _uniform(B, temperature, generator, dev)
            tok, idx, score, r = ops.reward_select(hc, logp, ids, *params, reward_weight=w,
                                                   temperature=temperature, uniform=u)
            rec.add(tok, idx, logp, score, r)
            cache.commit(idx)
            if rec.done.all() or cache.length >= cap:
                break
            logits = lm_head(hc[torch.arange(B, device=dev), idx])
        return rec.output()

    # separate reward model or text reward: the LM decodes with its own cache
    from transformers import DynamicCache
    lm_cache = DynamicCache()
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=_positions(mask),
                past_key_values=lm_cache, use_cache=True)
    logits = out.logits[:, -1].float()
    if kind == "model":
        rm_cache = ForkCache.for_model(reward.model, B, cap, k)
        rm_cache.extend(reward.decoder, input_ids, mask)
        params = head_params(reward.head, dev)
    else:
        prompts, gen = row_lists(input_ids, mask), [[] for _ in range(B)]
    for _ in steps:
        logp, ids = ops.topk_logprobs(logits, k)
        u = _uniform(B, temperature, generator, dev)
        if kind == "model":
            hc = rm_cache.fork(reward.decoder, ids)
            tok, idx, score, r = ops.reward_select(hc, logp, ids, *params, reward_weight=w,
                                                   temperature=temperature, uniform=u)
            rm_cache.commit(idx)
        else:
            r = reward.score_candidates(prompts, gen, ids)
            tok, idx, score = reference.select_from_rewards(logp, ids, r, reward_weight=w,
                                                            temperature=temperature, uniform=u)
        tok = rec.add(tok, idx, logp, score, r)
        if kind == "text":
            for b, t in enumerate(tok.tolist()):
                gen[b].append(t)
        if rec.done.all() or mask.shape[1] >= cap:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=_positions(mask)[:, -1:],
                    past_key_values=lm_cache, use_cache=True)
        logits = out.logits[:, -1].float()
    return rec.output()


@torch.no_grad()
def naive_args_generate(model, input_ids, attention_mask=None, *, reward, k: int = 10, w: float = 1.5,
                        temperature: float = 0.0, max_new_tokens: int = 32, eos_token_id=None,
                        pad_token_id=None, generator: torch.Generator | None = None,
                        progress: bool = False) -> ARGSOutput:
    """Reference ARGS: no caches; every step re-runs the LM over the full sequences and the
    reward over all B·k full candidate sequences.  Same arguments as `args_generate`."""
    mask = _check_inputs(input_ids, attention_mask, max_new_tokens)
    check_args_params(k=k, w=w, temperature=temperature, vocab_size=_lm_vocab(model))
    kind = check_reward(reward, model)
    B = input_ids.shape[0]
    dev = input_ids.device
    eos, pad = _eos_pad(model, eos_token_id, pad_token_id, dev)
    rec = _Recorder(input_ids, eos, pad)
    seqs = input_ids
    for _ in tqdm(range(max_new_tokens), desc="naive ARGS", disable=not progress, leave=False):
        logits = model(input_ids=seqs, attention_mask=mask, position_ids=_positions(mask)).logits[:, -1].float()
        logp, ids = reference.topk_logprobs(logits, k)
        cand = torch.cat([seqs.repeat_interleave(k, 0), ids.reshape(-1, 1)], 1)
        cmask = torch.cat([mask.repeat_interleave(k, 0), torch.ones(B * k, 1, dtype=mask.dtype, device=dev)], 1)
        if kind == "shared":
            h = final_hidden(model, cand, cmask, position_ids=_positions(cmask))[:, -1]
            r = reward(h)
        elif kind == "model":
            r = reward.score(cand, cmask)
        else:
            T0 = input_ids.shape[1]
            prompts = row_lists(cand[:, :T0], cmask[:, :T0])
            resp = [row.tolist() for row in cand[:, T0:]]
            r = reward(prompts, resp)
        r = r.view(B, k).float().to(dev)
        u = _uniform(B, temperature, generator, dev)
        tok, idx, score = reference.select_from_rewards(logp, ids, r, reward_weight=w, temperature=temperature,
                                                        uniform=u)
        tok = rec.add(tok, idx, logp, score, r)
        if rec.done.all():
            break
        seqs = torch.cat([seqs, tok[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return rec.output()
