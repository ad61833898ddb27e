"""A KV cache that forks k candidate tokens off a shared prefix without copying it.

`ForkCache` is a `transformers.Cache` holding, per layer, keys and values of shape
[B, Hkv, max_len + k, D]: the prefix lives in [0, max_len) (row b valid on
[start[b], length)), the k candidates' own entries in the slot area [max_len, max_len + k).
Layers whose K/V agree in shape, dtype and device (all of them in the supported families)
are views into one buffer [B, 2 * layers * Hkv, max_len + k, D], so that a commit is one
gather and one copy for the whole model instead of a few small ops per layer.

- prefix mode (`extend`): a normal forward (any attention implementation, e.g. sdpa)
  appends tokens to the prefix; `update` returns a view of the valid prefix, uncopied.
- fork mode (`fork`): the k candidates of each row are fed as one [B, k] forward at the
  same position; `update` writes their K/V into the slot area and the registered
  attention function "rgk_fork" runs `rgk.ops.fork_attention`: each candidate attends to
  its row's prefix (read once) plus its own slot, not to the other candidates.
- `commit(winner)` appends the chosen candidate's slot to the prefix: one
  [B, 2 * layers * Hkv, 1, D] gather and copy, on device, no host sync.

Static state.  Besides the host-side `length` (advanced deterministically, never read back
from the device), the cache keeps its positions as device tensors updated in place —
`start` and `end` (int32 [B]), `pos` (int64 [1]) and a full-capacity mask — so a fork and
a commit have fixed shapes and read no Python number: the step of rgk's decode loop
(`rgk.args.decode`) is one static-shape function, compiled with
`torch.compile(fullgraph=True)` or captured in a CUDA graph.  In the fork pass the model's
mask is a 1-element 4-D placeholder (HF returns a 4-D mask as is; `rgk_fork` masks by
start/end itself), so no mask is built per step.

Valid-length bound.  Every row's prefix ends at `length` (rows differ only in their left
padding), so eager forks pass that Python int to the fork attention as `max_valid_len`
(the reference then reads only the filled part of the cache, the kernels size their
split of it): no host sync, the number is already on the host.  Static steps pass no
bound (the capacity), because a compiled or captured step must not bake in a number that
changes every step — unless the static loop runs them eagerly and says so
(`static_steps(..., host_bound=True)`), in which case `length` plus the commits the loop
has recorded is the same exact bound.
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
    max_valid_len: int | None = None   # host-side bound of every end[b]; None: max_len
    calls: int = 0                     # fork attention calls (layers reached), for the check in fork
    foreign_mask: bool = False         # an attention call got a mask other than the fork pass's placeholder
    windows: tuple = ()                # the sliding windows attention calls were given


# The ForkInfo of the fork pass running now, for families whose decoder layers do not hand
# the forward's kwargs on to their attention (Falcon, StableLM): set by ForkCache.fork.
_CURRENT: list = [None]


def rgk_fork_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       rgk_fork: ForkInfo | None = None, sliding_window=None, softcap=None, s_aux=None, **kwargs):
    """`transformers` attention function for the candidate pass of a `ForkCache`.

    query [B, H, k, D]; key/value are the whole per-layer buffers [B, Hkv, max_len + k, D]
    returned by `ForkCache.update` in fork mode.  Returns ([B, k, H, D], None) as HF expects.

    Each layer's own attention semantics, as the family passes them to its attention
    function: `sliding_window` W (keys at cache positions > q - W, HF's sliding-window mask:
    the candidate sits at the row's end, so the prefix starts at max(start, end - W + 1)),
    `softcap` (tanh soft-capping of the scores, Gemma 2) and `s_aux` (attention sinks: one
    extra logit per head in the softmax, gpt-oss).  The fused op covers windows; soft-caps
    and sinks, and values whose head size differs from the keys' (multi-head latent attention),
    run the reference's explicit softmax (`rgk.ops.reference.fork_attention_prefix`).
    """
    info = rgk_fork if rgk_fork is not None else _CURRENT[0]
    if info is None:
        raise RuntimeError("attention 'rgk_fork' needs the `rgk_fork=ForkInfo(...)` forward kwarg; "
                           "run candidate passes through ForkCache.fork(...)")
    if not torch.compiler.is_compiling():   # a traced counter would be a guard that changes every step
        info.calls += 1
        if attention_mask is not None and tuple(attention_mask.shape) != (1, 1, 1, 1):
            info.foreign_mask = True         # the family built its own mask / bias (ALiBi, dynamic masks)
        if sliding_window is not None and sliding_window not in info.windows:
            info.windows = info.windows + (sliding_window,)
    m, k = info.max_len, query.shape[2]
    start, end = info.start, info.end
    if start.device != query.device:       # a layer placed on another device (device_map): no-op otherwise
        start, end = start.to(query.device, non_blocking=True), end.to(query.device, non_blocking=True)
    if sliding_window is not None:
        start = torch.maximum(start, end - (int(sliding_window) - 1))
    if softcap is not None or s_aux is not None or value.shape[-1] != query.shape[-1]:
        out = ops.reference.fork_attention_prefix(query, key[:, :, :m], value[:, :, :m], key[:, :, m:m + k],
                                                  value[:, :, m:m + k], start, end, scaling, m, softcap=softcap,
                                                  sinks=s_aux)
    else:
        # start <= end <= max_len hold by construction (ForkCache): no per-layer value checks
        out = ops.fork_attention(query, key[:, :, :m], value[:, :, :m], key[:, :, m:m + k], value[:, :, m:m + k],
                                 start, end, scaling, max_valid_len=info.max_valid_len, check=False)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, rgk_fork_attention)


class _ForkLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, owner: "ForkCache", index: int):
        super().__init__()
        self.owner, self.index = owner, index
        self.writes = 0   # forwards that reached this layer (checked: a cache the model ignored stays 0)
        self.shared = False   # keys/values are views of the owner's all-layer buffer

    def lazy_initialization(self, key_states, value_states):
        o = self.owner
        B, H, _, D = key_states.shape
        if B != o.n_rows:
            raise ValueError(f"input batch size {B} does not match the cache's batch_size {o.n_rows}")
        if self.index in o.silent_layers:
            raise RuntimeError(f"ForkCache: layer {self.index} wrote keys/values, but the model's config says it "
                               "keeps no cache of its own (KV sharing, or a cross-attention layer without images)")
        buf = o._shared_buffer(key_states, value_states)
        if buf is not None:
            i = 2 * o._slot(self.index) * H
            self.keys, self.values = buf[:, i:i + H], buf[:, i + H:i + 2 * H]
            self.shared = True
        else:
            L = o.max_len + o.k      # values keep their own head size (MLA: v_head_dim != qk head dim)
            self.keys = torch.zeros((B, H, L, D), dtype=key_states.dtype, device=key_states.device)
            self.values = torch.zeros((B, value_states.shape[1], L, value_states.shape[-1]),
                                      dtype=value_states.dtype, device=value_states.device)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        o = self.owner
        n = key_states.shape[-2]
        if o.mode == "fork":
            if not o.static:
                self.writes += 1
                if key_states.shape[0] != o.n_rows:
                    raise ValueError(f"input batch size {key_states.shape[0]} does not match the cache's "
                                     f"batch_size {o.n_rows}")
                if n > o.k:
                    raise ValueError(f"{n} candidates given but the cache has k={o.k} candidate slots")
            self.keys[:, :, o.max_len:o.max_len + n] = key_states
            self.values[:, :, o.max_len:o.max_len + n] = value_states
            return self.keys, self.values
        self.writes += 1
        if key_states.shape[0] != o.n_rows:
            raise ValueError(f"input batch size {key_states.shape[0]} does not match the cache's "
                             f"batch_size {o.n_rows}")
        L = o.length
        self.keys[:, :, L:L + n] = key_states
        self.values[:, :, L:L + n] = value_states
        return self.keys[:, :, :L + n], self.values[:, :, :L + n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        o = self.owner
        if o.mode == "fork":
            return o.max_len + o.k, 0
        return o.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.max_len

    def commit(self, rows: torch.Tensor, src: torch.Tensor, pos: torch.Tensor) -> None:
        """Copy slot src[b] of row b to position pos (a layer with its own buffers, possibly on
        another device than the positions: a model dispatched with a device_map)."""
        if rows.device != self.keys.device:
            rows, src, pos = (t.to(self.keys.device, non_blocking=True) for t in (rows, src, pos))
        self.keys.index_copy_(2, pos, self.keys[rows, :, src].unsqueeze(2))
        self.values.index_copy_(2, pos, self.values[rows, :, src].unsqueeze(2))


class _Steps:
    """The handle `ForkCache.static_steps` yields: the commits recorded so far.  One class for
    every call (dynamo guards on the handle's type: a class made per call would make the
    compiled step recompile on every `args_generate` call)."""

    def __init__(self, host_bound: bool):
        self.committed = 0
        self.host_bound = bool(host_bound)

    def steps(self, n: int) -> None:
        self.committed += n


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
        self.static = False      # set by the decode loop: no Python-side checks in fork/commit
        self._steps = None       # the handle of the running `static_steps`, if any
        self.start: torch.Tensor | None = None     # int32 [B] first real position of each row
        self.end: torch.Tensor | None = None       # int32 [B] current length (same for every row)
        self.pos: torch.Tensor | None = None       # int64 [1] current length
        self._mask_full: torch.Tensor | None = None  # int64 [B, max_len]
        self._info: ForkInfo | None = None
        self._rows: torch.Tensor | None = None       # int64 [B] 0..B-1
        self._kv: torch.Tensor | None = None         # [B, 2 * layers * Hkv, max_len + k, D] (see the docstring)
        self._kv_spec = None                         # (Hkv, D, dtype, device) of _kv
        # layers that never write a cache (`silent_layers`): trailing layers that reuse an
        # earlier layer's keys/values (KV sharing: Gemma 3n, Gemma 4 `num_kv_shared_layers`), and
        # cross-attention layers a text-only forward skips (Llama 3.2 Vision)
        self.silent_layers: frozenset = frozenset()
        super().__init__(layers=[_ForkLayer(self, i) for i in range(num_layers)])

    def _shared_buffer(self, key_states: torch.Tensor, value_states: torch.Tensor) -> torch.Tensor | None:
        """The all-layer K/V buffer (allocated at the first layer's first update) if this
        layer's K/V fit it, else None (the layer keeps its own buffers)."""
        B, H, _, D = key_states.shape
        spec = (H, D, key_states.dtype, key_states.device)
        if (value_states.shape[1], value_states.shape[3], value_states.dtype, value_states.device) != spec:
            return None
        if self._kv is None:
            n = len(self.layers) - len(self.silent_layers)    # silent layers write nothing
            self._kv = torch.zeros(B, 2 * n * H, self.max_len + self.k, D, dtype=key_states.dtype,
                                   device=key_states.device)
            self._kv_spec = spec
        return self._kv if spec == self._kv_spec else None

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int, k: int) -> "ForkCache":
        """A cache for `model`; refuses, before allocating anything, a size that does not fit the
        free memory of the devices its layers compute on (`fork_cache_bytes`)."""
        check_fork_cache_fits(model, batch_size, max_len, k)
        cfg = hf.text_config(model)
        cache = cls(cfg.num_hidden_layers, batch_size, max_len, k)
        cache.silent_layers = frozenset(silent_layers(cfg))
        return cache

    def _slot(self, index: int) -> int:
        """Layer `index`'s place among the layers that write (its slice of the shared buffer)."""
        return index - sum(1 for j in self.silent_layers if j < index)

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
        L = self.length
        if self.start is None:
            self.start = (n - attention_mask.long().sum(-1)).to(torch.int32).to(dev)
            self.end = torch.zeros(B, dtype=torch.int32, device=dev)
            self.pos = torch.zeros(1, dtype=torch.long, device=dev)
            self._rows = torch.arange(B, device=dev)
            self._mask_full = torch.ones(B, self.max_len, dtype=torch.long, device=dev)
            self._info = ForkInfo(self.max_len, self.start, self.end)
        self._mask_full[:, L:L + n] = attention_mask.long()
        mask = self._mask_full[:, :L + n]
        pos = hf.positions(mask)[:, -n:]
        self.mode = "prefix"
        before = [layer.writes for layer in self.layers]
        out = decoder(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True,
                      **hf.cache_kw(decoder, self))
        self._check_written(decoder, before, "ForkCache.extend")
        self.length += n
        self.end += n
        self.pos += n
        return out.last_hidden_state

    def _check_written(self, decoder, before, where):
        if any(layer.writes == b for i, (layer, b) in enumerate(zip(self.layers, before))
               if i not in self.silent_layers):
            raise RuntimeError(f"{where}: the model's forward left the ForkCache empty (a layer was never "
                               f"updated): it did not take the cache under the name it was passed "
                               f"({hf.cache_kwarg(decoder)}=), or the cache's num_layers does not match the model")

    def fork(self, decoder, candidates: torch.Tensor) -> torch.Tensor:
        """Run the k candidates [B, k] of every row as the next token after the prefix;
        returns their final hidden states [B, k, d].  The prefix is unchanged."""
        if not self.static:
            self._check_rows("candidates", candidates)
            if candidates.shape[1] > self.k:
                raise ValueError(f"candidates: {candidates.shape[1]} per row but the cache has k={self.k} slots")
            if self.start is None or self.length == 0:
                raise RuntimeError("ForkCache.fork: the prefix is empty; call extend(...) with the prompt first")
            if self.length >= self.max_len + 1:
                raise RuntimeError("ForkCache.fork: the cache is full")
        # start <= end <= max_len by construction: the op's value checks are not needed
        self._info.max_valid_len = self.valid_len()
        pos = (self.end - self.start).long()[:, None].expand_as(candidates)
        # a 4-D mask is returned by HF's mask builders as is; rgk_fork masks by start/end itself
        placeholder = self.end.new_zeros((1, 1, 1, 1), dtype=torch.bool)
        self.mode = "fork"
        before = None if self.static else [layer.writes for layer in self.layers]
        _STATE.forking = getattr(_STATE, "forking", 0) + 1
        _CURRENT[0] = self._info
        calls0 = self._info.calls
        try:
            if self.static:   # the decode loop switched the attention implementation once
                out = decoder(input_ids=candidates, attention_mask=placeholder, position_ids=pos, use_cache=True,
                              rgk_fork=self._info, **{self._static_kw: self})
            else:
                with attn_implementation(decoder, ATTN_NAME):
                    out = decoder(input_ids=candidates, attention_mask=placeholder, position_ids=pos,
                                  use_cache=True, rgk_fork=self._info, **hf.cache_kw(decoder, self))
        finally:
            _STATE.forking -= 1
            _CURRENT[0] = None
            self.mode = "prefix"
        if before is not None:
            self._check_written(decoder, before, "ForkCache.fork")
            if self._info.calls == calls0:
                mt = getattr(hf.text_config(decoder), "model_type", type(decoder).__name__)
                raise RuntimeError(f"model_type {mt!r}: its attention does not run through transformers' attention "
                                   "interface, so rgk's candidate pass cannot apply (no exact fork attention)")
        return out.last_hidden_state

    def commit(self, winner: torch.Tensor) -> None:
        """Append candidate slot winner[b] of each row b to the prefix (static shapes; the
        host-side `length` advances by one, the device positions in place)."""
        if self.static:          # inside the decode loop's step: device state only
            self.commit_device(winner)
            return
        self._check_rows("winner", winner)
        if self.length + 1 > self.max_len:
            raise ValueError(f"commit: the cache is full (max_len={self.max_len})")
        self.commit_device(winner)
        self.length += 1

    def valid_len(self) -> int | None:
        """The fork attention's `max_valid_len` for the next fork: the host-side length (every
        row's end) in eager forks and in eagerly run static steps (`host_bound=True`: length +
        the commits recorded so far); None (the capacity) in static steps otherwise, and
        whenever torch.compile is tracing."""
        if not self.static:
            return self.length
        h = self._steps
        if h is None or not h.host_bound or torch.compiler.is_compiling():
            return None
        return self.length + h.committed

    @contextlib.contextmanager
    def static_steps(self, decoder, *, host_bound: bool = False):
        """Run fork/commit as static-shape device code (no checks, no host state, the fork
        attention switched on once); `steps(n)` on the yielded handle records n commits.

        host_bound: the steps run eagerly (not compiled, not captured) and the caller records
        every commit with `steps` before the next fork; the forks then pass the exact
        Python-int valid length to the fork attention (see `valid_len`)."""
        owner = self
        h = _Steps(host_bound)
        old = decoder.config._attn_implementation
        self._static_kw = hf.cache_kwarg(decoder)
        self.static = True
        self._steps = h
        decoder.config._attn_implementation = ATTN_NAME
        try:
            yield h
        finally:
            decoder.config._attn_implementation = old
            self.static = False
            self._steps = None
            owner.length += h.committed

    def commit_device(self, winner: torch.Tensor) -> None:
        """The device half of `commit`: copies and position updates, no host state."""
        rows = self._rows if self._rows is not None else torch.arange(self.n_rows, device=winner.device)
        src = winner + self.max_len
        if self._kv is not None:   # every layer on the shared buffer at once
            self._kv.index_copy_(2, self.pos, self._kv[rows, :, src].unsqueeze(2))
        for layer in self.layers:
            if layer.is_initialized and not layer.shared:
                layer.commit(rows, src, self.pos)
        self.end.add_(1)         # in place, no rebinding: `self.end += 1` under dynamo re-stores the
        self.pos.add_(1)         # attribute, and the next step's guard (end is _info.end) recompiles


def _layer_devices(model, n_layers: int) -> list[torch.device]:
    """The device each decoder layer computes on: from accelerate's `hf_device_map` where the
    model was dispatched ("cpu"/"disk" offloaded layers compute on the execution device),
    else the model's own device."""
    default = hf.execution_device(model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model)
    dm = getattr(model, "hf_device_map", None) or {}
    out = []
    for i in range(n_layers):
        dev = default
        for name, d in dm.items():
            parts = name.split(".")
            if str(i) in parts and parts.index(str(i)) > 0 and parts[parts.index(str(i)) - 1] in ("layers", "h", "blocks"):
                if d not in ("cpu", "disk"):
                    dev = torch.device(d) if not isinstance(d, int) else torch.device("cuda", d)
                break
            if name in ("", "model", "transformer") and d not in ("cpu", "disk"):
                dev = torch.device(d) if not isinstance(d, int) else torch.device("cuda", d)
        out.append(dev)
    return out


def fork_cache_bytes(model, batch_size: int, max_len: int, k: int) -> dict:
    """{device: bytes} the ForkCache of `model` allocates: per layer 2 (K and V) x batch x
    kv heads x (max_len + k) x head size x the element size, on the device the layer computes on."""
    cfg = hf.text_config(model)
    n = int(cfg.num_hidden_layers)
    p = next(model.parameters())
    out: dict = {}
    silent = silent_layers(cfg)               # layers that write no cache allocate nothing
    for i, dev in enumerate(_layer_devices(model, n)):
        if i in silent:
            continue
        heads = _layer_attr(cfg, i, "num_attention_heads") or 1
        hkv = _layer_attr(cfg, i, "num_key_value_heads") or heads
        d = _layer_attr(cfg, i, "head_dim") or cfg.hidden_size // heads
        out[dev] = out.get(dev, 0) + 2 * batch_size * hkv * (max_len + k) * d * p.element_size()
    return out


def kv_shared_layers(cfg) -> int:
    """How many trailing layers reuse an earlier layer's keys/values (0 for most families)."""
    try:
        return int(getattr(cfg, "num_kv_shared_layers", 0) or 0)
    except Exception:  # noqa: BLE001 - a per-layer config that does not say
        return 0


def silent_layers(cfg) -> tuple[int, ...]:
    """The layers whose forward writes no KV cache in a text-only decode: the trailing
    `num_kv_shared_layers` (they reuse an earlier layer's keys/values) and the
    `cross_attention_layers` (Llama 3.2 Vision: skipped without image states)."""
    n = int(cfg.num_hidden_layers)
    out = set(range(n - kv_shared_layers(cfg), n))
    try:
        cross = getattr(cfg, "cross_attention_layers", None) or ()
    except Exception:  # noqa: BLE001 - a per-layer config that does not say
        cross = ()
    out |= {int(i) for i in cross if 0 <= int(i) < n}
    return tuple(sorted(out))


def _layer_attr(cfg, i: int, name: str):
    """A config value for layer i: the global one, or, for configs whose value varies per layer
    (transformers' per-layer configs, e.g. Gemma 4's head size), layer i's own."""
    try:
        return getattr(cfg, name, None)
    except Exception:  # noqa: BLE001 - transformers' "ambiguous global per-layer attribute" error
        plc = getattr(cfg, "per_layer_config", None)
        return getattr(plc[i], name, None) if plc is not None else None


def _free_bytes(dev: torch.device) -> int | None:
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type == "cpu":
        import os
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_fork_cache_fits(model, batch_size: int, max_len: int, k: int) -> None:
    """ValueError, before any allocation, when the ForkCache would not fit a device's free memory."""
    try:
        need = fork_cache_bytes(model, batch_size, max_len, k)
    except (AttributeError, TypeError, StopIteration):
        return                              # a config without the usual sizes: nothing to estimate
    per_layer = sum(need.values()) // max(1, int(hf.text_config(model).num_hidden_layers))
    for dev, b in need.items():
        free = _free_bytes(dev)
        if free is not None and b > free:
            raise ValueError(f"max_cache_len: the fork cache for batch {batch_size}, capacity {max_len} + {k} "
                             f"candidate slots needs {b / 2**30:.2f} GiB on {dev} ({per_layer / 2**20:.1f} MiB per "
                             f"layer, {b // per_layer} layers there) but {free / 2**30:.2f} GiB is free; use a "
                             "smaller batch, max_new_tokens or k")


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
