"""Reward sources for ARGS: one small interface, one class per source.

Every source answers the same four questions, so the native loop, the naive reference
and the `LogitsProcessor` are written once against it:

    session = source.open(lm, input_ids, mask, capacity=..., k=...)  # prefill a batch
    scores  = session.score(candidates [B, k], lm_hidden [B, k, d] | None)
    session.commit(index [B], token [B])      # the chosen candidate of every row
    session.append(token [B])                 # a token that was not a candidate (processor)
    session.close()                           # reset: drop the batch state
    source.reference_rewards(lm, seqs, mask, prompt_len) -> r [N]   # naive, full recompute

`score` returns a `Scores`: either the candidates' final hidden states and a linear/MLP
head (the fused `ops.reward_select` computes reward, score and choice in one launch), or
the rewards themselves (`ops.select_from_rewards`).  Sessions hold the per-batch state,
so one source object can serve several loops or processors.

Sources, fastest first:
- `RewardHead` (shared backbone): the head reads the LM's own final hidden state; the
  loop's k-token candidate forward of the LM gives both the rewards and the next logits.
- `RewardModel(model, head=None)`: a separate model with the LM's tokenizer (its
  vocabulary may be a superset, e.g. an added pad token): a causal LM or base model with
  an rgk `RewardHead`, or a Hugging Face `*ForSequenceClassification` (`num_labels=1`)
  with its own `score` head — given as a model or a local folder.  ARGS keeps its prefix
  cache and scores the k candidates with fork attention.
- `TextReward(fn, tokenizer)`: any callable on decoded text, `fn(texts)` or, with
  `pairs=True`, `fn(prompts, responses)`; `TextReward.from_classifier(...)` wraps a
  sequence classifier with another tokenizer.  Correct but slow: texts are re-scored
  from scratch every step.

`load_reward_model(path_or_model, lm_tokenizer)` picks the fork path when the reward
model's tokenizer agrees with the LM's on every LM token, and the text path otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from rgk import hf
from rgk.models import RewardHead


@dataclass
class Scores:
    """What a session's `score` returns: hidden + head params (fused select) or rewards."""
    hidden: torch.Tensor | None = None                 # [B, k, d]
    head: tuple | None = None                          # (w1, b1, w2, b2) fp32 on the device
    rewards: torch.Tensor | None = None                # [B, k] fp32


def eos_prefix_scores(scores: Scores, ids: torch.Tensor, eos: torch.Tensor, prefix_reward: torch.Tensor) -> Scores:
    """`scores` as rewards [B, k] in which every EOS candidate gets its row's prefix reward
    [B] (the `eos_reward="prefix"` option; static shapes, no host sync)."""
    from rgk.models import reward_mlp
    r = scores.rewards.float() if scores.rewards is not None else reward_mlp(scores.hidden, *scores.head).float()
    if eos.numel():
        r = torch.where(torch.isin(ids, eos), prefix_reward.float().to(r.device)[:, None], r)
    return Scores(rewards=r)


class RewardSource:
    """Base class of ARGS reward sources (see the module docstring)."""

    uses_lm_hidden = False      # True: score() needs the LM's candidate hidden states

    def check_lm(self, lm) -> None:
        """Raise ValueError naming `reward` when this source cannot serve `lm`."""

    def open(self, lm, input_ids, mask, *, capacity: int, k: int) -> "Session":
        raise NotImplementedError

    def reference_rewards(self, lm, seqs: torch.Tensor, mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
        raise NotImplementedError


class Session:
    """Per-batch state of a reward source."""

    def score(self, candidates: torch.Tensor, lm_hidden: torch.Tensor | None = None) -> Scores:
        raise NotImplementedError

    def commit(self, index: torch.Tensor, token: torch.Tensor) -> None:
        """Row b chose candidate index[b] (token[b]); rows may be finished (token = pad)."""

    def append(self, token: torch.Tensor) -> None:
        """Append tokens that were not among the last candidates (e.g. forced by another processor)."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop the batch state."""


def head_params(head: RewardHead, device) -> tuple:
    """The head's (w1, b1, w2, b2) as contiguous fp32 on `device`, as `ops.reward_select` takes them."""
    return tuple(None if p is None else p.detach().float().contiguous().to(device) for p in head.params())


def row_lists(input_ids, mask):
    """Each row's real (unpadded) tokens as a list."""
    return [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]


def lm_vocab(model) -> int:
    out = model.get_output_embeddings()
    return out.weight.shape[0] if out is not None else model.get_input_embeddings().num_embeddings


def final_hidden(model, input_ids, attention_mask):
    """Final hidden states (after the last norm) of a causal LM, base model or classifier."""
    dec = decoder_of(model)
    return dec(input_ids=input_ids, attention_mask=attention_mask,
               position_ids=hf.positions(attention_mask)).last_hidden_state


# the base transformer of a causal LM / sequence classifier (or the model itself)
decoder_of = hf.decoder


# ----------------------------------------------------------------------------- shared backbone
class _SharedSession(Session):
    def __init__(self, params):
        self.params = params

    def score(self, candidates, lm_hidden=None):
        if lm_hidden is None:
            raise RuntimeError("a shared-backbone head needs the LM's candidate hidden states")
        return Scores(hidden=lm_hidden, head=self.params)

    def append(self, token):  # the LM's own cache is the loop's business
        pass


class SharedHead(RewardSource):
    """A `RewardHead` on the LM's own final hidden state (what `reward=RewardHead` means)."""

    uses_lm_hidden = True

    def __init__(self, head: RewardHead):
        self.head = head

    def check_lm(self, lm) -> None:
        d = hf.text_config(lm).hidden_size
        if self.head.config.hidden_size != d:
            raise ValueError(f"reward: head hidden_size {self.head.config.hidden_size} does not match the LM's "
                             f"hidden_size {d}")

    def open(self, lm, input_ids, mask, *, capacity, k):
        return _SharedSession(head_params(self.head, input_ids.device))

    @torch.no_grad()
    def reference_rewards(self, lm, seqs, mask, prompt_len):
        return self.head(final_hidden(lm, seqs, mask)[:, -1])


# ----------------------------------------------------------------------------- separate reward model
def _classifier_head(model) -> RewardHead:
    """An rgk linear RewardHead equal to a sequence classifier's own `score` layer."""
    score = getattr(model, "score", None)
    if not isinstance(score, nn.Linear):
        raise TypeError(f"reward: {type(model).__name__} has no `score` linear head; pass an rgk "
                        "RewardHead as head=, or use TextReward for other reward models")
    if score.out_features != 1:
        raise ValueError(f"reward: the classifier's score head has {score.out_features} outputs; a reward model "
                         "has num_labels=1")
    from rgk.models import RewardHeadConfig
    head = RewardHead(RewardHeadConfig(score.in_features, "linear", base_model=type(model).__name__,
                                       notes="the sequence classifier's own score head"))
    with torch.no_grad():
        head.fc1.weight.copy_(score.weight.detach().float())
        head.fc1.bias.copy_(score.bias.detach().float() if score.bias is not None else torch.zeros(1))
    return head.to(score.weight.device).eval()


def _check_folder(path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"reward_model: {p} is not a local folder (no model hub is reachable)")
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"reward_model: {p} holds no config.json, so no Hugging Face model")
    return p


def _load_model_folder(path, *, classifier: bool, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    p = _check_folder(path)
    cls = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    return cls.from_pretrained(p, dtype=dtype).eval()


def is_sequence_classifier(model) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


class _ModelSession(Session):
    def __init__(self, src: "RewardModel", input_ids, mask, capacity, k):
        from rgk.args.cache import ForkCache
        self.src = src
        self.cache = ForkCache.for_model(src.model, input_ids.shape[0], capacity, k)
        self.cache.extend(src.decoder, input_ids, mask)
        self.params = head_params(src.head, input_ids.device)
        self.last = None

    def score(self, candidates, lm_hidden=None):
        self.last = candidates
        return Scores(hidden=self.cache.fork(self.src.decoder, candidates), head=self.params)

    def commit(self, index, token):
        self.cache.commit(index)

    def append(self, token):
        self.cache.extend(self.src.decoder, token[:, None])

    def close(self):
        self.cache = None


class RewardModel(RewardSource):
    """A separate reward model with the LM's tokenizer, scored through its own prefix cache.

    model: a HF causal LM or base model (then `head` is an rgk `RewardHead` read at the
        last token), a `*ForSequenceClassification` with num_labels=1 (head=None: its own
        `score` head, read at the last token — the form of the ARGS paper's and most public
        reward models), or a local folder holding either.
    Its vocabulary must contain the LM's (equal, or larger by added tokens such as a pad
    token): the candidates' ids are fed to it unchanged.  For another tokenizer use
    `TextReward.from_classifier` or `load_reward_model`.
    """

    def __init__(self, model, head: RewardHead | None = None, *, dtype=torch.float32):
        if isinstance(model, (str, os.PathLike)):
            model = _load_model_folder(model, classifier=head is None, dtype=dtype)
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"model: expected a Hugging Face model or a local folder, got {type(model).__name__}")
        if head is None:
            head = _classifier_head(model)
        if not isinstance(head, RewardHead):
            raise TypeError(f"head: expected an rgk RewardHead or None (a sequence classifier's own head), "
                            f"got {type(head).__name__}")
        d = hf.text_config(model).hidden_size
        if head.config.hidden_size != d:
            raise ValueError(f"head: hidden_size {head.config.hidden_size} does not match the reward "
                             f"model's hidden_size {d}")
        self.model, self.head = model, head
        self.decoder = decoder_of(model)

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def check_vocab(self, lm_vocab_size: int) -> None:
        if self.vocab_size < lm_vocab_size:
            raise ValueError(f"reward: the reward model's vocabulary ({self.vocab_size} tokens) is smaller than "
                             f"the LM's ({lm_vocab_size}); the cached path needs the LM's tokenizer (or a superset "
                             "of it) — wrap a reward model with another tokenizer in "
                             "TextReward.from_classifier(model, tokenizer, lm_tokenizer) instead")

    def check_lm(self, lm) -> None:
        self.check_vocab(lm_vocab(lm))

    def open(self, lm, input_ids, mask, *, capacity, k):
        return _ModelSession(self, input_ids, mask, capacity, k)

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards [N] of full left-padded sequences (no cache: the naive path)."""
        return self.head(final_hidden(self.model, input_ids, attention_mask)[:, -1])

    def reference_rewards(self, lm, seqs, mask, prompt_len):
        return self.score(seqs, mask)


# ----------------------------------------------------------------------------- text
class _TextSession(Session):
    def __init__(self, src: "TextReward", input_ids, mask):
        self.src = src
        self.prompts = row_lists(input_ids, mask)
        self.gen = [[] for _ in range(input_ids.shape[0])]

    def score(self, candidates, lm_hidden=None):
        return Scores(rewards=self.src.score_candidates(self.prompts, self.gen, candidates))

    def commit(self, index, token):
        self.append(token)

    def append(self, token):
        for b, t in enumerate(token.tolist()):
            self.gen[b].append(t)


class TextReward(RewardSource):
    """Reward from a callable on decoded text.

    fn: `fn(texts: list[str]) -> floats` (one per text), or with `pairs=True`
        `fn(prompts: list[str], responses: list[str]) -> floats` — the form of (question,
        answer) reward models, which must see the two fields apart.
    tokenizer: the LM's tokenizer (decodes prompt and response ids).
    include_prompt (texts mode): score prompt + response (True) or the response alone.
    """

    def __init__(self, fn: Callable, tokenizer, include_prompt: bool = True, *, pairs: bool = False):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable on text, got {type(fn).__name__}")
        if tokenizer is None or not hasattr(tokenizer, "decode"):
            raise ValueError("tokenizer: a TextReward needs the LM's tokenizer to decode candidates")
        self.fn, self.tokenizer = fn, tokenizer
        self.include_prompt, self.pairs = bool(include_prompt), bool(pairs)

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        """Rewards [N] (fp32) of N (prompt ids, response ids) pairs."""
        if self.pairs:
            out = self.fn([self._decode(p) for p in prompts], [self._decode(r) for r in responses])
        else:
            out = self.fn([self._decode((p + r) if self.include_prompt else r) for p, r in zip(prompts, responses)])
        if isinstance(out, torch.Tensor):
            out = out.detach().float().cpu()
        r = torch.as_tensor(out, dtype=torch.float32).flatten()
        if r.numel() != len(prompts):
            raise ValueError(f"fn: returned {r.numel()} rewards for {len(prompts)} texts")
        return r

    def score_candidates(self, prompts, generated, candidates: torch.Tensor) -> torch.Tensor:
        """Rewards [B, k] of every row's prompt + generated tokens + each of its k candidates."""
        B, k = candidates.shape
        cand = candidates.tolist()
        r = self([prompts[b] for b in range(B) for _ in range(k)],
                 [generated[b] + [cand[b][j]] for b in range(B) for j in range(k)])
        return r.view(B, k).to(candidates.device)

    def open(self, lm, input_ids, mask, *, capacity, k):
        return _TextSession(self, input_ids, mask)

    def reference_rewards(self, lm, seqs, mask, prompt_len):
        prompts = row_lists(seqs[:, :prompt_len], mask[:, :prompt_len])
        return self(prompts, [row.tolist() for row in seqs[:, prompt_len:]])

    @classmethod
    def from_classifier(cls, model, tokenizer, lm_tokenizer, *, max_length: int = 1024, batch_size: int = 64,
                        chat_template: bool | None = None) -> "TextReward":
        """A (prompt, response) reward from a sequence classifier with its own tokenizer.

        model: a `*ForSequenceClassification` (num_labels=1) or a local folder; tokenizer:
        its tokenizer (None: loaded from the folder); lm_tokenizer: the LM's, to decode.
        Each pair is rendered with the reward model's chat template when it has one
        (chat_template=None: auto), else encoded as a text pair (`tokenizer(prompt,
        response)`, the form of encoder reward models); the reward is logits[:, 0].
        """
        if isinstance(model, (str, os.PathLike)):
            if tokenizer is None:
                from transformers import AutoTokenizer
                tokenizer = AutoTokenizer.from_pretrained(model)
            model = _load_model_folder(model, classifier=True)
        if tokenizer is None:
            raise ValueError("tokenizer: the reward model's own tokenizer is required")
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"model: a reward model has num_labels=1, got {model.config.num_labels}")
        use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        dev = next(model.parameters()).device

        @torch.no_grad()
        def fn(prompts, responses):
            out = []
            for i in range(0, len(prompts), batch_size):
                ps, rs = prompts[i:i + batch_size], responses[i:i + batch_size]
                if use_chat:
                    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p},
                                                            {"role": "assistant", "content": r}], tokenize=False)
                             for p, r in zip(ps, rs)]
                    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                    max_length=max_length, add_special_tokens=False)
                else:
                    enc = tokenizer(ps, rs, return_tensors="pt", padding=True, truncation=True,
                                    max_length=max_length)
                enc = {k: v.to(dev) for k, v in enc.items()}
                out.append(model(**enc).logits[:, 0].float().cpu())
            return torch.cat(out) if out else torch.zeros(0)

        return cls(fn, lm_tokenizer, pairs=True)


# ----------------------------------------------------------------------------- choosing a path
def tokenizers_agree(rm_tokenizer, lm_tokenizer) -> bool:
    """True when every token of the LM's vocabulary has the same id in the reward model's
    (the reward model may add tokens after them, e.g. a pad token)."""
    a, b = lm_tokenizer.get_vocab(), rm_tokenizer.get_vocab()
    return all(b.get(t) == i for t, i in a.items())


def folder_is_classifier(path) -> bool:
    """Whether a local model folder's config.json names a *ForSequenceClassification."""
    import json
    cfg = json.loads((Path(path) / "config.json").read_text())
    return any(str(a).endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


def load_reward_model(model, lm_tokenizer, *, tokenizer=None, head: RewardHead | None = None) -> RewardSource:
    """A reward source for a reward model given as a model or a local folder.

    A sequence classifier (num_labels=1) uses its own `score` head: the fork path
    (`RewardModel`) when its tokenizer agrees with the LM's on every LM token (a superset
    is fine), else `TextReward.from_classifier` on (prompt, response) pairs.  A causal LM
    needs an rgk `head` and the LM's tokenizer."""
    if isinstance(model, (str, os.PathLike)):
        p = _check_folder(model)
        if tokenizer is None:
            from transformers import AutoTokenizer
            try:
                tokenizer = AutoTokenizer.from_pretrained(p)
            except (OSError, ValueError, TypeError) as e:
                raise FileNotFoundError(f"reward_model: {p} holds no loadable tokenizer ({e})") from None
        classifier = folder_is_classifier(p)
        if classifier and head is not None:
            raise ValueError(f"head: {p} is a sequence classifier with its own score head; give no head")
        if not classifier and head is None:
            raise ValueError(f"reward_model: {p} is not a sequence classifier (no *ForSequenceClassification in its "
                             "config's architectures); give an rgk reward head for it")
        model = _load_model_folder(p, classifier=classifier)
    if tokenizer is None:
        raise ValueError("tokenizer: the reward model's tokenizer is required to choose the fork or the text path")
    if tokenizers_agree(tokenizer, lm_tokenizer):
        return RewardModel(model, head)
    if head is not None:
        raise ValueError("head: an rgk head needs the LM's tokenizer; this reward model's tokenizer differs")
    return TextReward.from_classifier(model, tokenizer, lm_tokenizer)


def as_source(reward) -> RewardSource:
    """The RewardSource for what users pass as `reward=`."""
    if isinstance(reward, RewardSource):
        return reward
    if isinstance(reward, RewardHead):
        return SharedHead(reward)
    raise TypeError("reward: expected a RewardHead (shared backbone), a RewardModel(model, head=None), "
                    f"a TextReward(fn, tokenizer) or another rgk RewardSource, got {type(reward).__name__}")


__all__ = ["Scores", "RewardSource", "Session", "SharedHead", "RewardModel", "TextReward", "load_reward_model", "folder_is_classifier",
           "tokenizers_agree", "as_source", "head_params", "row_lists", "final_hidden", "decoder_of"]

