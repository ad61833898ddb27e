"""A JIT build of the rgk CUDA library for source checkouts (RGK_JIT=1).

`load()` compiles csrc/ with `torch.utils.cpp_extension.load` into a cache directory
(RGK_JIT_DIR, default ~/.cache/rgk/jit/<torch>-<cuda>-<archs>) and imports the result;
ninja rebuilds only what changed.  `rgk.ops._backend.cuda_ext()` uses it when the
installed rgk._C is missing and RGK_JIT=1.  Toolkit, architectures, sources and flags come
from `rgk.ops._build`, as for `pip install` (setup.py), so both builds compile the same
files the same way; the visible GPUs' capabilities are the default architectures here.
"""
from __future__ import annotations

import os

from . import _build

REPO = _build.REPO


def load(verbose: bool = False):
    """Compile (or reuse) the library from this checkout's csrc/ and return the module."""
    os.environ["CUDA_HOME"] = _build.find_cuda_home()   # before cpp_extension reads it
    import torch
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    srcs = _build.sources()
    if not srcs:
        raise RuntimeError(f"rgk JIT build: no csrc/*.cu sources under {REPO} (needs a source checkout)")
    visible = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    archs, _ = _build.build_archs(visible_caps=visible,
                                  nvcc_caps=_build.nvcc_archs(_build.nvcc_path(os.environ["CUDA_HOME"])))
    token = _build.arch_token(archs)
    tag = f"torch{torch.__version__}-cuda{torch.version.cuda}-{token}".replace("+", "_")
    build_dir = os.environ.get("RGK_JIT_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "rgk", "jit", tag)
    os.makedirs(build_dir, exist_ok=True)
    flags = _build.compile_args(archs)
    return cpp_extension.load(name="rgk_C", sources=srcs, extra_cflags=flags["cxx"], extra_cuda_cflags=flags["nvcc"],
                              extra_ldflags=_build.link_args(), extra_include_paths=[os.path.join(REPO, "csrc")],
                              build_directory=build_dir, verbose=verbose)
