"""ARGS decoding loops: the cached/forked native loop and the naive reference.

At step t, with context x and generated prefix y<t: the base LM's top-k tokens by
probability are scored  score(v) = log p_LM(v | x, y<t) + w · r([x, y<t, v]); greedy
mode (temperature 0) takes the argmax, stochastic mode samples from
softmax(score / temperature) over the k candidates with one U[0,1) draw per row (drawn
from `generator`, so both loops pick the same tokens for the same seed).  Ties, NaN and
inf follow the one rule documented in `rgk.ops` (ties go to the lower vocabulary index,
so k = 1 or w = 0 is exactly HF greedy decoding).

Both loops are written once against the reward-source interface of `rgk.args.rewards`.
`args_generate` costs, per token: shared backbone, one k-token forward of the LM;
separate reward model, one 1-token LM forward + one k-token reward-model forward against
its prefix cache (fork attention, no copies); text reward, one LM forward + the callable.
`naive_args_generate` re-runs everything over every full candidate sequence each step:
it is the oracle of the tests and the baseline of the benchmarks.

End of sequence: by default (`eos_reward="candidate"`, the paper's semantics) the EOS
candidate is scored like any other, r([x, y<t, EOS]).  A reward head trained on responses
without their end-of-turn marker reads that position out of distribution: the shipped HH
head scored the EOS candidate below the prefix at 39 of the 40 steps where EOS was among
the top 10 on 32 held-out HH-RLHF prompts, by 1.27 [1.04, 1.49] standardised units (1.9 in
score at w = 1.5; `rgk eval eos-probe --n-prompts 32 --max-new-tokens 64`,
benchmarks/eval/eos_probe.md), so ARGS stops less often than greedy.  `eos_reward="prefix"`
(opt-in) scores the EOS candidate with the
reward of the sequence before it, r([x, y<t]): stopping then keeps the reward the answer
already has.  Every loop runs it (the static step keeps the prefix reward on device), and so
does `ARGSLogitsProcessor(eos_reward="prefix")`.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rgk import hf, ops
from rgk.args.decode import _LMFork
from rgk.args.rewards import RewardModel, RewardSource, Scores, as_source, eos_prefix_scores, lm_vocab


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


EOS_REWARDS = ("candidate", "prefix")


def check_eos_reward(eos_reward) -> str:
    if not isinstance(eos_reward, str) or eos_reward not in EOS_REWARDS:
        raise ValueError(f"eos_reward: expected one of {', '.join(map(repr, EOS_REWARDS))}, got {eos_reward!r}")
    return eos_reward


# ----------------------------------------------------------------------------- LM drivers
class _PlainLM:
    """The LM decoding with its own DynamicCache (separate reward model or text reward)."""

    def __init__(self, model):
        from transformers import DynamicCache
        self.model, self.cache = model, DynamicCache()

    def prefill(self, input_ids, mask):
        self.mask = mask
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=hf.positions(mask), use_cache=True,
                         **hf.cache_kw(self.model, self.cache))
        hf.check_cache_filled(self.cache, input_ids.shape[1], "args_generate (LM prefill)")
        return out.logits[:, -1].float()

    def fork(self, ids):
        return None

    def advance(self, index, token):
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        n = self.mask.shape[1]
        out = self.model(input_ids=token[:, None], attention_mask=self.mask,
                         position_ids=hf.positions(self.mask)[:, -1:], use_cache=True,
                         **hf.cache_kw(self.model, self.cache))
        hf.check_cache_filled(self.cache, n, "args_generate (LM step)")
        return out.logits[:, -1].float()


class _ForkLM(_LMFork):
    """The LM with a ForkCache (shared backbone), driven from Python: the candidates'
    forward gives both their hidden states (for the head) and, at the winner, the next
    step's logits."""

    def fork(self, ids):
        self.hc = self.cache.fork(self.dec, ids)
        return self.hc

    def advance(self, index, token):
        self.cache.commit(index)
        rows = torch.arange(index.shape[0], device=index.device)
        return self.head(self.hc[rows, index])


def _setup(model, input_ids, attention_mask, reward, k, w, temperature, max_new_tokens, eos_token_id,
           pad_token_id):
    mask, max_new_tokens = check_inputs(input_ids, attention_mask, max_new_tokens,
                                        _pad_for_mask(model, pad_token_id))
    k, w, temperature = check_args_params(k=k, w=w, temperature=temperature, vocab_size=lm_vocab(model))
    src = check_source(reward, model)
    eos, pad = eos_pad(model, eos_token_id, pad_token_id, input_ids.device)
    return mask, max_new_tokens, k, w, temperature, src, eos, pad


@torch.no_grad()
def args_generate(model, input_ids, attention_mask=None, *, reward, k: int = 10, w: float = 1.5,
                  temperature: float = 0.0, max_new_tokens: int = 32, eos_token_id=None, pad_token_id=None,
                  generator: torch.Generator | None = None, max_cache_len: int | None = None,
                  progress: bool = False, loop: str = "auto", stop_every: int = 8,
                  eos_reward: str = "candidate") -> ARGSOutput:
    """ARGS decoding with caches: see the module docstring.

    model: a HF causal LM; input_ids/attention_mask [B, T] left-padded (without a mask,
    each row's leading pad tokens are padding); reward: a RewardHead (shared backbone), a
    RewardModel, a TextReward or any rgk RewardSource.  max_cache_len (default
    T + max_new_tokens) must hold the prompt and every new token.  With an ARGRE editor
    attached to the model, every forward's newest positions are edited — in the candidate
    pass all k candidates — exactly as in `naive_args_generate`.

    loop: "auto" (default) runs rgk's static-shape step (`rgk.args.decode`) wherever the
    source and model family allow it — CUDA-graph replay on CUDA, eager on CPU — and the
    Python loop otherwise (text rewards, other model families); "eager", "compiled"
    (torch.compile fullgraph) and "graph" force the static step; "dynamic" forces the
    Python loop.  stop_every: the static loop reads the done flags every that many steps.

    eos_reward: "candidate" (default, the paper's ARGS) scores an EOS candidate with
    r([x, y<t, EOS]) like any other; "prefix" (opt-in) gives it r([x, y<t]), the reward of
    the sequence before it (the prompt's own reward at the first step), on every loop.
    """
    mask, max_new_tokens, k, w, temperature, src, eos, pad = _setup(
        model, input_ids, attention_mask, reward, k, w, temperature, max_new_tokens, eos_token_id, pad_token_id)
    eos_prefix = check_eos_reward(eos_reward) == "prefix"
    B, T = input_ids.shape
    dev = input_ids.device
    need = T + max_new_tokens
    cap = need if max_cache_len is None else as_int("max_cache_len", max_cache_len, 1)
    if cap < need:
        raise ValueError(f"max_cache_len: {cap} cannot hold the prompt ({T} tokens) plus max_new_tokens="
                         f"{max_new_tokens}; pass max_cache_len >= {need} (or leave it None)")
    from rgk.args import decode
    if not isinstance(loop, str) or loop not in decode.LOOPS + ("dynamic",):
        raise ValueError(f"loop: expected one of {', '.join(decode.LOOPS + ('dynamic',))}, got {loop!r}")
    stop_every = as_int("stop_every", stop_every, 1)
    # the fork pass runs the LM (shared head, or the static loop's LM) and a RewardModel: refuse,
    # before any work, a family whose attention it cannot apply exactly
    # (a text reward on the Python loop runs the LM through HF's own cache: no probe needed)
    forks_lm = src.uses_lm_hidden or loop not in ("auto", "dynamic") or (loop == "auto" and decode.static_capable(src))
    lm_problem = decode.family_problem(model) if forks_lm else None
    if lm_problem is not None and (src.uses_lm_hidden or loop not in ("auto", "dynamic")):
        raise ValueError(f"model: {lm_problem}; rgk cannot decode it exactly")
    if isinstance(src, RewardModel):
        decode.check_family(src.model, "reward")
    static_ok = decode.static_capable(src) and lm_problem is None
    if loop not in ("auto", "dynamic"):
        if not decode.static_capable(src):
            raise ValueError(f"loop: {loop!r} needs a reward source the static step can run (a RewardHead or a "
                             f"RewardModel); {type(src).__name__} runs on loop='dynamic'")
    if loop != "dynamic" and (loop != "auto" or static_ok):
        seqs, r, lp, sc = decode.run_static(model, src, input_ids, mask, k=k, w=w, temperature=temperature,
                                            max_new_tokens=max_new_tokens, cap=cap, eos=eos, pad=pad,
                                            generator=generator, loop=loop, stop_every=stop_every,
                                            progress=progress, eos_prefix=eos_prefix)
        return ARGSOutput(seqs, r, lp, sc)
    rec = _Recorder(input_ids, eos, pad)
    lm = _ForkLM(model, B, cap, k) if src.uses_lm_hidden else _PlainLM(model)
    session = src.open(model, input_ids, mask, capacity=cap, k=k)
    try:
        logits = lm.prefill(input_ids, mask)
        prefix_r = src.reference_rewards(model, input_ids, mask, T).float().to(dev) if eos_prefix else None
        for step in tqdm(range(max_new_tokens), desc="ARGS", disable=not progress, leave=False):
            logp, ids = ops.topk_logprobs(logits, k)
            sc = session.score(ids, lm.fork(ids))
            if eos_prefix:
                sc = eos_prefix_scores(sc, ids, eos, prefix_r)
            u = uniform_draws(B, temperature, generator, dev)
            tok, idx, score, r = select(sc, logp, ids, w=w, temperature=temperature, uniform=u)
            if eos_prefix:
                prefix_r = r.gather(1, idx[:, None])[:, 0]
            tok = rec.add(tok, idx, logp, score, r)
            if step + 1 == max_new_tokens or bool(rec.done.all()):
                break
            session.commit(idx, tok)
            logits = lm.advance(idx, tok)
    finally:
        session.close()
    return rec.output()


@torch.no_grad()
def naive_args_generate(model, input_ids, attention_mask=None, *, reward, k: int = 10, w: float = 1.5,
                        temperature: float = 0.0, max_new_tokens: int = 32, eos_token_id=None,
                        pad_token_id=None, generator: torch.Generator | None = None,
                        progress: bool = False, eos_reward: str = "candidate") -> ARGSOutput:
    """Reference ARGS: no caches; every step re-runs the LM over the full sequences and the
    reward over all B·k full candidate sequences.  Same arguments as `args_generate`
    (eos_reward="prefix": the EOS candidate gets the reward of the full sequence before it)."""
    mask, max_new_tokens, k, w, temperature, src, eos, pad = _setup(
        model, input_ids, attention_mask, reward, k, w, temperature, max_new_tokens, eos_token_id, pad_token_id)
    eos_prefix = check_eos_reward(eos_reward) == "prefix"
    B, T0 = input_ids.shape
    dev = input_ids.device
    rec = _Recorder(input_ids, eos, pad)
    seqs = input_ids
    for _ in tqdm(range(max_new_tokens), desc="naive ARGS", disable=not progress, leave=False):
        logits = model(input_ids=seqs, attention_mask=mask, position_ids=hf.positions(mask)).logits[:, -1].float()
        logp, ids = ops.topk_logprobs(logits, k)
        cand = torch.cat([seqs.repeat_interleave(k, 0), ids.reshape(-1, 1)], 1)
        cmask = torch.cat([mask.repeat_interleave(k, 0), torch.ones(B * k, 1, dtype=mask.dtype, device=dev)], 1)
        r = src.reference_rewards(model, cand, cmask, T0).reshape(B, k).float().to(dev)
        if eos_prefix and eos.numel():
            prefix_r = src.reference_rewards(model, seqs, mask, T0).float().to(dev)
            r = torch.where(torch.isin(ids, eos), prefix_r[:, None], r)
        u = uniform_draws(B, temperature, generator, dev)
        tok, idx, score = ops.select_from_rewards(logp, ids, r, reward_weight=w, temperature=temperature,
                                                  uniform=u)
        tok = rec.add(tok, idx, logp, score, r)
        if rec.done.all():
            break
        seqs = torch.cat([seqs, tok[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return rec.output()
