"""Build configuration of the rgk._C CUDA library: the CUDA toolkit, the architecture list,
the sources and the compiler flags.

Read by `setup.py` by file path (no rgk or torch import: the standard library only), by the
JIT build (`rgk.ops._jit`), by the runtime's architecture check (`rgk.ops._backend`) and by
`rgk doctor`, so every one of them answers the same way.

CUDA toolkit (`find_cuda_home`)
-------------------------------
1. `CUDA_HOME`, then `CUDA_PATH`, when set: it must hold `include/cuda_runtime.h`, or the
   build stops with an error naming the variable and what was found there.
2. Otherwise the real toolkit behind the first `nvcc` on PATH.  nvcc is often a wrapper
   script or a symlink outside the toolkit (/usr/local/bin/nvcc, conda, environment
   modules), where torch's own guess, the folder above the wrapper's bin/, is wrong.  So
   nvcc is asked (`nvcc --dryrun`, which prints `TOP=<toolkit>/bin/..` whatever wraps it),
   and failing that its resolved path (symlinks followed) is used.
3. Otherwise /usr/local/cuda.
The answer is checked for include/cuda_runtime.h; `setup.py` exports it as CUDA_HOME before
torch.utils.cpp_extension is imported.

Architectures (`build_archs`)
-----------------------------
- `TORCH_CUDA_ARCH_LIST`, in torch's syntax: entries "X.Y", "X.Ya" (arch-specific),
  "X.Yf" (family) or a name (Ampere, Ada, Hopper, Blackwell, ...), each optionally "+PTX",
  separated by ";", spaces or ",".  Entries below 8.0 are dropped with a warning (the
  kernels use cp.async and bf16 mma.sync, sm_80 features); an entry the installed nvcc
  cannot compile for is an error.
- `RGK_CUDA_ARCHS` (the old switch, same syntax): read only when TORCH_CUDA_ARCH_LIST is
  unset, with a deprecation warning; it will be removed in rgk 0.2.
- Neither set: the visible GPUs' compute capabilities (+PTX on the highest).
- No visible GPU (RGK_FORCE_CUDA=1): `DEFAULT_ARCHS` (8.0, 8.6, 8.9, 9.0a) plus, for every
  major version above 9 that nvcc lists, its lowest minor (10.0, 11.0, 12.0 for CUDA 13.0:
  SASS runs on every later minor of its major), plus PTX of the highest for GPUs newer
  than this nvcc.
No kernel uses Hopper-only instructions (no wgmma, TMA or setmaxnreg: cp.async, ldmatrix and
mma.sync are sm_80 features), so every architecture compiles the same code; "9.0a" only
lets ptxas schedule for the one chip it targets.  PTX is always emitted for the plain
architecture (compute_90, not compute_90a): arch-specific PTX would JIT on 9.0 only.

Which GPUs a build serves (`serves`)
------------------------------------
SASS for sm_XY runs on capability X.Z with Z >= Y ("a": X.Y only; "f": X.Z, Z >= Y);
PTX for compute_XY is JIT-compiled by the driver for any capability >= X.Y.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIN_CAPABILITY = (8, 0)
DEFAULT_ARCHS = ("8.0", "8.6", "8.9", "9.0a")
# torch's architecture names (torch.utils.cpp_extension), the ones rgk can build for
NAMED_ARCHS = {
    "ampere": "8.0;8.6+PTX", "ampere+tegra": "8.7", "ada": "8.9+PTX", "hopper": "9.0+PTX",
    "blackwell": "10.0;12.0+PTX", "blackwell+tegra": "11.0",
    # too old for rgk's kernels: accepted (torch knows them) and dropped with the warning
    "kepler": "3.5+PTX", "kepler+tesla": "3.7", "maxwell": "5.0;5.2+PTX", "maxwell+tegra": "5.3",
    "pascal": "6.0;6.1+PTX", "volta": "7.0+PTX", "volta+tegra": "7.2", "turing": "7.5+PTX",
}
_ENTRY = re.compile(r"^(\d+)\.(\d+)([af]?)(\+ptx)?$", re.I)
# the identifier-safe form compiled into the library: sm80_sm90a_ptx90 (see arch_token)
_TOKEN = re.compile(r"^(sm|ptx)(\d+?)(\d)([af]?)$")


class BuildConfigError(RuntimeError):
    """A build setting that cannot work: the message names the variable and what was found."""


# ----------------------------------------------------------------------------- toolkit

def _has_runtime_header(home: str) -> bool:
    return os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def _toolkit_from_nvcc(nvcc: str) -> str | None:
    """The toolkit folder behind `nvcc` (a binary, a symlink or a wrapper script)."""
    try:
        p = subprocess.run([nvcc, "-x", "cu", "-E", os.devnull, "-o", os.devnull, "--dryrun"],
                           capture_output=True, text=True, timeout=60)
        for line in (p.stdout + p.stderr).splitlines():
            m = re.match(r"^#\$\s*TOP=(.+)$", line.strip())
            if m:
                return os.path.realpath(m.group(1).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    real = os.path.realpath(nvcc)  # symlinks followed
    return os.path.dirname(os.path.dirname(real))


def find_cuda_home(environ=None, which=shutil.which) -> str:
    """The CUDA toolkit folder (rules in the module docstring); BuildConfigError when none fits."""
    env = os.environ if environ is None else environ
    for var in ("CUDA_HOME", "CUDA_PATH"):
        val = env.get(var)
        if val:
            if _has_runtime_header(val):
                return os.path.abspath(val)
            what = "does not exist" if not os.path.isdir(val) else "has no include/cuda_runtime.h"
            raise BuildConfigError(f"{var}: expected the CUDA toolkit folder (holding include/cuda_runtime.h), "
                                   f"got {val!r}, which {what}; set {var} to the toolkit (e.g. /usr/local/cuda) "
                                   f"or unset it to use the nvcc on PATH")
    nvcc = which("nvcc")
    if nvcc:
        home = _toolkit_from_nvcc(nvcc)
        if home and _has_runtime_header(home):
            return home
        raise BuildConfigError(f"nvcc: the nvcc on PATH ({nvcc}) belongs to {home!r}, which has no "
                               "include/cuda_runtime.h; set CUDA_HOME to the CUDA toolkit folder")
    if _has_runtime_header("/usr/local/cuda"):
        return "/usr/local/cuda"
    raise BuildConfigError("CUDA_HOME: not set, no nvcc on PATH and no /usr/local/cuda; install the CUDA toolkit "
                           "or set CUDA_HOME to it")


def nvcc_path(cuda_home: str) -> str:
    return os.path.join(cuda_home, "bin", "nvcc")


def nvcc_archs(nvcc: str) -> list[tuple[int, int]]:
    """The compute capabilities `nvcc --list-gpu-arch` lists (plain compute_XY only)."""
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    caps = set()
    for m in re.finditer(r"compute_(\d+?)(\d)\b", out):
        caps.add((int(m.group(1)), int(m.group(2))))
    return sorted(caps)


# ----------------------------------------------------------------------------- architectures

class Arch(tuple):
    """(major, minor, suffix, ptx): one entry of an architecture list."""

    def __new__(cls, major: int, minor: int, suffix: str = "", ptx: bool = False):
        return super().__new__(cls, (int(major), int(minor), suffix, bool(ptx)))

    major = property(lambda s: s[0])
    minor = property(lambda s: s[1])
    suffix = property(lambda s: s[2])
    ptx = property(lambda s: s[3])

    @property
    def cap(self) -> tuple[int, int]:
        return self[0], self[1]

    def __str__(self):
        return f"{self.major}.{self.minor}{self.suffix}" + ("+PTX" if self.ptx else "")

    __repr__ = __str__


def parse_arch_list(text: str, var: str = "TORCH_CUDA_ARCH_LIST", warn=warnings.warn) -> list[Arch]:
    """Parse torch's architecture-list syntax; entries below MIN_CAPABILITY are dropped with a
    warning, malformed ones raise BuildConfigError naming `var`."""
    entries = [e for e in re.split(r"[;,\s]+", text.strip()) if e]
    if not entries:
        raise BuildConfigError(f"{var}: expected architectures such as '8.0;9.0+PTX', got {text!r}")
    out: list[Arch] = []
    dropped = []
    for e in entries:
        named = NAMED_ARCHS.get(e.lower())
        for item in (named.split(";") if named else [e]):
            m = _ENTRY.match(item)
            if not m:
                raise BuildConfigError(f"{var}: expected entries like 8.0, 9.0a, 10.0f, 8.6+PTX or a name "
                                       f"(Ampere, Ada, Hopper, Blackwell), got {e!r} in {text!r}")
            a = Arch(int(m.group(1)), int(m.group(2)), m.group(3).lower(), bool(m.group(4)))
            if a.cap < MIN_CAPABILITY:
                dropped.append(str(a))
                continue
            out.append(a)
    if dropped:
        warn(f"{var}: dropping {', '.join(dropped)}: rgk's kernels need compute capability >= "
             f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (cp.async, bf16 mma.sync)")
    if not out:
        raise BuildConfigError(f"{var}: no architecture >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} left in {text!r}")
    return _dedup(out)


def _dedup(archs: list[Arch]) -> list[Arch]:
    """One entry per (major, minor, suffix), PTX if any duplicate asked for it, sorted."""
    seen: dict = {}
    for a in archs:
        key = a[:3]
        seen[key] = Arch(*key, ptx=seen.get(key, a).ptx or a.ptx)
    return sorted(seen.values(), key=lambda a: (a.major, a.minor, a.suffix))


def default_archs(nvcc_caps: list[tuple[int, int]]) -> list[Arch]:
    """The list for a build with no visible GPU (module docstring)."""
    out = [parse_arch_list(a, "DEFAULT_ARCHS")[0] for a in DEFAULT_ARCHS]
    if nvcc_caps:
        out = [a for a in out if a.cap in nvcc_caps]
        for major in sorted({c[0] for c in nvcc_caps if c[0] > 9}):
            out.append(Arch(major, min(c[1] for c in nvcc_caps if c[0] == major)))
    out = _dedup(out)
    top = max(range(len(out)), key=lambda i: out[i].cap)
    out[top] = Arch(*out[top][:3], ptx=True)
    return out


def build_archs(environ=None, visible_caps=None, nvcc_caps=None, warn=warnings.warn) -> tuple[list[Arch], str]:
    """(architectures, where they came from) for a build (rules in the module docstring).
    visible_caps: the visible GPUs' capabilities; nvcc_caps: what nvcc can compile for
    (None or [] when unknown: then no entry is refused for it)."""
    env = os.environ if environ is None else environ
    src = None
    if env.get("TORCH_CUDA_ARCH_LIST", "").strip():
        src = "TORCH_CUDA_ARCH_LIST"
    elif env.get("RGK_CUDA_ARCHS", "").strip():
        src = "RGK_CUDA_ARCHS"
        warn("RGK_CUDA_ARCHS is deprecated and will be removed in rgk 0.2: set TORCH_CUDA_ARCH_LIST "
             "(same syntax, e.g. '8.0;9.0a+PTX')")
    if src:
        archs = parse_arch_list(env[src], src, warn=warn)
        if nvcc_caps:
            bad = [str(a) for a in archs if a.cap not in nvcc_caps]
            if bad:
                have = ", ".join(f"{M}.{m}" for M, m in nvcc_caps)
                raise BuildConfigError(f"{src}: the installed nvcc cannot compile for {', '.join(bad)} "
                                       f"(it lists {have})")
        return archs, src
    if visible_caps:
        archs = _dedup([Arch(M, m) for M, m in visible_caps if (M, m) >= MIN_CAPABILITY])
        if not archs:
            caps = ", ".join(f"{M}.{m}" for M, m in visible_caps)
            raise BuildConfigError(f"TORCH_CUDA_ARCH_LIST: unset, and no visible GPU has compute capability >= 8.0 "
                                   f"(found {caps}); rgk's kernels need sm_80 features")
        archs[-1] = Arch(*archs[-1][:3], ptx=True)
        return archs, "the visible GPUs"
    return default_archs(nvcc_caps or []), "the default list"


def gencode_flags(archs: list[Arch]) -> list[str]:
    flags = []
    for a in archs:
        n = f"{a.major}{a.minor}"
        flags.append(f"-gencode=arch=compute_{n}{a.suffix},code=sm_{n}{a.suffix}")
        if a.ptx:  # plain PTX: arch-specific (a/f) PTX would JIT on that one chip only
            flags.append(f"-gencode=arch=compute_{n},code=compute_{n}")
    return flags


def arch_token(archs: list[Arch]) -> str:
    """The identifier-safe list compiled into the library (-DRGK_ARCHS=...; no ';' or '+',
    which the shell that runs the compiler would read): sm80_sm90a_ptx90."""
    parts = []
    for a in archs:
        parts.append(f"sm{a.major}{a.minor}{a.suffix}")
        if a.ptx:
            parts.append(f"ptx{a.major}{a.minor}")
    return "_".join(parts)


def parse_arch_token(token: str) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
    """(SASS targets (major, minor, suffix), PTX targets (major, minor)) from `arch_token`'s form."""
    sass, ptx = [], []
    for part in token.split("_"):
        m = _TOKEN.match(part)
        if not m:
            raise ValueError(f"arch token: unexpected part {part!r} in {token!r}")
        kind, M, m_, suf = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        (sass.append((M, m_, suf)) if kind == "sm" else ptx.append((M, m_)))
    return sass, ptx


def serves(capability: tuple[int, int], token: str) -> bool:
    """Whether a library built for `token` has code that runs on a GPU of `capability`."""
    M, m = capability
    sass, ptx = parse_arch_token(token)
    for SM, Sm, suf in sass:
        if suf == "a" and (SM, Sm) == (M, m):
            return True
        if suf != "a" and SM == M and Sm <= m:
            return True
    return any((PM, Pm) <= (M, m) for PM, Pm in ptx)


def describe_token(token: str) -> str:
    """'sm_80, sm_90a, PTX compute_90' for messages."""
    sass, ptx = parse_arch_token(token)
    return ", ".join([f"sm_{M}{m}{s}" for M, m, s in sass] + [f"PTX compute_{M}{m}" for M, m in ptx])


# ----------------------------------------------------------------------------- sources and flags

def sources(root: str = REPO) -> list[str]:
    """The kernel files (CUDA headers only) and the torch binding."""
    csrc = os.path.join(root, "csrc")
    return sorted(glob.glob(os.path.join(csrc, "*.cu"))) + sorted(glob.glob(os.path.join(csrc, "*.cpp")))


def compile_args(archs: list[Arch], debug: bool | None = None) -> dict[str, list[str]]:
    """Compiler flags.  Release by default: -O3 and no debug information (-g0 overrides the -g
    Python's own CFLAGS bring; RGK_DEBUG=1 adds -g, and -lineinfo for nvcc).  No -std flag:
    torch's build adds the standard its headers need."""
    if debug is None:
        debug = os.environ.get("RGK_DEBUG") == "1"
    token = f"-DRGK_ARCHS={arch_token(archs)}"
    dbg_cxx = ["-g"] if debug else ["-g0"]
    dbg_nvcc = ["-g", "-lineinfo"] if debug else []
    return {"cxx": ["-O3", *dbg_cxx, token], "nvcc": ["-O3", *dbg_nvcc, token, *gencode_flags(archs)]}


def link_args(debug: bool | None = None) -> list[str]:
    if debug is None:
        debug = os.environ.get("RGK_DEBUG") == "1"
    return [] if debug else ["-Wl,--strip-debug"]
