"""rgk._C: the loader of rgk's compiled CUDA library (`rgk._rgk_cuda`, built from csrc/).

Importing it, in any order with torch, makes `torch.ops.rgk.*` usable: it imports torch first
(the library links against libc10/libtorch, which torch's import loads), then the library
(whose TORCH_LIBRARY block defines the ops and their CUDA kernels), then the ops' fake
kernels (`rgk.ops._fake`), so `torch.ops.rgk.*` also trace under torch.compile and
FakeTensorMode without going through `rgk.ops`.

ModuleNotFoundError when the library was not built (a CPU-only or RGK_SKIP_CUDA install).

ARCHS: the architectures compiled in (`rgk.ops._build.arch_token` form, e.g.
"sm80_sm90_ptx90"); the pybind functions (`topk_logprobs`, ...) call the same CUDA
implementations without the dispatcher.
"""
import importlib

import torch  # noqa: F401  (must precede the library: it loads libc10 and libtorch)

_lib = importlib.import_module("rgk._rgk_cuda")   # ModuleNotFoundError (name "rgk._rgk_cuda") if not built
from rgk.ops import _fake  # noqa: E402,F401  (registers the fake kernels)

ARCHS: str = _lib.cuda_arch_list()
topk_logprobs = _lib.topk_logprobs
fork_attention = _lib.fork_attention
reward_select = _lib.reward_select
argre_refine = _lib.argre_refine
cuda_arch_list = _lib.cuda_arch_list
LIBRARY: str = _lib.__file__
