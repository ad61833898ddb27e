"""ARGS as transformers' own decoding method: `model.generate(**enc, custom_generate=custom_generate,
reward=head, k=10, w=1.5)`.

`generate` prepares everything (the GenerationConfig merged from the model's and the call's
arguments, special tokens, the left-padded mask, `num_return_sequences` copies, the logits
processors and stopping criteria it builds from the config) and then hands control to
`custom_generate`, which translates that into a `DecodeSpec` and runs rgk's one decoding
entry (`rgk.args.engine.run`): the static loop (CUDA-graph replay on CUDA) wherever
`args_generate` would use it, so the tokens are `args_generate`'s.

What is honoured, and how:

- `max_new_tokens` / `max_length`, `min_new_tokens` / `min_length` (EOS is not a candidate
  before that many new tokens), `eos_token_id` (an int or a list), `pad_token_id`;
- `do_sample=False`: greedy ARGS; `do_sample=True`: ARGS's stochastic mode at
  `temperature` (softmax(score / temperature) over the k candidates; `generator=` for a
  seeded draw, else torch's global RNG);
- `streamer` (transformers puts the prompt, rgk each step's tokens), `stopping_criteria` and
  `stop_strings` / `max_time` (checked on the host after each step; a stopped row is finished
  like one that emitted EOS); `return_dict_in_generate=True` gives an `ARGSGenerateOutput`
  (sequences and, per step, the chosen candidates' ARGS scores, rewards and log-probs);
  `num_return_sequences` (with sampling);
- other logits processors (given, or built from the config: repetition penalty, bad words,
  ...) transform the LM's logits before the top-k, so they change both the candidates and
  their log-probs; they read the whole sequence on the host, so they run on the Python loop.
  The sampling warpers (temperature, top-k, top-p, min-p, typical, epsilon, eta) are not
  applied to the LM: ARGS's candidates are the LM's top-k and its temperature acts on the
  ARGS scores; non-neutral top-p / min-p / typical / epsilon / eta values get a warning.

Refused with a clear error: beam search (`num_beams > 1`), assisted decoding
(`assistant_model`, `prompt_lookup_num_tokens`), contrastive search (`penalty_alpha`), DoLa,
a non-empty `past_key_values`, model inputs other than token ids and their mask, and an
`ARGSLogitsProcessor` in the same call.  rgk's own options come as extra keyword arguments
of `generate`: `reward` (required), `k`, `w`, `generator`, `loop`, `stop_every`,
`eos_reward`, `max_cache_len`, `progress`.

transformers passes a callable `custom_generate` neither the `streamer` nor the
`assistant_model` of the call (only its own decoding methods get them); rgk reads both from
the calling `generate` frame.  No `custom_generate/generate.py` folder is shipped: it would
only re-enter `generate` with this callable (the reward is a Python object either way), and
it would ask users for `trust_remote_code=True`.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from rgk.args.engine import DecodeSpec, run
from rgk.args.inputs import (as_int, check_args_params, check_capacity, check_eos_reward, check_loop, check_mask,
                             check_source)
from rgk.args.rewards import lm_vocab


@dataclass
class ARGSGenerateOutput(ModelOutput):
    """`generate(..., custom_generate=custom_generate, return_dict_in_generate=True)`:
    sequences [B, T + n] (pad after EOS, as transformers pads), and per step [B, n] of the
    chosen candidate: its ARGS score (log p + w · r), reward and LM log-prob (0 after a row
    finished)."""
    sequences: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    rewards: torch.FloatTensor | None = None
    logprobs: torch.FloatTensor | None = None


#: model kwargs `generate` adds itself, which the ARGS loop recomputes or does not need
_OWN_KWARGS = {"attention_mask", "position_ids", "use_cache", "logits_to_keep", "cache", "past_key_values",
               "cache_position"}


def _generate_locals() -> dict:
    """The locals of the transformers `generate` frame that called us ({} when called directly)."""
    f = sys._getframe(2)
    for _ in range(4):
        if f is None:
            break
        if f.f_code.co_name == "generate" and f.f_code.co_filename.replace("\\", "/").endswith("generation/utils.py"):
            return f.f_locals
        f = f.f_back
    return {}


def _split_processors(procs):
    """(other processors or None, warnings) from generate's prepared list."""
    from transformers.generation import logits_process as lp
    from rgk.args.processor import ARGSLogitsProcessor
    own = tuple(getattr(lp, n) for n in ("MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
                                          "LogitNormalization") if hasattr(lp, n))
    warper_names = ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
                    "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper", "TopHLogitsWarper")
    warpers = tuple(getattr(lp, n) for n in warper_names if hasattr(lp, n))
    keep, dropped = [], []
    for p in procs or ():
        if isinstance(p, ARGSLogitsProcessor):
            raise ValueError("logits_processor: an ARGSLogitsProcessor and custom_generate=rgk's ARGS in one call "
                             "would run ARGS twice; use one of them")
        if isinstance(p, own):
            continue
        if isinstance(p, warpers):
            if type(p).__name__ not in ("TemperatureLogitsWarper", "TopKLogitsWarper"):
                dropped.append(type(p).__name__)
            continue
        keep.append(p)
    if not keep:
        return None, dropped
    from transformers import LogitsProcessorList
    return LogitsProcessorList(keep), dropped


def _split_criteria(crit):
    from transformers.generation import stopping_criteria as sc
    own = tuple(getattr(sc, n) for n in ("MaxLengthCriteria", "EosTokenCriteria") if hasattr(sc, n))
    keep = [c for c in (crit or ()) if not isinstance(c, own)]
    if not keep:
        return None
    from transformers import StoppingCriteriaList
    return StoppingCriteriaList(keep)


@torch.no_grad()
def custom_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                    synced_gpus: bool = False, streamer=None, *, reward=None, k: int = 10, w: float = 1.5,
                    generator: torch.Generator | None = None, loop: str = "auto", stop_every: int = 8,
                    eos_reward: str = "candidate", max_cache_len: int | None = None, progress: bool = False,
                    **model_kwargs):
    """ARGS decoding as `model.generate(..., custom_generate=custom_generate, reward=..., k=..., w=...)`;
    see the module docstring for what is honoured and what is refused."""
    from transformers.generation.configuration_utils import GenerationMode
    gc = generation_config
    if gc is None or not hasattr(gc, "get_generation_mode"):
        raise TypeError("custom_generate: call it through model.generate(..., custom_generate=custom_generate, "
                        "reward=...); for a direct call use rgk.args.args_generate")
    frame = _generate_locals()
    streamer = streamer if streamer is not None else frame.get("streamer")
    assistant = frame.get("assistant_model")
    mode = gc.get_generation_mode(assistant)
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        why = {GenerationMode.BEAM_SEARCH: "beam search (num_beams > 1)",
               GenerationMode.BEAM_SAMPLE: "beam search (num_beams > 1)",
               GenerationMode.GROUP_BEAM_SEARCH: "beam search (num_beams > 1)",
               GenerationMode.CONSTRAINED_BEAM_SEARCH: "constrained beam search",
               GenerationMode.ASSISTED_GENERATION: "assisted decoding (assistant_model / prompt_lookup_num_tokens)",
               GenerationMode.CONTRASTIVE_SEARCH: "contrastive search (penalty_alpha)",
               GenerationMode.DOLA_GENERATION: "DoLa decoding (dola_layers)"}.get(mode, str(mode))
        raise ValueError(f"generation_config: ARGS decodes greedily or by sampling its k candidates; {why} "
                         "cannot be combined with it (drop those settings or the custom_generate)")
    if reward is None:
        raise TypeError("reward: custom_generate needs reward=... (a RewardHead, RewardModel or TextReward) "
                        "as a keyword argument of generate")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("model: ARGS here decodes causal LMs; this model is an encoder-decoder")
    extra = sorted(n for n, v in model_kwargs.items() if n not in _OWN_KWARGS and v is not None)
    if extra:
        raise ValueError(f"{extra[0]}: rgk's ARGS loop takes token ids and their attention mask only; "
                         f"model inputs {', '.join(extra)} are not supported")
    for name in ("past_key_values", "cache"):
        c = model_kwargs.get(name)
        if c is not None and hasattr(c, "get_seq_length") and int(c.get_seq_length()) > 0:
            raise ValueError(f"{name}: ARGS starts from the prompt (it builds its own fork cache); "
                             "pass the full sequence instead of a filled cache")
    # generate accepts CPU inputs for a model on an accelerator (its forward moves them): so do we
    from rgk import hf
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    dev = hf.execution_device(emb if emb is not None else model, fallback=input_ids.device)
    if input_ids.device != dev:
        input_ids = input_ids.to(dev)
    B, T = input_ids.shape
    max_new = int(gc.max_length) - T if gc.max_length is not None else 0
    if max_new < 1:
        raise ValueError(f"max_length: {gc.max_length} leaves no room for a new token after the {T}-token "
                         "input; pass max_new_tokens")
    min_new = max(0, int(gc.min_length or 0) - T)
    temperature = 0.0
    if gc.do_sample:
        temperature = 1.0 if gc.temperature is None else gc.temperature
    k, w, temperature = check_args_params(k=k, w=w, temperature=temperature, vocab_size=lm_vocab(model))
    if gc.do_sample and temperature == 0:
        raise ValueError("temperature: do_sample=True needs a temperature > 0 (ARGS samples from "
                         "softmax(score / temperature)); use do_sample=False for greedy ARGS")
    src = check_source(reward, model)
    mask = model_kwargs.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else check_mask(mask.to(input_ids.device))
    eos_t = getattr(gc, "_eos_token_tensor", None)
    if eos_t is None and gc.eos_token_id is not None:
        eos_t = torch.as_tensor(gc.eos_token_id)
    eos = (torch.empty(0, dtype=torch.long) if eos_t is None else eos_t.flatten().long()).to(input_ids.device)
    pad_t = getattr(gc, "_pad_token_tensor", None)
    pad = int(pad_t) if pad_t is not None else (gc.pad_token_id if gc.pad_token_id is not None else
                                                 (int(eos[0]) if eos.numel() else 0))
    procs, dropped = _split_processors(logits_processor)
    if dropped:
        warnings.warn(f"custom_generate: the sampling warpers {', '.join(dropped)} from the generation config are "
                      "not applied: ARGS's candidates are the LM's top-k and its temperature acts on the ARGS "
                      "scores", stacklevel=3)
    cap = check_capacity(max_cache_len, T, max_new)
    spec = DecodeSpec(k=k, w=w, temperature=temperature, max_new_tokens=max_new, cap=cap, eos=eos, pad=pad,
                      min_new_tokens=min_new, loop=check_loop(loop), stop_every=as_int("stop_every", stop_every, 1),
                      progress=bool(progress), eos_prefix=check_eos_reward(eos_reward) == "prefix",
                      generator=generator, logits_processor=procs, stopping=_split_criteria(stopping_criteria),
                      streamer=streamer, stream_prompt=False)
    out = run(model, src, input_ids, mask, spec)
    if gc.return_dict_in_generate:
        return ARGSGenerateOutput(sequences=out.sequences, scores=out.scores, rewards=out.rewards,
                                  logprobs=out.logprobs)
    return out.sequences


__all__ = ["custom_generate", "ARGSGenerateOutput"]
