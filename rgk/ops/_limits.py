"""What the CUDA kernels (csrc/) can run, in pure Python: `cuda_supports(op, **shape)`.

Dispatch asks this before choosing the CUDA backend and falls back to Triton or the
reference when it says False, instead of letting the launcher refuse (it returns
cudaErrorNotSupported without launching) and the binding raise.  The C++ side answers the
same question with the host-only `rgk_<op>_supported` functions of csrc/rgk_kernels.h; the
constants below are the `RGK_*` constants of that header (tests/test_cuda_limits.py parses
the header and checks that they agree, and compiles the C++ functions to compare answers).

Limits, per op (csrc/rgk_kernels.h holds the numbers, the named .cu file the reason):

topk_logprobs(B, V, k)                                      csrc/topk_logprobs.cu
  - 1 <= k <= V (the op's contract) and k <= TOPK_MAX_K = 64: the running top-k lists and
    the final sort hold one candidate per thread of a 64-slot list.
  - ceil(V / TOPK_MAX_CHUNK) * k <= TOPK_MAX_CANDIDATES: a row is cut into chunks of at most
    8192 entries (256 threads x 32 registers), and the block that merges a row holds every
    chunk's top-k list in registers, 8192 candidates at most.  So k = 64 allows V <= 1,048,576
    and k = 10 allows V <= 6,553,600.
  - B * chunks <= MAX_GRID_X (one block per (row, chunk); chunks counted for the smallest
    chunk size the plan may pick).
fork_attention(B, Hq, Hkv, K, D, L)                         csrc/fork_attention.cu
  - B >= 0, K >= 1, Hq % Hkv == 0, L >= 0 (contract); 1 <= D <= FORK_MAX_D = 256: the
    CUDA-core path keeps a query row and a key tile of D floats per thread group in shared
    memory (the tensor-core path takes D in {64, 128}, other D run on CUDA cores).
  - B, Hq, K, L and B * Hq * K fit in int32, and the row tiles (16 query rows of one kv
    head) B * Hkv * ceil(Hq / Hkv * K / 16) <= MAX_GRID_X.
reward_select(B, K, d, m, mlp)                              csrc/reward_select.cu
  - 1 <= K <= REWARD_MAX_K = 64: one warp scores and chooses a row, two candidates per lane.
  - linear head (mlp False): m == 1 (contract).
  - MLP head: ceil(m / REWARD_UNITS_PER_BLOCK) <= MAX_GRID_Y: blocks of 64 hidden units
    are laid along grid y (65535 blocks), so m <= 4,194,240.
  - B * K, d and m fit in int32.
argre_refine(B, d, m, sms=None, smem_per_block=None)        csrc/argre_refine.cu
  - W1 [m, d] is kept on chip for the whole launch: block j keeps W1[:, ds columns] (fp32,
    transposed) in shared memory, ds a power of two in [ARGRE_MIN_COLS, ARGRE_MAX_COLS], and
    all ceil(d / ds) blocks must be co-resident (one grid barrier spans them; the launch is
    cooperative).  Shared floats per block, with R = 1 if B <= 1 else ARGRE_ROWS:
        ds * wp + R * wp + ds * R + max(ARGRE_THREADS * R, R * ub / 4),
        wp = ceil(m / 32) * 32 + 4,  ub = ceil(ceil(m / nblk) / 4) * 4,  nblk = ceil(d / ds).
    This mirror says True when some ds gives nblk <= sms and that many bytes <= the device's
    opt-in shared memory per block (one block per SM always fits then: the kernel uses
    < 256 registers per thread).  The launcher may also succeed with several blocks per SM
    (it asks the occupancy API), so False here can be conservative, never the other way.
    `sms` / `smem_per_block` default to the current CUDA device's values when torch sees
    one, else to an H100/H200 (132 SMs, 232,448 bytes = 227 KiB).
  - B * d and m fit in int32.
"""
from __future__ import annotations

__all__ = ["cuda_supports", "OPS"]

# csrc/rgk_kernels.h (checked by tests/test_cuda_limits.py)
MAX_GRID_X = 2147483647
MAX_GRID_Y = 65535
TOPK_MAX_K = 64
TOPK_MAX_CHUNK = 8192
TOPK_MAX_CANDIDATES = 8192
FORK_MAX_D = 256
FORK_MAX_SPLITS = 64
REWARD_MAX_K = 64
REWARD_UNITS_PER_BLOCK = 64
ARGRE_THREADS = 256
ARGRE_ROWS = 8
ARGRE_MIN_COLS = 4
ARGRE_MAX_COLS = 256

INT32_MAX = 2147483647
# csrc/topk_logprobs.cu: threads per block and the item counts the plan chooses from
_TOPK_THREADS = 256
_TOPK_ITEMS = (8, 16, 32)
# csrc/fork_attention.cu: query rows per tile of the CUDA-core path (the most tiles)
_FORK_MIN_ROWS = 16
# H100 / H200 (both 132 SMs, 227 KiB of opt-in shared memory per block)
_DEFAULT_SMS = 132
_DEFAULT_SMEM_PER_BLOCK = 232448

_FLOAT_DTYPES = ("float32", "bfloat16", "float16")

OPS = ("topk_logprobs", "fork_attention", "reward_select", "argre_refine")


def _int(name: str, v) -> int:
    if hasattr(v, "item") and not isinstance(v, int):  # numpy scalars, 0-d tensors
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    return int(v)


def _dtype_ok(dt) -> bool:
    if dt is None:
        return True
    text = str(dt).replace("torch.", "")
    if text in ("float", "half"):
        text = {"float": "float32", "half": "float16"}[text]
    return text in _FLOAT_DTYPES


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _topk_chunks(B: int, V: int, k: int, sms: int) -> int:
    """Chunks per row the topk plan picks (csrc/topk_logprobs.cu, make_plan)."""
    def chunks(items):
        return _ceil(V, _TOPK_THREADS * items)
    items = _TOPK_ITEMS[-1]
    while items > _TOPK_ITEMS[0] and B * chunks(items) < 2 * sms:
        items //= 2
    while items < _TOPK_ITEMS[-1] and chunks(items) * k > TOPK_MAX_CANDIDATES:
        items *= 2
    return chunks(items)


def _topk(B, V, k, dtype=None) -> bool:
    B, V, k = _int("B", B), _int("V", V), _int("k", k)
    if B < 0 or V < 1 or k < 1 or k > V or not _dtype_ok(dtype):
        return False
    if k > TOPK_MAX_K or _ceil(V, TOPK_MAX_CHUNK) * k > TOPK_MAX_CANDIDATES:
        return False
    return B == 0 or B * _topk_chunks(B, V, k, 1 << 20) <= MAX_GRID_X


def _fork(B, Hq, Hkv, K, D, L, dtype=None) -> bool:
    B, Hq, Hkv, K, D, L = (_int(n, v) for n, v in (("B", B), ("Hq", Hq), ("Hkv", Hkv), ("K", K), ("D", D), ("L", L)))
    if B < 0 or Hq < 1 or Hkv < 1 or Hq % Hkv or K < 1 or D < 1 or L < 0 or not _dtype_ok(dtype):
        return False
    if D > FORK_MAX_D or max(B, Hq, K, L) > INT32_MAX:
        return False
    M = Hq // Hkv * K
    if M > INT32_MAX or B * Hq * K > INT32_MAX:
        return False
    return B * Hkv * _ceil(M, _FORK_MIN_ROWS) <= MAX_GRID_X


def _reward(B, K, d, m=1, mlp=None, hidden_dtype=None, w1_dtype=None) -> bool:
    B, K, d, m = _int("B", B), _int("K", K), _int("d", d), _int("m", m)
    mlp = (m != 1) if mlp is None else bool(mlp)
    if B < 0 or K < 1 or d < 1 or m < 1 or not _dtype_ok(hidden_dtype) \
            or not _dtype_ok(w1_dtype):
        return False
    if not mlp and m != 1:
        return False
    if K > REWARD_MAX_K or B * K > INT32_MAX or d > INT32_MAX or m > INT32_MAX:
        return False
    return not mlp or _ceil(m, REWARD_UNITS_PER_BLOCK) <= MAX_GRID_Y


def argre_smem_bytes(B: int, d: int, m: int, ds: int) -> int:
    """Shared memory (bytes) of one argre_refine block keeping `ds` columns of W1 [m, d]."""
    R = 1 if B <= 1 else ARGRE_ROWS
    wp = _ceil(m, 32) * 32 + 4
    nblk = _ceil(d, ds)
    ub = _ceil(_ceil(m, nblk), 4) * 4
    floats = ds * wp + R * wp + ds * R + max(ARGRE_THREADS * R, R * (ub // 4))
    return 4 * floats


def _device_defaults():
    try:
        import torch
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(torch.cuda.current_device())
            smem = getattr(p, "shared_memory_per_block_optin", None)
            return p.multi_processor_count, int(smem) if smem else _DEFAULT_SMEM_PER_BLOCK
    except Exception:  # no usable CUDA: the H100/H200 numbers
        pass
    return _DEFAULT_SMS, _DEFAULT_SMEM_PER_BLOCK


def _argre(B, d, m, sms=None, smem_per_block=None, h_dtype=None, w1_dtype=None) -> bool:
    B, d, m = _int("B", B), _int("d", d), _int("m", m)
    if B < 0 or d < 1 or m < 1 or not _dtype_ok(h_dtype) or not _dtype_ok(w1_dtype):
        return False
    if B * d > INT32_MAX or m > INT32_MAX:
        return False
    if sms is None or smem_per_block is None:
        dflt_sms, dflt_smem = _device_defaults()
        sms = dflt_sms if sms is None else sms
        smem_per_block = dflt_smem if smem_per_block is None else smem_per_block
    sms, smem_per_block = _int("sms", sms), _int("smem_per_block", smem_per_block)
    ds = ARGRE_MIN_COLS
    while ds <= ARGRE_MAX_COLS:
        if argre_smem_bytes(B, d, m, ds) > smem_per_block:
            break  # larger ds only needs more
        if _ceil(d, ds) <= sms:
            return True
        ds *= 2
    return False


_CHECKS = {"topk_logprobs": _topk, "fork_attention": _fork, "reward_select": _reward, "argre_refine": _argre}


def cuda_supports(op: str, **shape) -> bool:
    """True when the CUDA kernel of `op` runs these shapes (see the module docstring).

    op: one of OPS.  shape, by op:
      topk_logprobs:  B, V, k[, dtype]
      fork_attention: B, Hq, Hkv, K, D, L[, dtype]
      reward_select:  B, K, d, m[, mlp (default m != 1), hidden_dtype, w1_dtype]
      argre_refine:   B, d, m[, sms, smem_per_block, h_dtype, w1_dtype]
    Ints may be Python ints, numpy integers or 0-d tensors; dtypes torch dtypes or names.
    Shapes outside the op's contract (k = 0, K = 0, ...) also give False: the op's own
    argument checks raise for those.
    """
    if not isinstance(op, str) or op not in _CHECKS:
        raise ValueError(f"op: expected one of {', '.join(OPS)}, got {op!r}")
    import inspect
    sig = inspect.signature(_CHECKS[op])
    for name in shape:
        if name not in sig.parameters:
            raise TypeError(f"{name}: not a shape of {op} (it takes {', '.join(sig.parameters)})")
    for name, prm in sig.parameters.items():
        if prm.default is inspect.Parameter.empty and name not in shape:
            raise TypeError(f"{name}: required by cuda_supports({op!r}, ...) (it takes {', '.join(sig.parameters)})")
    return bool(_CHECKS[op](**shape))


def mirrored_constants() -> dict:
    """Every constant above mirrored from csrc/rgk_kernels.h (name without the RGK_ prefix)."""
    return {n: v for n, v in globals().items() if n.isupper() and isinstance(v, int) and not n.startswith("_")
            and n not in ("INT32_MAX",)}

