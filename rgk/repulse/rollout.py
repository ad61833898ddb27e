"""Sampling, log-probabilities, rewards and tail metrics shared by the RePULSe trainer and `evaluate`.

Layout of a batch of B = N·K samples (prompt-major: prompt n's K samples are rows
n·K .. n·K + K − 1):

- prompt_ids / prompt_mask [B, T]: the prompt, left-padded (mask 0 on the padding).
- resp [B, n]: the sampled new tokens, right-padded with the pad id after EOS, always
  padded to n = max_new_tokens so that p- and q-samples stack.
- resp_mask [B, n]: 1 up to and including the first EOS, 0 after.

Sampling runs rgk's static decode loop (`rgk.args.decode.vanilla_generate`, temperature 1:
exact draws from the model by CDF inversion of U[0,1) numbers from a seeded generator).
"""
from __future__ import annotations

import functools
import inspect
import math

import torch

from rgk import hf
from rgk.hf import left_pad  # noqa: F401  (part of this module's API)

__all__ = ["encode_prompts", "left_pad", "sample", "response_mask", "token_logprobs", "rewards", "bad_fraction",
           "tail_mean", "check_policy_model"]


def check_policy_model(model, name: str = "model") -> None:
    """ValueError naming `name` unless `model` is a causal LM the static sampling loop supports."""
    from rgk.args.decode import family_problem
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"{name}: expected a Hugging Face causal LM, got {type(model).__name__}")
    if model.get_output_embeddings() is None:
        raise TypeError(f"{name}: {type(model).__name__} has no LM head; RePULSe trains a causal LM "
                        "(AutoModelForCausalLM)")
    why = family_problem(model)
    if why is not None:
        raise ValueError(f"{name}: {why}; rgk's static sampling loop cannot run it exactly")


def encode_prompts(prompts, tokenizer, max_prompt_tokens: int, *, chat_template: bool = False) -> list[list[int]]:
    """Token ids of each prompt (strings through `tokenizer`, id lists as given), keeping the
    last `max_prompt_tokens` tokens."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts: expected a non-empty list of strings or of token-id lists")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("tokenizer: text prompts need the LM's tokenizer")
            if not p.strip():
                raise ValueError(f"prompts: prompt {i} is empty")
            if chat_template:
                if not getattr(tokenizer, "chat_template", None):
                    raise ValueError("chat_template: the tokenizer has no chat template")
                text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                     add_generation_prompt=True)
                ids = tokenizer(text, add_special_tokens=False).input_ids
            else:
                ids = tokenizer(p, add_special_tokens=False).input_ids
        elif isinstance(p, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            ids = list(p)
        else:
            raise TypeError(f"prompts: prompt {i} is a {type(p).__name__}; expected a string or a list of token ids")
        if not ids:
            raise ValueError(f"prompts: prompt {i} encodes to no tokens")
        out.append(ids[-max_prompt_tokens:])
    return out


def response_mask(resp: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """[B, n] int64: 1 up to and including each row's first EOS, 0 after (all 1 without EOS ids)."""
    if eos.numel() == 0:
        return torch.ones_like(resp)
    hit = torch.isin(resp, eos.to(resp.device)).long()
    before = hit.cumsum(-1) - hit            # EOS tokens strictly before t
    return (before == 0).long()


@torch.no_grad()
def sample(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int, pad_id: int,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(resp [B, n], resp_mask [B, n]): one sample from `model` (temperature 1) per row,
    padded to n = max_new_tokens."""
    from rgk.args.decode import vanilla_generate
    from rgk.args.search import eos_pad
    seqs = vanilla_generate(model, prompt_ids, prompt_mask, temperature=1.0, max_new_tokens=max_new_tokens,
                            pad_token_id=pad_id, generator=generator)
    resp = seqs[:, prompt_ids.shape[1]:]
    if resp.shape[1] < max_new_tokens:
        fill = torch.full((resp.shape[0], max_new_tokens - resp.shape[1]), int(pad_id), dtype=resp.dtype,
                          device=resp.device)
        resp = torch.cat([resp, fill], 1)
    eos, _ = eos_pad(model, None, pad_id, resp.device)
    rmask = response_mask(resp, eos)
    return torch.where(rmask.bool(), resp, torch.full_like(resp, int(pad_id))), rmask


@functools.lru_cache(maxsize=64)
def _takes_logits_to_keep(cls) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def token_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, resp: torch.Tensor,
                   resp_mask: torch.Tensor, *, base_model=None) -> torch.Tensor:
    """log model(resp_t | prompt, resp_<t) [B, n] (float32, float64 for a float64 model), 0 where
    resp_mask is 0.

    One teacher-forced forward of [prompt | resp]; differentiable when grad is enabled.
    `base_model`: the unwrapped module when `model` is a DDP wrapper (read for its forward's
    signature)."""
    ids = torch.cat([prompt_ids, resp], 1)
    mask = torch.cat([prompt_mask, resp_mask.to(prompt_mask.dtype)], 1)
    n = resp.shape[1]
    kw = {"logits_to_keep": n + 1} if _takes_logits_to_keep(type(base_model or model)) else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=hf.positions(mask), use_cache=False, **kw)
    logits = out.logits[:, -(n + 1):-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    lp = torch.log_softmax(logits, -1).gather(-1, resp[..., None]).squeeze(-1)
    return lp * resp_mask.to(lp.dtype)


@torch.no_grad()
def rewards(source, lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, resp: torch.Tensor,
            resp_mask: torch.Tensor) -> torch.Tensor:
    """Rewards [B] (float32) of every (prompt, response), through `source.reference_rewards`.

    Rows are grouped by response length L so that each call sees what every rgk reward
    source expects: [left-padded prompt (T) | L real tokens], no right padding, prompt_len
    = T.  `lm` is what a shared-backbone head reads (the trainer passes its frozen
    reference model, so the reward stays fixed while the policy trains)."""
    lengths = resp_mask.sum(-1)
    out = torch.empty(resp.shape[0], dtype=torch.float32, device=resp.device)
    T = prompt_ids.shape[1]
    for L in torch.unique(lengths).tolist():
        rows = (lengths == L).nonzero().flatten()
        seqs = torch.cat([prompt_ids[rows], resp[rows, :L]], 1)
        mask = torch.cat([prompt_mask[rows], torch.ones(len(rows), L, dtype=prompt_mask.dtype,
                                                         device=prompt_mask.device)], 1)
        r = source.reference_rewards(lm, seqs, mask, T)
        r = torch.as_tensor(r).detach().float().flatten().to(resp.device)
        if r.numel() != len(rows):
            raise ValueError(f"reward: the reward source returned {r.numel()} rewards for {len(rows)} sequences")
        out[rows] = r
    if torch.isnan(out).any():
        raise ValueError("reward: the reward source returned NaN")
    return out


def bad_fraction(r: torch.Tensor, threshold: float) -> float:
    """P(r < η) estimated on the samples `r`."""
    return float((r < threshold).double().mean())


def tail_mean(r: torch.Tensor, fraction: float) -> tuple[float, int]:
    """(mean of the worst ⌈fraction · n⌉ rewards (at least 1), how many that is)."""
    k = max(1, math.ceil(fraction * r.numel() - 1e-9))
    return float(torch.sort(r.double().flatten()).values[:k].mean()), k
