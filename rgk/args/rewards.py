"""Reward sources for ARGS, fastest first.

- `RewardHead` alone (shared backbone): the head reads the LM's own final hidden state,
  so one k-token forward per step gives both the candidates' rewards and the next logits.
- `RewardModel(model, head)`: a separate causal LM with the same tokenizer/vocabulary;
  ARGS keeps its prefix cache and scores the k candidates with fork attention.
- `TextReward(fn, tokenizer)`: any callable on decoded text (e.g. a different tokenizer or
  a classifier); correct but slow: the texts are re-scored from scratch every step.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from rgk.models import RewardHead, final_hidden


class RewardModel:
    """A causal LM backbone (any HF `*ForCausalLM` or base model) with a scalar `RewardHead`
    read at the last token."""

    def __init__(self, model, head: RewardHead):
        if not isinstance(head, RewardHead):
            raise TypeError(f"head: expected an rgk RewardHead, got {type(head).__name__}")
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if head.config.hidden_size != cfg.hidden_size:
            raise ValueError(f"head: hidden_size {head.config.hidden_size} does not match the reward "
                             f"model's hidden_size {cfg.hidden_size}")
        self.model, self.head = model, head

    @property
    def decoder(self):
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards [N] of full left-padded sequences (no cache: the naive path)."""
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        h = final_hidden(self.model, input_ids, attention_mask, position_ids=pos)
        return self.head(h[:, -1])


class TextReward:
    """Reward from a callable on text: fn(list[str]) -> sequence of floats (one per text).

    include_prompt: score prompt + response (True) or the response alone (False)."""

    def __init__(self, fn: Callable[[list[str]], Sequence[float]], tokenizer, include_prompt: bool = True):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable on a list of strings, got {type(fn).__name__}")
        if tokenizer is None:
            raise ValueError("tokenizer: a TextReward needs the LM's tokenizer to decode candidates")
        self.fn, self.tokenizer, self.include_prompt = fn, tokenizer, include_prompt

    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        texts = []
        for p, r in zip(prompts, responses):
            ids = (p + r) if self.include_prompt else r
            texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        out = self.fn(texts)
        r = torch.as_tensor(out, dtype=torch.float32).flatten()
        if r.numel() != len(texts):
            raise ValueError(f"fn: returned {r.numel()} rewards for {len(texts)} texts")
        return r


    def score_candidates(self, prompts: list[list[int]], generated: list[list[int]],
                         candidates: torch.Tensor) -> torch.Tensor:
        """Rewards [B, k] of every row's prompt + generated tokens + each of its k candidates."""
        B, k = candidates.shape
        cand = candidates.tolist()
        r = self([prompts[b] for b in range(B) for _ in range(k)],
                 [generated[b] + [cand[b][j]] for b in range(B) for j in range(k)])
        return r.view(B, k).to(candidates.device)


def reward_kind(reward) -> str:
    if isinstance(reward, RewardHead):
        return "shared"
    if isinstance(reward, RewardModel):
        return "model"
    if isinstance(reward, TextReward):
        return "text"
    raise TypeError("reward: expected a RewardHead (shared backbone), a RewardModel(model, head) "
                    f"or a TextReward(fn, tokenizer), got {type(reward).__name__}")
