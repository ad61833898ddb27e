"""Dispatch safety without a GPU: the fallback on a device the CUDA library has no code for
(faked capability), the first-use self-test that disables a backend which disagrees with
the reference (faked on CPU with the Triton interpreter), the library's loader, and
`rgk doctor` on a CPU-only machine."""
from __future__ import annotations

import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

import rgk.ops as ops
from rgk.ops import _backend, _selftest, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean_state(monkeypatch):
    monkeypatch.setattr(_backend, "_SERVES", {})
    monkeypatch.setattr(_backend, "_DISABLED", set())
    monkeypatch.setattr(_backend, "SELFTEST_RESULTS", {})
    monkeypatch.setattr(_selftest, "DETAILS", {})
    monkeypatch.delenv("RGK_BACKEND", raising=False)
    monkeypatch.delenv("RGK_SELFTEST", raising=False)


def _fake_gpu(monkeypatch, cap, token="sm90a", name="NVIDIA A10"):
    lib = types.SimpleNamespace(cuda_arch_list=lambda: token)
    monkeypatch.setattr(_backend, "cuda_ext", lambda: lib)
    monkeypatch.setattr(_backend, "triton_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: cap)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: name)


# ----------------------------------------------------------------------------- unsupported capability

def test_a_device_the_library_cannot_serve_falls_back_to_triton_with_one_warning(monkeypatch, clean_state):
    _fake_gpu(monkeypatch, (8, 6))
    dev = torch.device("cuda", 0)
    with pytest.warns(UserWarning) as rec:
        assert _backend.choose(dev) == "triton"
    msgs = [str(w.message) for w in rec if "no code for" in str(w.message)]
    assert len(msgs) == 1
    assert "cuda:0 (NVIDIA A10, compute capability 8.6)" in msgs[0] and "sm_90a" in msgs[0]
    assert 'TORCH_CUDA_ARCH_LIST="8.6"' in msgs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # once per device: no second warning
        assert _backend.choose(dev) == "triton"
        monkeypatch.setenv("RGK_SELFTEST", "0")
        assert _backend.route("topk_logprobs", dev, B=2, V=100, k=4, dtype=torch.float32) == "triton"
    # asked for by name, it is an error naming the archs, not "no kernel image" later
    monkeypatch.setenv("RGK_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match=r"RGK_BACKEND=cuda but the rgk._C extension has no code for cuda:0 "
                                           r"\(built for sm_90a\)"):
        _backend.choose(dev)


@pytest.mark.parametrize("cap,token,want", [((9, 0), "sm90a", "cuda"), ((8, 9), "sm80_sm86", "cuda"),
                                            ((12, 0), "sm80_sm90a_ptx90", "cuda"), ((12, 0), "sm80_sm90a", "triton"),
                                            ((8, 0), "unknown", "cuda")])
def test_capability_routing(monkeypatch, clean_state, cap, token, want):
    _fake_gpu(monkeypatch, cap, token)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _backend.choose(torch.device("cuda", 0)) == want


# ----------------------------------------------------------------------------- self-test

@pytest.fixture
def interpreted_triton(monkeypatch, clean_state):
    if not _backend.triton_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs triton and TRITON_INTERPRET=1 (set by conftest)")
    monkeypatch.setenv("RGK_BACKEND", "triton")
    monkeypatch.setattr(_backend, "SELFTEST_DEVICE_TYPES", ("cuda", "cpu"))   # self-test the interpreter


@pytest.mark.parametrize("op", _selftest.OPS)
def test_selftest_cases_pass_on_agreeing_backends_and_fail_on_wrong_ones(op, interpreted_triton, monkeypatch):
    cpu = torch.device("cpu")
    ok, detail = _selftest.run_case(op, "triton", cpu, torch.float32)
    assert ok, detail
    assert _selftest.run_case(op, "torch", cpu, torch.float32)[0]
    # a backend off by a little more than the tolerance, or raising, fails
    mod = {"topk_logprobs": "rgk.kernels.topk_logprobs", "fork_attention": "rgk.kernels.fork_attention",
           "reward_select": "rgk.kernels.reward_select", "argre_refine": "rgk.kernels.argre_refine"}[op]
    fn = f"{op}_triton"
    real = getattr(__import__(mod, fromlist=[fn]), fn)

    def off(*a, **kw):
        out = real(*a, **kw)
        if op == "topk_logprobs":
            return out[0] + 1e-3, out[1]
        if op == "reward_select":
            return out[0], out[1], out[2] + 0.05, out[3]
        return out * 1.06 + 0.02

    monkeypatch.setattr(sys.modules[mod], fn, off)
    ok, detail = _selftest.run_case(op, "triton", cpu, torch.float32)
    assert not ok, detail

    def boom(*a, **kw):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(sys.modules[mod], fn, boom)
    ok, detail = _selftest.run_case(op, "triton", cpu, torch.float32)
    assert not ok and "no kernel image" in detail


def test_a_disagreeing_backend_is_disabled_once_with_one_warning(interpreted_triton, monkeypatch):
    import rgk.kernels.topk_logprobs as tk
    real = tk.topk_logprobs_triton
    calls = []

    def wrong(logits, k):
        calls.append(tuple(logits.shape))
        lp, ids = real(logits, k)
        return lp, ids.flip(-1)            # right values, wrong order

    monkeypatch.setattr(tk, "topk_logprobs_triton", wrong)
    x = torch.randn(4, 90, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match=r"rgk self-test: topk_logprobs on the triton backend disagrees with the "
                                         r"reference on cpu \(float32\): ids differ.*disabled on cpu"):
        lp, ids = ops.topk_logprobs(x, 5)
    want = reference.topk_logprobs(x, 5)
    assert torch.equal(ids, want[1]) and torch.equal(lp, want[0])     # the reference answered
    assert calls == [(3, 67)]                                         # only the self-test's input reached it
    assert ("triton", torch.device("cpu")) in _backend._DISABLED
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.topk_logprobs(x, 5)                                       # no second warning, no second test
        assert _backend.choose("cpu") == "torch"
    assert calls == [(3, 67)]


def test_an_agreeing_backend_is_tested_once_per_op_and_dtype(interpreted_triton, monkeypatch):
    import rgk.kernels.topk_logprobs as tk
    real = tk.topk_logprobs_triton
    calls = []
    monkeypatch.setattr(tk, "topk_logprobs_triton", lambda lg, k: calls.append(tuple(lg.shape)) or real(lg, k))
    x = torch.randn(2, 40)
    for _ in range(3):
        ops.topk_logprobs(x, 3)
    assert calls == [(3, 67), (2, 40), (2, 40), (2, 40)]
    assert _backend.SELFTEST_RESULTS == {("topk_logprobs", "triton", torch.device("cpu"), torch.float32): True}


def test_selftest_off_and_deferred_while_tracing(interpreted_triton, monkeypatch):
    monkeypatch.setenv("RGK_SELFTEST", "0")
    ops.topk_logprobs(torch.randn(2, 40), 3)
    assert _backend.SELFTEST_RESULTS == {}
    monkeypatch.delenv("RGK_SELFTEST")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _backend.route("topk_logprobs", torch.device("cpu"), B=2, V=40, k=3, dtype=torch.float32) == "triton"
    assert _backend.SELFTEST_RESULTS == {}                           # waits for an eager call
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    _backend.route("topk_logprobs", torch.device("cpu"), B=2, V=40, k=3, dtype=torch.float32)
    assert list(_backend.SELFTEST_RESULTS.values()) == [True]


def test_the_reference_backend_is_never_self_tested(clean_state, monkeypatch):
    monkeypatch.setattr(_backend, "SELFTEST_DEVICE_TYPES", ("cuda", "cpu"))
    ops.topk_logprobs(torch.randn(2, 40), 3)
    assert _backend.SELFTEST_RESULTS == {}


# ----------------------------------------------------------------------------- loader, doctor

def test_the_loader_without_a_built_library():
    code = ("import importlib\n"
            "try:\n    import rgk._C\nexcept ModuleNotFoundError as e:\n    print('missing', e.name)\n"
            "from rgk.ops import _backend\nimport warnings\nwarnings.simplefilter('error')\n"
            "print(_backend.cuda_ext(), _backend.ext_archs())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    if "missing" not in p.stdout:
        pytest.skip("the CUDA library is built here")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["missing", "rgk._rgk_cuda", "None", "None"]


def test_doctor_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    env = {k: v for k, v in os.environ.items() if k not in ("RGK_BACKEND", "RGK_SELFTEST")}
    p = subprocess.run([sys.executable, "-m", "rgk.doctor"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=env)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for want in (f"torch           {torch.__version__}", "CUDA driver", "GPUs            none visible",
                 "rgk._C          not built", "ops on cpu (RGK_BACKEND=auto, RGK_SELFTEST=1)"):
        assert want in out, out
    if _backend.triton_available():
        assert "triton          " in out and "interpreter" in out
    for op in _selftest.OPS:
        for dt in ("float32", "bfloat16", "float16"):
            assert f"  {op:<15} {dt:<9} torch    - (the reference)" in out, out
    p = subprocess.run([sys.executable, "-m", "rgk", "doctor", "--device", "cuda:0"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert p.stderr.startswith("rgk: error: --device: cuda:0 was asked for, but torch sees no CUDA device")


def test_doctor_reports_a_built_library(monkeypatch, clean_state):
    _fake_gpu(monkeypatch, (9, 0), "sm80_sm90a_ptx90")
    from rgk import doctor
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doctor._library(lines, torch.device("cuda", 0))
    text = "\n".join(lines)
    assert "built for     sm_80, sm_90a, PTX compute_90" in text and "serves cuda:0: yes" in text
