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
