"""Build rgk; on CUDA machines also build its CUDA library (rgk._rgk_cuda, loaded as rgk._C)
from csrc/.  Install with `pip install --no-build-isolation .` (or `-e .`, or the sdist), so
the library is built against the torch you run.

Environment switches:
  TORCH_CUDA_ARCH_LIST  architectures in torch's syntax ("8.0;8.6;9.0a+PTX", names such as
                        "Ampere;Hopper"); default: the visible GPUs, or with no visible GPU
                        sm_80, 86, 89, 90a, the newer majors nvcc supports, and PTX
                        (rgk/ops/_build.py).  RGK_CUDA_ARCHS: deprecated alias (removed in 0.2)
  RGK_FORCE_CUDA=1      build the library even if torch sees no GPU (needs nvcc + CUDA torch)
  RGK_SKIP_CUDA=1       never build it (pure Python + Triton install)
  CUDA_HOME/CUDA_PATH   the toolkit; default: the toolkit behind the nvcc on PATH (wrappers
                        and symlinks resolved), checked for include/cuda_runtime.h
  RGK_DEBUG=1           debug information (-g, -lineinfo); release builds by default
  MAX_JOBS              parallel compile jobs (read by torch's ninja build)
Toolkit, architectures, sources and flags come from rgk/ops/_build.py, which the JIT build
(RGK_JIT=1) and `rgk doctor` use too.
"""
import importlib.util
import os
import sys
import time

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
# Triton kernels live in rgk/kernels (not a top-level `kernels/`: that name is the Hugging
# Face `kernels` package transformers imports, and a folder of that name in the checkout
# would shadow it whenever the checkout is on sys.path, e.g. under `python -m pytest`).
packages = find_packages(include=["rgk", "rgk.*"])
package_data = {"rgk": ["data/heads/*", "data/argre/*", "data/judges/*"]}


def _load_build():
    spec = importlib.util.spec_from_file_location("_rgk_build", os.path.join(HERE, "rgk", "ops", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _say(msg):
    print(f"rgk build: {msg}", file=sys.stderr, flush=True)


def _cuda_extensions():
    if os.environ.get("RGK_SKIP_CUDA") == "1":
        return [], {}
    force = os.environ.get("RGK_FORCE_CUDA") == "1"
    try:
        import torch
    except ImportError:
        if force:
            raise RuntimeError("RGK_FORCE_CUDA=1 but torch is not importable in the build environment; "
                               "install torch first and build with pip install --no-build-isolation")
        _say("torch is not importable here (an isolated build?): building the pure-Python package; for the "
             "CUDA library use pip install --no-build-isolation with your CUDA torch installed")
        return [], {}
    if torch.version.cuda is None:
        if force:
            raise RuntimeError(f"RGK_FORCE_CUDA=1 but torch {torch.__version__} is a CPU build; install a CUDA "
                               f"build of torch")
        return [], {}
    if not (force or torch.cuda.is_available()):
        return [], {}
    build = _load_build()
    try:
        cuda_home = build.find_cuda_home()
    except build.BuildConfigError as e:
        if force:
            raise
        _say(f"skipping the CUDA library: {e}")
        return [], {}
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported: set it first, and fix it
    # if something imported it before us
    os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension
    cpp_extension.CUDA_HOME = cuda_home
    visible = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    archs, src = build.build_archs(visible_caps=visible, nvcc_caps=build.nvcc_archs(build.nvcc_path(cuda_home)))
    _say(f"CUDA_HOME={cuda_home}; architectures ({src}): {', '.join(map(str, archs))}")
    sources = [os.path.relpath(p, HERE) for p in build.sources(HERE)]
    if not any(s.endswith(".cu") for s in sources):
        raise RuntimeError(f"csrc/: no CUDA sources under {HERE} (an incomplete source distribution?)")
    ext = cpp_extension.CUDAExtension(name="rgk._rgk_cuda", sources=sources, include_dirs=[os.path.join(HERE, "csrc")],
                                      extra_compile_args=build.compile_args(archs), extra_link_args=build.link_args())

    class _TimedBuild(cpp_extension.BuildExtension):
        def run(self):
            t0 = time.time()
            super().run()
            for e in self.extensions:
                path = self.get_ext_fullpath(e.name)
                if os.path.exists(path):
                    _say(f"built {e.name} in {time.time() - t0:.0f} s: {path} "
                         f"({os.path.getsize(path) / 2**20:.1f} MiB)")

    return [ext], {"build_ext": _TimedBuild}


ext_modules, cmdclass = _cuda_extensions()
setup(packages=packages, package_data=package_data, ext_modules=ext_modules, cmdclass=cmdclass)
