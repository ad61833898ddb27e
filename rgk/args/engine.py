"""The one ARGS decoding entry: `run(model, reward, input_ids, mask, spec)`.

`args_generate` (rgk's signature), `custom_generate` (transformers' `generate` and its
`GenerationConfig`) and the CLI all build a `DecodeSpec` and call `run`, which picks the
loop and decodes:

- the static-shape step of `rgk.args.decode` (eager, compiled or CUDA-graph replay) for a
  RewardHead on the LM's backbone or a RewardModel, when the family's fork pass is exact;
- the Python loop below otherwise (text rewards; `loop="dynamic"`; other logits processors,
  which read the whole sequence on the host each step).

Per step, on every loop: the LM's next-token logits (fp32) -> EOS masked while fewer than
`min_new_tokens` tokens were generated -> the `logits_processor` (Python loop only) -> top-k
log-probs -> candidates scored -> choice -> the streamer gets the chosen tokens and the
stopping criteria may finish rows (both on the host, so a loop that has them reads the
device every step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from rgk import hf, ops
from rgk.args.decode import _LMFork
from rgk.args.inputs import ARGSOutput, _Recorder, select, uniform_draws
from rgk.args.rewards import RewardModel, RewardSource, eos_prefix_scores


@dataclass
class DecodeSpec:
    """A validated ARGS request (every field already checked by the caller)."""
    k: int
    w: float
    temperature: float
    max_new_tokens: int
    cap: int                                  # cache capacity >= prompt + max_new_tokens
    eos: torch.Tensor                         # EOS ids [n] int64 (may be empty)
    pad: int
    min_new_tokens: int = 0                   # EOS is not a candidate before this many new tokens
    loop: str = "auto"
    stop_every: int = 8
    progress: bool = False
    eos_prefix: bool = False
    generator: torch.Generator | None = None
    logits_processor: Callable | None = None  # (sequences [B, t], logits [B, V] fp32) -> logits
    stopping: Callable | None = None          # (sequences [B, t], chosen scores [B]) -> bool [B]
    streamer: Any = None                      # .put(tokens [B] cpu) each step, .end() at the end
    stream_prompt: bool = True                # put the prompt first (generate has already put it)


class StepHooks:
    """What a step hands to the host: the streamer and the stopping criteria."""

    def __init__(self, spec: DecodeSpec, input_ids: torch.Tensor):
        self.streamer, self.stopping = spec.streamer, spec.stopping
        self.seqs = input_ids
        if self.streamer is not None and spec.stream_prompt:
            self.streamer.put(input_ids.cpu())

    @staticmethod
    def wanted(spec: DecodeSpec) -> bool:
        return spec.streamer is not None or spec.stopping is not None

    def after(self, tok: torch.Tensor, done: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """The step's chosen tokens [B] (pad for finished rows) and done flags -> new done flags."""
        if self.streamer is not None:
            self.streamer.put(tok.cpu())
        if self.stopping is not None:
            self.seqs = torch.cat([self.seqs, tok[:, None].to(self.seqs.device)], 1)
            stop = self.stopping(self.seqs, score)
            if isinstance(stop, bool):
                stop = torch.full_like(done, stop)
            done = done | torch.as_tensor(stop, device=done.device).bool().reshape(done.shape)
        return done

    def end(self) -> None:
        if self.streamer is not None:
            self.streamer.end()


def eos_blocked(logits: torch.Tensor, eos: torch.Tensor, generated: int, min_new_tokens: int) -> torch.Tensor:
    """logits with every EOS id at -inf while fewer than min_new_tokens tokens were generated."""
    if generated >= min_new_tokens or not eos.numel():
        return logits
    return logits.index_fill(-1, eos.to(logits.device), -math.inf)


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




def run(model, src: RewardSource, input_ids: torch.Tensor, mask: torch.Tensor, spec: DecodeSpec) -> ARGSOutput:
    """Decode `input_ids` [B, T] (left-padding `mask`) with ARGS as `spec` says."""
    from rgk.args import decode
    loop = spec.loop
    if spec.logits_processor is not None and loop not in ("auto", "dynamic"):
        raise ValueError(f"loop: {loop!r} cannot run other logits processors (they read the whole sequence on the "
                         "host each step); use loop='auto' or 'dynamic', or drop logits_processor")
    # the fork pass runs the LM (shared head, or the static loop's LM) and a RewardModel: refuse,
    # before any work, a family whose attention it cannot apply exactly
    # (a text reward on the Python loop runs the LM through HF's own cache: no probe needed)
    static_src = decode.static_capable(src)
    want_static = loop not in ("auto", "dynamic") or (loop == "auto" and static_src
                                                      and spec.logits_processor is None)
    forks_lm = src.uses_lm_hidden or want_static
    lm_problem = decode.family_problem(model) if forks_lm else None
    if lm_problem is not None and (src.uses_lm_hidden or loop not in ("auto", "dynamic")):
        raise ValueError(f"model: {lm_problem}; rgk cannot decode it exactly")
    if isinstance(src, RewardModel):
        decode.check_family(src.model, "reward")
    if loop not in ("auto", "dynamic") and not static_src:
        raise ValueError(f"loop: {loop!r} needs a reward source the static step can run (a RewardHead or a "
                         f"RewardModel); {type(src).__name__} runs on loop='dynamic'")
    hooks = StepHooks(spec, input_ids) if StepHooks.wanted(spec) else None
    try:
        if want_static and lm_problem is None:
            seqs, r, lp, sc = decode.run_static(
                model, src, input_ids, mask, k=spec.k, w=spec.w, temperature=spec.temperature,
                max_new_tokens=spec.max_new_tokens, cap=spec.cap, eos=spec.eos, pad=spec.pad,
                generator=spec.generator, loop=loop, stop_every=spec.stop_every, progress=spec.progress,
                eos_prefix=spec.eos_prefix, min_new_tokens=spec.min_new_tokens, hooks=hooks)
            return ARGSOutput(seqs, r, lp, sc)
        return _python_loop(model, src, input_ids, mask, spec, hooks)
    finally:
        if hooks is not None:
            hooks.end()


def _python_loop(model, src, input_ids, mask, spec: DecodeSpec, hooks: StepHooks | None) -> ARGSOutput:
    B, T = input_ids.shape
    dev = input_ids.device
    rec = _Recorder(input_ids, spec.eos, spec.pad)
    lm = _ForkLM(model, B, spec.cap, spec.k) if src.uses_lm_hidden else _PlainLM(model)
    session = src.open(model, input_ids, mask, capacity=spec.cap, k=spec.k)
    try:
        logits = lm.prefill(input_ids, mask)
        prefix_r = src.reference_rewards(model, input_ids, mask, T).float().to(dev) if spec.eos_prefix else None
        for step in tqdm(range(spec.max_new_tokens), desc="ARGS", disable=not spec.progress, leave=False):
            logits = eos_blocked(logits, spec.eos, step, spec.min_new_tokens)
            if spec.logits_processor is not None:
                logits = spec.logits_processor(torch.cat(rec.seqs, 1), logits).float()
            logp, ids = ops.topk_logprobs(logits, spec.k)
            sc = session.score(ids, lm.fork(ids))
            if spec.eos_prefix:
                sc = eos_prefix_scores(sc, ids, spec.eos, prefix_r)
            u = uniform_draws(B, spec.temperature, spec.generator, dev)
            tok, idx, score, r = select(sc, logp, ids, w=spec.w, temperature=spec.temperature, uniform=u)
            if spec.eos_prefix:
                prefix_r = r.gather(1, idx[:, None])[:, 0]
            tok = rec.add(tok, idx, logp, score, r)
            if hooks is not None:
                rec.done = hooks.after(tok, rec.done, rec.sc[-1])
            if step + 1 == spec.max_new_tokens or bool(rec.done.all()):
                break
            session.commit(idx, tok)
            logits = lm.advance(idx, tok)
    finally:
        session.close()
    return rec.output()
