"""Backend choice for the fused ops: CUDA extension, then Triton, then the PyTorch reference.

RGK_BACKEND=auto|cuda|triton|torch forces one (default auto).  On CPU tensors auto means
the reference, except that under TRITON_INTERPRET=1 a forced "triton" runs the Triton
kernels in the interpreter (that is how CI checks them).

Shapes a fused kernel does not take fall back instead of failing: CUDA -> Triton ->
reference.  A CUDA device the library has no code for (`ext_serves`: its compute
capability against the architectures compiled in) uses Triton, with one warning.  The
first time an op runs on a (device, dtype, backend), the backend is checked against the
reference on a tiny fixed input (`rgk.ops._selftest`); a mismatch disables that backend on
that device for the process, with one warning.  RGK_SELFTEST=0 turns the check off.

What the CUDA extension takes is answered by `rgk.ops._limits.cuda_supports` (kept next
to csrc/ by whoever changes the kernels); without that module the extension's documented
limits below (`FUSED_LIMITS`, also Triton's) are assumed.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
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
    """The compiled library: rgk._C (the loader of rgk._rgk_cuda), else with RGK_JIT=1 a JIT
    build of csrc/ (see rgk.ops._jit); None when neither is there.  Loading it registers
    torch.ops.rgk.* and their fake kernels (rgk.ops._fake) for torch.compile."""
    try:
        mod = importlib.import_module("rgk._C")
    except ModuleNotFoundError as e:
        if e.name not in ("rgk._rgk_cuda", "rgk._C"):   # built, but something it needs is missing
            warnings.warn(f"rgk._C is present but does not load ({e}); rebuild it with RGK_FORCE_CUDA=1")
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


def ext_archs() -> str | None:
    """The architectures compiled into the library (rgk.ops._build.arch_token form), "unknown"
    for a library that does not say, None when there is no library."""
    mod = cuda_ext()
    if mod is None:
        return None
    fn = getattr(mod, "cuda_arch_list", None)
    return fn() if fn is not None else "unknown"


_SERVES: dict = {}


def _device_index(device) -> int:
    import torch
    d = torch.device(device)
    return d.index if d.index is not None else torch.cuda.current_device()


def ext_serves(device) -> bool:
    """Whether the library has code (SASS or PTX) for this CUDA device; on a device it cannot
    serve, one warning names the device and the archs built (dispatch then uses Triton)."""
    idx = _device_index(device)
    ok = _SERVES.get(idx)
    if ok is None:
        import torch
        from . import _build
        token = ext_archs()
        cap = tuple(torch.cuda.get_device_capability(idx))
        ok = token is not None and (token == "unknown" or _build.serves(cap, token))
        if token is not None and not ok:
            warnings.warn(f"rgk: the CUDA library has no code for cuda:{idx} ({torch.cuda.get_device_name(idx)}, "
                          f"compute capability {cap[0]}.{cap[1]}): it was built for {_build.describe_token(token)}; "
                          f"using {'Triton' if triton_available() else 'the PyTorch reference'} there (reinstall "
                          f"with TORCH_CUDA_ARCH_LIST=\"{cap[0]}.{cap[1]}\" to build for it)", stacklevel=3)
        _SERVES[idx] = ok
    return ok


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- self-test state
# (backend, device) pairs whose first-use self-test failed (rgk.ops._selftest): not used again
_DISABLED: set = set()
# (op, backend, device, dtype) -> True/False: the self-test's verdicts
SELFTEST_RESULTS: dict = {}
# device types whose backends are self-tested (CUDA; tests add "cpu" to fake a failure with the
# Triton interpreter)
SELFTEST_DEVICE_TYPES = ("cuda",)
_FORCED = threading.local()


@contextlib.contextmanager
def forced(backend: str):
    """Route every op of this thread to `backend`, untested (the self-test runs under it)."""
    prev = getattr(_FORCED, "b", None)
    _FORCED.b = backend
    try:
        yield
    finally:
        _FORCED.b = prev


def _dev(device):
    import torch
    return device if isinstance(device, torch.device) else torch.device(device)


def _enabled(backend: str, device) -> bool:
    return not _DISABLED or (backend, _dev(device)) not in _DISABLED


def choose(device, has_cuda_impl: bool = True) -> str:
    """Backend name for an op on tensors of `device` (a torch.device or a device string)."""
    b = requested()
    if b == "torch":
        return "torch"
    device_type = device if isinstance(device, str) and ":" not in device else _dev(device).type
    if device_type != "cuda":
        if (b == "triton" and os.environ.get("TRITON_INTERPRET") == "1" and triton_available()
                and _enabled("triton", device)):
            return "triton"
        return "torch"
    cuda_ok = has_cuda_impl and cuda_ext() is not None and _enabled("cuda", device) and ext_serves(device)
    if b == "cuda":
        if not (has_cuda_impl and cuda_ext() is not None):
            raise RuntimeError("RGK_BACKEND=cuda but the rgk._C extension is not built "
                               "(reinstall with RGK_FORCE_CUDA=1 on a CUDA machine)")
        if not ext_serves(device):
            from . import _build
            raise RuntimeError(f"RGK_BACKEND=cuda but the rgk._C extension has no code for {device} (built for "
                               f"{_build.describe_token(ext_archs())}); reinstall with TORCH_CUDA_ARCH_LIST set")
        if cuda_ok:
            return "cuda"
    if b == "triton":
        if not triton_available():
            raise RuntimeError("RGK_BACKEND=triton but triton is not installed")
        if _enabled("triton", device):
            return "triton"
        return "torch"
    if cuda_ok:
        return "cuda"
    if triton_available() and _enabled("triton", device):
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


def route(op: str, device, **shape) -> str:
    """`choose`, then the fallbacks for shapes a fused kernel does not take:
    cuda -> triton -> torch; then, the first time a (op, backend, device, dtype) runs, the
    self-test (rgk.ops._selftest), which disables a backend that disagrees with the reference
    and routes on."""
    b = getattr(_FORCED, "b", None)
    if b is not None:
        return b
    b = choose(device)
    if b == "cuda" and not cuda_supports(op, **shape):
        b = "triton" if triton_available() and _enabled("triton", device) else "torch"
    if b == "triton" and not within_fused_limits(op, shape):
        b = "torch"
    if b != "torch":
        device = _dev(device)
        dtype = next((v for v in shape.values() if type(v).__name__ == "dtype"), None)
        key = (op, b, device, dtype)
        if key not in SELFTEST_RESULTS and _selftest_now(device):
            from . import _selftest
            if not _selftest.check(op, b, _dev(device), dtype):
                return route(op, device, **shape)
    return b


def _selftest_now(device) -> bool:
    """Whether the first-use self-test runs for this call: on, on a self-tested device type,
    and not inside CUDA-graph capture or torch.compile tracing (there it waits for the next
    eager call)."""
    if os.environ.get("RGK_SELFTEST", "1") == "0":
        return False
    d = _dev(device)
    if d.type not in SELFTEST_DEVICE_TYPES:
        return False
    import torch
    if torch.compiler.is_compiling():
        return False
    return not (d.type == "cuda" and torch.cuda.is_current_stream_capturing())
