"""`ARGSLogitsProcessor`: ARGS as a drop-in for `model.generate(logits_processor=[...])`.

At every call it takes the top-k of the logits `generate` hands over (so masks set by
earlier processors are honoured), scores each candidate with log p + w · r, and returns
scores that are -inf everywhere except the k candidates, which carry score / temperature.
Greedy search then picks the ARGS argmax; sampling (do_sample=True, temperature=1 in
`generate`) draws from softmax(score / temperature) over the k candidates — ARGS's
stochastic mode.

A `RewardModel` keeps a prefix `ForkCache` between calls.  Its state is keyed on the
prefix it has seen: when the new `input_ids` extend it by one token, the processor
commits that token — the candidate slot it came from, or, if another processor or
`generate` (pad after EOS) changed it, a one-token forward of what was actually appended.
When `input_ids` do not extend the seen prefix (a new `generate` call, assisted decoding
rolling back), it rebuilds the cache.  Beam search is refused (rows are permuted between
calls and scores are cumulative log-probs, which ARGS's score is not defined on).

Padding: `generate` does not hand processors the attention mask.  Pass the prompt's
`attention_mask` to the constructor (or call `set_prompt_mask`); without it, a row's
leading run of `pad_token_id` is taken as left padding.
"""
from __future__ import annotations

import inspect
import math

import torch
from transformers import LogitsProcessor

from rgk import ops
from rgk.ops import reference
from rgk.args.cache import ForkCache
from rgk.args.rewards import reward_kind
from rgk.args.search import check_args_params, head_params, row_lists


class ARGSLogitsProcessor(LogitsProcessor):
    """ARGS inside `generate`.

    reward: RewardModel(model, head) (cached, fork attention) or TextReward(fn, tokenizer).
        For a shared-backbone head, pass RewardModel(lm, head): inside `generate` the
        candidates' hidden states need their own forward anyway.
    k, w, temperature: ARGS parameters (temperature 0 = greedy scores, use with greedy search).
    batch_size: expected number of rows (checked every call); None: taken from the first call.
    attention_mask: the prompt's mask [B, T] (recommended with left padding).
    pad_token_id: used to infer left padding when no mask is given, and as the token
        `generate` appends to finished rows.
    max_cache_len: capacity of the reward model's prefix cache (prompt + new tokens).
    """

    def __init__(self, reward, *, k: int = 10, w: float = 1.5, temperature: float = 0.0,
                 batch_size: int | None = None, attention_mask: torch.Tensor | None = None,
                 pad_token_id: int | None = None, max_cache_len: int = 2048):
        kind = reward_kind(reward)
        if kind == "shared":
            raise TypeError("reward: inside generate a bare RewardHead needs its backbone; "
                            "pass RewardModel(model, head) with the LM itself as the model")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        check_args_params(k=k, w=w, temperature=temperature, vocab_size=max(k, 1))
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        if not isinstance(max_cache_len, int) or max_cache_len < 2:
            raise ValueError(f"max_cache_len: expected an int >= 2, got {max_cache_len!r}")
        self.reward, self.kind = reward, kind
        self.k, self.w, self.temperature = k, float(w), float(temperature)
        self.batch_size, self.pad_token_id, self.max_cache_len = batch_size, pad_token_id, max_cache_len
        self.prompt_mask = attention_mask
        self.generator: torch.Generator | None = None
        self._seen: torch.Tensor | None = None
        self._checked_caller = False
        self.rebuilds = 0        # how often the cache was rebuilt (a new prompt or a rollback)
        self.extra_forwards = 0  # one-token forwards for appended tokens that were not candidates

    def set_prompt_mask(self, attention_mask: torch.Tensor | None) -> None:
        self.prompt_mask = attention_mask
        self._seen = None

    # ------------------------------------------------------------------ state
    def _refuse_beam_search(self) -> None:
        frame = inspect.currentframe()
        for _ in range(8):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            if "beam" in frame.f_code.co_name:
                raise ValueError("ARGSLogitsProcessor does not support beam search (num_beams > 1): "
                                 "use greedy search or sampling")

    def _mask_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        m = self.prompt_mask
        if m is not None:
            if m.shape[0] != B or m.shape[1] > T:
                raise ValueError(f"attention_mask: the prompt mask has shape {tuple(m.shape)} but generate "
                                 f"gave input_ids of shape {tuple(input_ids.shape)}")
            m = m.to(input_ids.device).long()
            return torch.cat([m, torch.ones(B, T - m.shape[1], dtype=torch.long, device=input_ids.device)], 1)
        if self.pad_token_id is None:
            return torch.ones_like(input_ids)
        is_pad = (input_ids == self.pad_token_id).long()
        lead = is_pad.cumprod(-1)
        return 1 - lead

    def _rebuild(self, input_ids: torch.Tensor) -> None:
        B, T = input_ids.shape
        if T >= self.max_cache_len:
            raise ValueError(f"input_ids: the prompt ({T} tokens) does not fit max_cache_len={self.max_cache_len}")
        mask = self._mask_for(input_ids)
        if self.kind == "model":
            self.cache = ForkCache.for_model(self.reward.model, B, self.max_cache_len, self.k)
            self.cache.extend(self.reward.decoder, input_ids, mask)
            self._params = head_params(self.reward.head, input_ids.device)
        else:
            self._prompts = row_lists(input_ids, mask)
            self._gen = [[] for _ in range(B)]
        self._cand = None
        self.rebuilds += 1

    def _append(self, token: torch.Tensor) -> None:
        if self.kind == "text":
            for b, t in enumerate(token.tolist()):
                self._gen[b].append(t)
            return
        if self.cache.length + 1 > self.max_cache_len:
            raise ValueError(f"max_cache_len: {self.max_cache_len} tokens are not enough for this generation")
        hit = self._cand == token[:, None]
        found = hit.any(-1)
        if bool(found.all()):
            self.cache.commit(hit.long().argmax(-1))
        else:
            self.cache.extend(self.reward.decoder, token[:, None])
            self.extra_forwards += 1

    # ------------------------------------------------------------------ call
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self._checked_caller:
            self._refuse_beam_search()
            self._checked_caller = True
        B, V = scores.shape
        if self.batch_size is not None and B != self.batch_size:
            raise ValueError(f"batch size mismatch: generate passed {B} rows, the processor was built for "
                             f"batch_size={self.batch_size} (num_return_sequences > 1 and beam search are "
                             "not supported)")
        if self.k > V:
            raise ValueError(f"k: expected at most the vocabulary size {V}, got {self.k}")
        if self.kind == "model" and self.reward.vocab_size != V:
            raise ValueError(f"reward: the reward model's vocabulary ({self.reward.vocab_size} tokens) differs "
                             f"from the LM's ({V}); use TextReward for a different tokenizer")
        seen = self._seen
        if seen is not None and seen.shape[0] == B and input_ids.shape[1] == seen.shape[1] + 1 \
                and self._cand is not None and torch.equal(input_ids[:, :-1], seen):
            self._append(input_ids[:, -1])
        elif not (seen is not None and torch.equal(input_ids, seen)):
            self._rebuild(input_ids)
        self._seen = input_ids.clone()

        logp, ids = ops.topk_logprobs(scores, self.k)
        if self.kind == "model":
            hc = self.cache.fork(self.reward.decoder, ids)
            _, _, score, _ = ops.reward_select(hc, logp, ids, *self._params, reward_weight=self.w)
        else:
            r = self.reward.score_candidates(self._prompts, self._gen, ids)
            _, _, score = reference.select_from_rewards(logp, ids, r, reward_weight=self.w)
        self._cand = ids
        if self.temperature > 0:
            score = score / self.temperature
        out = torch.full_like(scores, -math.inf)
        return out.scatter(1, ids, score.to(out.dtype))
