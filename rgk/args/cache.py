"""A KV cache that forks k candidate tokens off a shared prefix without copying it.

`ForkCache` is a `transformers.Cache` holding, per layer, one buffer of shape
[B, Hkv, max_len + k, D]: the prefix lives in [0, max_len) (row b valid on
[start[b], length)), the k candidates' own entries in the slot area [max_len, max_len + k).

- prefix mode (`extend`): a normal forward (any attention implementation, e.g. sdpa)
  appends tokens to the prefix; `update` returns a view of the valid prefix, uncopied.
- fork mode (`fork`): the k candidates of each row are fed as one [B, k] forward at the
  same position; `update` writes their K/V into the slot area and the registered
  attention function "rgk_fork" runs `rgk.ops.fork_attention`: each candidate attends to
  its row's prefix (read once) plus its own slot, not to the other candidates.
- `commit(winner)` appends the chosen candidate's slot to the prefix: one
  [B, Hkv, 1, D] copy per layer, on device, no host sync.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

from rgk import hf, ops

ATTN_NAME = "rgk_fork"
_STATE = threading.local()


def in_fork_pass() -> bool:
    """True inside a `ForkCache.fork` forward: every position of that forward is a newest
    position (the k candidates of each row), which is what hidden-state editors such as
    ARGRE's must know to edit all of them, as a full recompute would."""
    return getattr(_STATE, "forking", 0) > 0


@dataclass
class ForkInfo:
    """What the fork attention function needs besides q/k/v (passed as a forward kwarg)."""
    max_len: int
    start: torch.Tensor   # int32 [B]
    end: torch.Tensor     # int32 [B]


def rgk_fork_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       rgk_fork: ForkInfo | None = None, **kwargs):
    """`transformers` attention function for the candidate pass of a `ForkCache`.

    query [B, H, k, D]; key/value are the whole per-layer buffers [B, Hkv, max_len + k, D]
    returned by `ForkCache.update` in fork mode.  Returns ([B, k, H, D], None) as HF expects.
    """
    if rgk_fork is None:
        raise RuntimeError("attention 'rgk_fork' needs the `rgk_fork=ForkInfo(...)` forward kwarg; "
                           "run candidate passes through ForkCache.fork(...)")
    m, k = rgk_fork.max_len, query.shape[2]
    # start/end were validated once per step by ForkCache.fork: no per-layer host checks
    out = ops.fork_attention(query, key[:, :, :m], value[:, :, :m], key[:, :, m:m + k], value[:, :, m:m + k],
                             rgk_fork.start, rgk_fork.end, scaling, **_NO_CHECK)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, rgk_fork_attention)

try:  # `check=False`: the op's per-call value checks are done once per step by ForkCache.fork
    import inspect as _inspect
    _NO_CHECK = {"check": False} if "check" in _inspect.signature(ops.fork_attention).parameters else {}
except (TypeError, ValueError):
    _NO_CHECK = {}


class _ForkLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, owner: "ForkCache"):
        super().__init__()
        self.owner = owner
        self.writes = 0   # forwards that reached this layer (checked: a cache the model ignored stays 0)

    def lazy_initialization(self, key_states, value_states):
        o = self.owner
        B, H, _, D = key_states.shape
        if B != o.n_rows:
            raise ValueError(f"input batch size {B} does not match the cache's batch_size {o.n_rows}")
        shape = (B, H, o.max_len + o.k, D)
        self.keys = torch.zeros(shape, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros(shape, dtype=value_states.dtype, device=value_states.device)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        o = self.owner
        n = key_states.shape[-2]
        self.writes += 1
        if key_states.shape[0] != o.n_rows:
            raise ValueError(f"input batch size {key_states.shape[0]} does not match the cache's "
                             f"batch_size {o.n_rows}")
        if o.mode == "fork":
            if n > o.k:
                raise ValueError(f"{n} candidates given but the cache has k={o.k} candidate slots")
            self.keys[:, :, o.max_len:o.max_len + n] = key_states
            self.values[:, :, o.max_len:o.max_len + n] = value_states
            return self.keys, self.values
        L = o.length
        self.keys[:, :, L:L + n] = key_states
        self.values[:, :, L:L + n] = value_states
        return self.keys[:, :, :L + n], self.values[:, :, :L + n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.max_len

    def commit(self, rows: torch.Tensor, slots: torch.Tensor, pos: int) -> None:
        src = self.owner.max_len + slots
        self.keys[:, :, pos] = self.keys[rows, :, src]
        self.values[:, :, pos] = self.values[rows, :, src]


class ForkCache(Cache):
    """Prefix cache + k candidate slots for a model with `num_layers` attention layers.

    batch_size: rows; max_len: prefix capacity (prompt + generated tokens); k: candidate slots.
    """

    def __init__(self, num_layers: int, batch_size: int, max_len: int, k: int):
        for name, v in (("num_layers", num_layers), ("batch_size", batch_size), ("max_len", max_len), ("k", k)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        self.n_rows, self.max_len, self.k = batch_size, max_len, k
        self.length = 0
        self.mode = "prefix"
        self.start: torch.Tensor | None = None
        self._fork_info = None
        super().__init__(layers=[_ForkLayer(self) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int, k: int) -> "ForkCache":
        return cls(hf.text_config(model).num_hidden_layers, batch_size, max_len, k)

    def _check_rows(self, name: str, t: torch.Tensor) -> None:
        if t.shape[0] != self.n_rows:
            raise ValueError(f"{name}: batch size {t.shape[0]} does not match the cache's batch_size {self.n_rows}")

    def extend(self, decoder, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Append `input_ids` [B, n] to the prefix with a normal forward of `decoder`
        (the model's base, e.g. `model.get_decoder()`); returns the final hidden states [B, n, d].

        attention_mask [B, n]: 0 marks left padding (only allowed before any real token of
        the row; the first call fixes each row's start)."""
        self._check_rows("input_ids", input_ids)
        B, n = input_ids.shape
        if self.length + n > self.max_len:
            raise ValueError(f"input_ids: {self.length} cached + {n} new tokens exceed the cache's "
                             f"max_len={self.max_len}; build the cache with a larger max_len")
        dev = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones(B, n, dtype=torch.long, device=dev)
        self._check_rows("attention_mask", attention_mask)
        if self.start is None:
            self.start = (n - attention_mask.long().sum(-1)).to(torch.int32)
            self._mask = attention_mask.long()
        else:
            self._mask = torch.cat([self._mask, attention_mask.long()], dim=-1)
        pos = hf.positions(self._mask)[:, -n:]
        self.mode = "prefix"
        before = [layer.writes for layer in self.layers]
        out = decoder(input_ids=input_ids, attention_mask=self._mask, position_ids=pos, use_cache=True,
                      **hf.cache_kw(decoder, self))
        self._check_written(decoder, before, "ForkCache.extend")
        self.length += n
        return out.last_hidden_state

    def _check_written(self, decoder, before, where):
        if any(layer.writes == b for layer, b in zip(self.layers, before)):
            raise RuntimeError(f"{where}: the model's forward left the ForkCache empty (a layer was never "
                               f"updated): it did not take the cache under the name it was passed "
                               f"({hf.cache_kwarg(decoder)}=), or the cache's num_layers does not match the model")

    def fork(self, decoder, candidates: torch.Tensor) -> torch.Tensor:
        """Run the k candidates [B, k] of every row as the next token after the prefix;
        returns their final hidden states [B, k, d].  The prefix is unchanged."""
        self._check_rows("candidates", candidates)
        if candidates.shape[1] > self.k:
            raise ValueError(f"candidates: {candidates.shape[1]} per row but the cache has k={self.k} slots")
        if self.start is None or self.length == 0:
            raise RuntimeError("ForkCache.fork: the prefix is empty; call extend(...) with the prompt first")
        dev = candidates.device
        if self._fork_info is None or self._fork_info[0] != self.length:
            # start <= end = length <= max_len holds by construction; computed once per length
            start = self.start.to(dev)
            end = torch.full_like(start, self.length)
            npos = (self.length - self.start.long()).to(dev)
            self._fork_info = (self.length, ForkInfo(self.max_len, start, end), npos)
        _, info, npos = self._fork_info
        pos = npos[:, None].expand_as(candidates)
        self.mode = "fork"
        before = [layer.writes for layer in self.layers]
        _STATE.forking = getattr(_STATE, "forking", 0) + 1
        try:
            with attn_implementation(decoder, ATTN_NAME):
                out = decoder(input_ids=candidates, position_ids=pos, use_cache=True, rgk_fork=info,
                              **hf.cache_kw(decoder, self))
        finally:
            _STATE.forking -= 1
            self.mode = "prefix"
        self._check_written(decoder, before, "ForkCache.fork")
        return out.last_hidden_state

    def commit(self, winner: torch.Tensor) -> None:
        """Append candidate slot winner[b] of each row b to the prefix."""
        self._check_rows("winner", winner)
        if self.length + 1 > self.max_len:
            raise ValueError(f"commit: the cache is full (max_len={self.max_len})")
        rows = torch.arange(self.n_rows, device=winner.device)
        for layer in self.layers:
            if layer.is_initialized:
                layer.commit(rows, winner.to(layer.device), self.length)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=-1)
        self.length += 1


@contextlib.contextmanager
def attn_implementation(model, name: str):
    """Temporarily switch `model.config._attn_implementation` (shared by its layers)."""
    cfg = model.config
    old = cfg._attn_implementation
    cfg._attn_implementation = name
    try:
        yield
    finally:
        cfg._attn_implementation = old
