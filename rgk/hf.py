"""Small Hugging Face `transformers` helpers shared by every rgk path.

- `text_config(model)`: the text model's config (multimodal configs nest it).
- `positions(mask)`: position ids of left-padded rows (0 at each row's first real token).
- `cache_kwarg(module)` / `cache_kw(module, cache)`: the name under which a model's
  forward takes its KV cache.  transformers 5.24 renamed `past_key_values=` to `cache=`
  and removes the old alias in 5.40; a forward that no longer knows the old name
  swallows it in `**kwargs` and silently runs without a cache, so rgk always passes the
  name the forward declares.
- `check_cache_filled(cache, n, where)`: fail loudly when a forward left a cache empty.
"""
from __future__ import annotations

import functools
import inspect

import torch

_CACHE_NAMES = ("cache", "past_key_values")


def text_config(model):
    """The (text) config of a model or config object."""
    cfg = getattr(model, "config", model)
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] of left-padded rows from their attention mask [B, T]."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(rows, pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T], mask [B, T]) of token-id rows, left-padded with `pad_id` (on `device`)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[b, T - len(r):] = 1
    return ids.to(device), mask.to(device)


@functools.lru_cache(maxsize=256)
def _cache_kwarg_of(fn) -> str:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    for name in _CACHE_NAMES:
        if name in params:
            return name
    raise TypeError(f"model: its forward {getattr(fn, '__qualname__', fn)} takes no KV cache argument "
                    f"(looked for {' or '.join(_CACHE_NAMES)}); rgk needs a causal LM with a cache")


def cache_kwarg(module) -> str:
    """'cache' or 'past_key_values': the keyword `module.forward` declares for its cache."""
    fwd = getattr(type(module), "forward", None) or module.forward
    return _cache_kwarg_of(fwd)


def cache_kw(module, cache) -> dict:
    """{name: cache} for `module(**..., **cache_kw(module, cache))`."""
    return {cache_kwarg(module): cache}


def check_cache_filled(cache, n_expected: int, where: str) -> None:
    """Raise if a forward that should have written `n_expected` positions left `cache` empty
    (the sign of a cache passed under a name the forward no longer takes)."""
    got = cache.get_seq_length() if hasattr(cache, "get_seq_length") else None
    if got is not None and int(got) < n_expected:
        raise RuntimeError(f"{where}: the KV cache holds {int(got)} positions after a forward of "
                           f"{n_expected}; the model did not use the cache it was given (a transformers "
                           "version whose forward names the cache differently?)")


def execution_device(module, fallback=None) -> torch.device:
    """Where `module` computes: its accelerate hook's execution device when it is dispatched
    (its weights may sit on "meta", offloaded to CPU or disk), else its first parameter's device."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    p = next(module.parameters(), None)
    if p is not None and p.device.type != "meta":
        return p.device
    return torch.device(fallback or "cpu")


# ----------------------------------------------------------------------------- next-token logits
class _HiddenPassthrough(torch.nn.Module):
    """Stands in for a causal LM's decoder: returns the hidden states it is given as
    `inputs_embeds`, so the LM's own forward computes its logits from them."""

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        return _DecoderOutput(inputs_embeds)


class _DecoderOutput:
    """A decoder's output holding only the final hidden states: any other field a causal
    LM's forward reads (past_key_values, attentions, router logits, ...) is None."""

    def __init__(self, hidden):
        self.last_hidden_state = hidden

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def __getitem__(self, i):
        if isinstance(i, str):          # mapping access (`**outputs`, outputs["last_hidden_state"])
            if i != "last_hidden_state":
                raise KeyError(i)
            return self.last_hidden_state
        return (self.last_hidden_state,)[i]

    def keys(self):
        return ("last_hidden_state",)


def _has_head(module) -> bool:
    try:
        return module.get_output_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return False


def decoder(model):
    """The base transformer of a causal LM (what returns last_hidden_state): its
    `get_decoder()`, else its `base_model`, else the model.  A causal LM whose `get_decoder()`
    is the LM itself (MllamaForCausalLM: its base_model_prefix names an attribute it does not
    have) gives its one pretrained child without an output head."""
    dec = None
    if hasattr(model, "get_decoder"):
        try:
            dec = model.get_decoder()
        except (AttributeError, NotImplementedError):
            dec = None
    if dec is None:
        base = getattr(model, "base_model", None)
        dec = base if base is not None else model
    if _has_head(dec):
        from transformers import PreTrainedModel
        kids = [c for _, c in dec.named_children() if isinstance(c, PreTrainedModel) and not _has_head(c)]
        if len(kids) == 1:
            dec = kids[0]
    return dec


def _decoder_path(model) -> str | None:
    """The dotted submodule path of the model's decoder (e.g. "model", "model.decoder")."""
    dec = decoder(model) if hasattr(model, "get_decoder") else None
    if dec is None:
        return None
    for name, child in model.named_modules():
        if child is dec and name:
            return name
    return None


def _with_passthrough(root, path: str):
    """A shallow copy of `root` (parameters shared) whose submodule at `path` is a
    `_HiddenPassthrough`; the modules along the path are shallow copies too."""
    import copy
    from collections import OrderedDict
    clone = copy.copy(root)
    clone._modules = OrderedDict(root._modules)
    # an accelerate hook replaces the instance's `forward` with a wrapper bound to the original
    # module (which would run the real decoder): the copies use their class's forward; the
    # hooks of the submodules they share (the output head's) still move weights and inputs
    clone.__dict__.pop("forward", None)
    cur, orig = clone, root
    parts = path.split(".")
    for i, p in enumerate(parts):
        if i == len(parts) - 1:
            cur._modules[p] = _HiddenPassthrough()
        else:
            child = orig._modules[p]
            cc = copy.copy(child)
            cc._modules = OrderedDict(child._modules)
            cc.__dict__.pop("forward", None)
            cur._modules[p] = cc
            cur, orig = cc, child
    return clone


_LOGITS_FNS: "weakref.WeakKeyDictionary" = None  # type: ignore[assignment]


def logits_fn(model):
    """A function hidden [B, d] -> next-token logits [B, V] (fp32) that computes them the way
    `model`'s own forward does: its output head and whatever its forward applies after it
    (Gemma 2/3's final soft-cap, Cohere's logit_scale, Granite's logits_scaling, ...).

    The model's forward is reused, not re-implemented: a shallow copy of the LM whose decoder
    is a pass-through runs the LM's forward on the hidden states.  When that equals the plain
    output head on a random probe (no tail), the head alone is used (one matmul, no Python
    overhead).  Computed once per model.  ValueError when the forward cannot be reused."""
    import weakref
    global _LOGITS_FNS
    if _LOGITS_FNS is None:
        _LOGITS_FNS = weakref.WeakKeyDictionary()
    fn = _LOGITS_FNS.get(model)
    if fn is not None:
        return fn
    head = model.get_output_embeddings()
    mt = getattr(text_config(model), "model_type", type(model).__name__)
    if head is None:
        raise ValueError(f"model: {type(model).__name__} ({mt}) has no output head (get_output_embeddings() is None)")
    path = _decoder_path(model)
    w = head.weight
    g = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(2, 1, w.shape[1], generator=g).to(device=execution_device(head), dtype=w.dtype)
    # the decoder's path, then its ancestors: a vision-language model's forward runs its own
    # multimodal wrapper around the language model (get_decoder()); the pass-through then
    # stands in for the wrapper
    paths = [] if path is None else [".".join(path.split(".")[:i]) for i in range(path.count(".") + 1, 0, -1)]
    tail = full = None
    with torch.no_grad():
        plain = head(probe)[:, 0].float()
        for j, pth in enumerate(paths):
            tail = _with_passthrough(model, pth)
            try:
                full = tail(inputs_embeds=probe, use_cache=False).logits[:, -1].float()
                break
            except Exception as e:  # noqa: BLE001
                if j == len(paths) - 1:
                    raise ValueError(f"model: {type(model).__name__} ({mt}): rgk computes next-token logits by "
                                     f"reusing the model's forward on given hidden states, which failed "
                                     f"({type(e).__name__}: {e})") from e
    if full is None:
        raise ValueError(f"model: {type(model).__name__} ({mt}): its decoder (get_decoder()) is not one of its "
                         "submodules, so rgk cannot reuse its forward for next-token logits")
    if full.shape == plain.shape and torch.equal(full, plain):
        def fn(h):
            return head(h).float()
    else:
        def fn(h):
            return tail(inputs_embeds=h[:, None], use_cache=False).logits[:, -1].float()
    _LOGITS_FNS[model] = fn
    return fn
