"""Backend choice for the fused ops: CUDA extension, then Triton, then the PyTorch reference.

RGK_BACKEND=auto|cuda|triton|torch forces one (default auto).  On CPU tensors auto means
the reference, except that under TRITON_INTERPRET=1 a forced "triton" runs the Triton
kernels in the interpreter (that is how CI checks them).

Shapes a fused kernel does not take fall back instead of failing: CUDA -> Triton ->
reference.  What the CUDA extension takes is answered by `rgk.ops._limits.cuda_supports`
(kept next to csrc/ by whoever changes the kernels); without that module the extension's
documented limits below (`FUSED_LIMITS`, also Triton's) are assumed.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings

BACKENDS = ("auto", "cuda", "triton", "torch")

# Largest sizes the fused kernels take (Triton always; CUDA unless rgk.ops._limits says
# otherwise): top-k k, reward_select candidates K, fork_attention head size D.
FUSED_LIMITS = {"topk_logprobs": ("k", 64), "reward_select": ("K", 64), "fork_attention": ("D", 256)}


def requested() -> str:
    b = os.environ.get("RGK_BACKEND", "auto").lower()
    if b not in BACKENDS:
        raise ValueError(f"RGK_BACKEND={b!r}: expected one of {', '.join(BACKENDS)}")
    return b


@functools.lru_cache(maxsize=None)
def cuda_ext():
    """The compiled extension: rgk._C, else with RGK_JIT=1 a JIT build of csrc/ (see
    rgk.ops._jit); None when neither is there.  Loading it registers torch.ops.rgk.* and
    their fake kernels (rgk.ops._fake) for torch.compile."""
    try:
        mod = importlib.import_module("rgk._C")
    except ModuleNotFoundError:
        mod = None
    except ImportError as e:  # built, but against another torch/CUDA: say so, then fall back
        warnings.warn(f"rgk._C is present but does not load ({e}); rebuild it with RGK_FORCE_CUDA=1")
        mod = None
    if mod is None and os.environ.get("RGK_JIT") == "1":
        from . import _jit
        mod = _jit.load()
    if mod is not None:
        from . import _fake  # noqa: F401
    return mod


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def choose(device_type: str, has_cuda_impl: bool = True) -> str:
    """Backend name for an op on tensors of `device_type`."""
    b = requested()
    if b == "torch":
        return "torch"
    if device_type != "cuda":
        if b == "triton" and os.environ.get("TRITON_INTERPRET") == "1" and triton_available():
            return "triton"
        return "torch"
    if b == "cuda":
        if not has_cuda_impl or cuda_ext() is None:
            raise RuntimeError("RGK_BACKEND=cuda but the rgk._C extension is not built "
                               "(reinstall with RGK_FORCE_CUDA=1 on a CUDA machine)")
        return "cuda"
    if b == "triton":
        if not triton_available():
            raise RuntimeError("RGK_BACKEND=triton but triton is not installed")
        return "triton"
    if has_cuda_impl and cuda_ext() is not None:
        return "cuda"
    if triton_available():
        return "triton"
    return "torch"


def within_fused_limits(op: str, shape: dict) -> bool:
    lim = FUSED_LIMITS.get(op)
    return lim is None or shape[lim[0]] <= lim[1]


@functools.lru_cache(maxsize=None)
def _limits_fn():
    try:
        from ._limits import cuda_supports as fn
    except ImportError:
        return None
    return fn


_SUPPORTED: dict = {}


def cuda_supports(op: str, **shape) -> bool:
    """Whether the CUDA extension takes this call of `op` (the keywords of
    `rgk.ops._limits.cuda_supports`); answers are memoised per (op, shape), since a decode
    loop asks the same question every step."""
    key = (op, *shape.values())  # callers pass the keywords of one op in one order
    ok = _SUPPORTED.get(key)
    if ok is None:
        fn = _limits_fn()
        ok = within_fused_limits(op, shape) if fn is None else bool(fn(op, **shape))
        if len(_SUPPORTED) > 4096:
            _SUPPORTED.clear()
        _SUPPORTED[key] = ok
    return ok


def route(op: str, device_type: str, **shape) -> str:
    """`choose`, then the fallbacks for shapes a fused kernel does not take:
    cuda -> triton -> torch."""
    b = choose(device_type)
    if b == "cuda" and not cuda_supports(op, **shape):
        b = "triton" if triton_available() else "torch"
    if b == "triton" and not within_fused_limits(op, shape):
        b = "torch"
    return b
