"""Build flags of the rgk._C CUDA extension, and a JIT build of it for source checkouts.

`setup.py` reads `sources()` and `compile_args()` from this file (without importing rgk),
so the pip build and the JIT build compile the same files with the same flags.
`load()` compiles csrc/ with `torch.utils.cpp_extension.load` into a cache directory
(RGK_JIT_DIR, default ~/.cache/rgk/jit/<torch>-<cuda>-<archs>) and imports the result;
ninja rebuilds only what changed.  `rgk.ops._backend.cuda_ext()` uses it when the
installed rgk._C is missing and RGK_JIT=1.

RGK_CUDA_ARCHS  semicolon list of compute capabilities, default "9.0a" (e.g. "8.0;9.0a").
"""
from __future__ import annotations

import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def archs() -> list[str]:
    return [a.strip() for a in os.environ.get("RGK_CUDA_ARCHS", "9.0a").split(";") if a.strip()]


def sources(root: str = REPO) -> list[str]:
    """The kernel files (CUDA headers only) and the torch binding, relative to `root` if given."""
    csrc = os.path.join(root, "csrc")
    return sorted(glob.glob(os.path.join(csrc, "*.cu"))) + sorted(glob.glob(os.path.join(csrc, "*.cpp")))


def compile_args() -> dict[str, list[str]]:
    """Compiler flags.  No -std flag: torch's build adds the standard its headers need."""
    gencode = []
    for a in archs():
        num = a.replace(".", "")
        gencode.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return {"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo", *gencode]}


def load(verbose: bool = False):
    """Compile (or reuse) the extension from this checkout's csrc/ and return the module."""
    import torch
    from torch.utils.cpp_extension import load as cpp_load

    srcs = sources()
    if not srcs:
        raise RuntimeError(f"rgk JIT build: no csrc/*.cu sources under {REPO} (needs a source checkout)")
    tag = f"torch{torch.__version__}-cuda{torch.version.cuda}-{'_'.join(archs())}".replace("+", "_")
    build_dir = os.environ.get("RGK_JIT_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "rgk", "jit", tag)
    os.makedirs(build_dir, exist_ok=True)
    flags = compile_args()
    return cpp_load(name="rgk_C", sources=srcs, extra_cflags=flags["cxx"], extra_cuda_cflags=flags["nvcc"],
                    extra_include_paths=[os.path.join(REPO, "csrc")], build_directory=build_dir, verbose=verbose)
