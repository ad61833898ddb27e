"""Build rgk; on CUDA machines also build the rgk._C extension from csrc/.

Environment switches:
  RGK_FORCE_CUDA=1   build the extension even if torch sees no GPU (needs nvcc + CUDA torch)
  RGK_SKIP_CUDA=1    never build it (pure Python + Triton install)
  RGK_CUDA_ARCHS     semicolon list of archs, default "9.0a" (e.g. "8.0;9.0a")
  MAX_JOBS           parallel compile jobs (read by torch's ninja build)
Sources and flags come from rgk/ops/_jit.py, which the JIT build (RGK_JIT=1) uses too.
"""
import importlib.util
import os

from setuptools import find_packages, setup

# Triton kernels live in rgk/kernels (not a top-level `kernels/`: that name is the Hugging
# Face `kernels` package transformers imports, and a folder of that name in the checkout
# would shadow it whenever the checkout is on sys.path, e.g. under `python -m pytest`).
packages = find_packages(include=["rgk", "rgk.*"])
package_data = {"rgk": ["data/heads/*", "data/argre/*", "data/judges/*"]}


def _cuda_extensions():
    if os.environ.get("RGK_SKIP_CUDA") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    force = os.environ.get("RGK_FORCE_CUDA") == "1"
    have_cuda = CUDA_HOME is not None and torch.version.cuda is not None
    if not have_cuda:
        if force:
            raise RuntimeError("RGK_FORCE_CUDA=1 but torch has no CUDA build or CUDA_HOME is not set")
        return [], {}
    if not (force or torch.cuda.is_available()):
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("_rgk_build", os.path.join(here, "rgk", "ops", "_jit.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    sources = [os.path.relpath(p, here) for p in build.sources(here)]
    ext = CUDAExtension(name="rgk._C", sources=sources, include_dirs=[os.path.join(here, "csrc")],
                        extra_compile_args=build.compile_args())
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extensions()
setup(packages=packages, package_data=package_data,
      include_package_data=True, ext_modules=ext_modules, cmdclass=cmdclass)
