"""ARGS decoding: `args_generate` (rgk's signature over the one entry, `rgk.args.engine.run`)
and `naive_args_generate`, the reference.

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

import torch
from tqdm.auto import tqdm

from rgk import hf, ops
from rgk.args.engine import DecodeSpec, eos_blocked, run
# the input checks live in rgk.args.inputs; re-exported here, where they were first defined
from rgk.args.inputs import (ARGSOutput, _pad_for_mask, _Recorder, as_float, as_int,  # noqa: F401
                             check_args_params, check_capacity, check_eos_reward, check_inputs, check_loop,
                             check_mask, check_source, eos_pad,
                             infer_left_padding, select, uniform_draws)
from rgk.args.rewards import lm_vocab


def _setup(model, input_ids, attention_mask, reward, k, w, temperature, max_new_tokens, eos_token_id,
           pad_token_id):
    mask, max_new_tokens = check_inputs(input_ids, attention_mask, max_new_tokens,
                                        _pad_for_mask(model, pad_token_id))
    k, w, temperature = check_args_params(k=k, w=w, temperature=temperature, vocab_size=lm_vocab(model))
    src = check_source(reward, model)
    eos, pad = eos_pad(model, eos_token_id, pad_token_id, input_ids.device)
    return mask, max_new_tokens, k, w, temperature, src, eos, pad


def check_callable(name: str, fn):
    """None, or a callable (a LogitsProcessorList / StoppingCriteriaList, or a function); an
    empty list is None."""
    if fn is None:
        return None
    if isinstance(fn, (list, tuple)):
        if not fn:
            return None
        if not all(callable(f) for f in fn):
            raise TypeError(f"{name}: expected a callable or a list of callables")
        if name == "logits_processor":
            from transformers import LogitsProcessorList
            return LogitsProcessorList(fn)
        from transformers import StoppingCriteriaList
        return StoppingCriteriaList(fn)
    if not callable(fn):
        raise TypeError(f"{name}: expected a callable or a list of callables, got {type(fn).__name__}")
    return fn


def check_streamer(streamer):
    if streamer is not None and not (callable(getattr(streamer, "put", None)) and
                                     callable(getattr(streamer, "end", None))):
        raise TypeError(f"streamer: expected an object with put() and end() (a transformers streamer), "
                        f"got {type(streamer).__name__}")
    return streamer


@torch.no_grad()
def args_generate(model, input_ids, attention_mask=None, *, reward, k: int = 10, w: float = 1.5,
                  temperature: float = 0.0, max_new_tokens: int = 32, eos_token_id=None, pad_token_id=None,
                  generator: torch.Generator | None = None, max_cache_len: int | None = None,
                  progress: bool = False, loop: str = "auto", stop_every: int = 8,
                  eos_reward: str = "candidate", min_new_tokens: int = 0, logits_processor=None,
                  stopping_criteria=None, streamer=None) -> ARGSOutput:
    """ARGS decoding with caches: see the module docstring.

    model: a HF causal LM; input_ids/attention_mask [B, T] left-padded (without a mask,
    each row's leading pad tokens are padding); reward: a RewardHead (shared backbone), a
    RewardModel, a TextReward or any rgk RewardSource.  max_cache_len (default
    T + max_new_tokens) must hold the prompt and every new token.  With an ARGRE editor
    attached to the model, every forward's newest positions are edited — in the candidate
    pass all k candidates — exactly as in `naive_args_generate`.  eos_token_id: an int, a
    list of ints or None (the model's generation config).

    loop: "auto" (default) runs rgk's static-shape step (`rgk.args.decode`) wherever the
    source and model family allow it — CUDA-graph replay on CUDA, eager on CPU — and the
    Python loop otherwise (text rewards, other logits processors); "eager", "compiled"
    (torch.compile fullgraph) and "graph" force the static step; "dynamic" forces the
    Python loop.  stop_every: the static loop reads the done flags every that many steps.

    eos_reward: "candidate" (default, the paper's ARGS) scores an EOS candidate with
    r([x, y<t, EOS]) like any other; "prefix" (opt-in) gives it r([x, y<t]), the reward of
    the sequence before it (the prompt's own reward at the first step), on every loop.

    As in `generate`: min_new_tokens (EOS is not a candidate before that many new tokens);
    logits_processor (transformers LogitsProcessors, applied to the LM's fp32 logits before
    the top-k, so they change both the candidates and their log-probs; Python loop only);
    stopping_criteria (called after each step with the sequences so far and the chosen
    candidates' ARGS scores [B]: a row it stops is finished like one that emitted EOS);
    streamer (gets the prompt, then each step's tokens [B], then end()).  Stopping criteria
    and streamers read the device every step.
    """
    mask, max_new_tokens, k, w, temperature, src, eos, pad = _setup(
        model, input_ids, attention_mask, reward, k, w, temperature, max_new_tokens, eos_token_id, pad_token_id)
    eos_prefix = check_eos_reward(eos_reward) == "prefix"
    cap = check_capacity(max_cache_len, input_ids.shape[1], max_new_tokens)
    spec = DecodeSpec(k=k, w=w, temperature=temperature, max_new_tokens=max_new_tokens, cap=cap, eos=eos, pad=pad,
                      min_new_tokens=as_int("min_new_tokens", min_new_tokens, 0), loop=check_loop(loop),
                      stop_every=as_int("stop_every", stop_every, 1), progress=bool(progress),
                      eos_prefix=eos_prefix, generator=generator,
                      logits_processor=check_callable("logits_processor", logits_processor),
                      stopping=check_callable("stopping_criteria", stopping_criteria),
                      streamer=check_streamer(streamer))
    return run(model, src, input_ids, mask, spec)


@torch.no_grad()
def naive_args_generate(model, input_ids, attention_mask=None, *, reward, k: int = 10, w: float = 1.5,
                        temperature: float = 0.0, max_new_tokens: int = 32, eos_token_id=None,
                        pad_token_id=None, generator: torch.Generator | None = None,
                        progress: bool = False, eos_reward: str = "candidate", min_new_tokens: int = 0,
                        logits_processor=None, stopping_criteria=None) -> ARGSOutput:
    """Reference ARGS: no caches; every step re-runs the LM over the full sequences and the
    reward over all B·k full candidate sequences.  Same arguments as `args_generate`
    (eos_reward="prefix": the EOS candidate gets the reward of the full sequence before it)."""
    mask, max_new_tokens, k, w, temperature, src, eos, pad = _setup(
        model, input_ids, attention_mask, reward, k, w, temperature, max_new_tokens, eos_token_id, pad_token_id)
    eos_prefix = check_eos_reward(eos_reward) == "prefix"
    min_new_tokens = as_int("min_new_tokens", min_new_tokens, 0)
    procs = check_callable("logits_processor", logits_processor)
    stopping = check_callable("stopping_criteria", stopping_criteria)
    B, T0 = input_ids.shape
    dev = input_ids.device
    rec = _Recorder(input_ids, eos, pad)
    seqs = input_ids
    for step in tqdm(range(max_new_tokens), desc="naive ARGS", disable=not progress, leave=False):
        logits = model(input_ids=seqs, attention_mask=mask, position_ids=hf.positions(mask)).logits[:, -1].float()
        logits = eos_blocked(logits, eos, step, min_new_tokens)
        if procs is not None:
            logits = procs(seqs, logits).float()
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
        seqs = torch.cat([seqs, tok[:, None]], 1)
        if stopping is not None:
            stop = torch.as_tensor(stopping(seqs, rec.sc[-1]), device=dev).bool().reshape(B)
            rec.done = rec.done | stop
        if rec.done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return rec.output()
