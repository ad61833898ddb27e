"""Distributions and the real CUDA build.

- The sdist (`python -m build --sdist`) carries every file a build needs: csrc/ (all of it),
  setup.py, the build configuration, the shipped data; the wheel carries the package and its
  data.
- CI builds the real thing: where a CUDA build of torch can be installed without a network
  (this machine kind keeps torch 2.14.1+cu130 in a local package index), the sdist is
  installed into a fresh venv with RGK_FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST="8.0;9.0" and no
  CUDA_HOME set by hand; the library must carry sm_80 and sm_90 code (cuobjdump
  --list-elf), import in either order with torch, trace its fakes under FakeTensorMode, and
  declare the schemas rgk.ops calls with.  Its figures (build time, archs, size) are printed
  (pytest -s) and kept in $RGK_BUILD_REPORT when set.  Skipped, with the reason as a
  warning, where no CUDA torch can be had offline or nvcc is missing.

RGK_CUDA_TORCH (default "torch==2.14.1") names the CUDA torch to install; the package
indexes used are the file:// ones in pip's configuration (never the network).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_TORCH = os.environ.get("RGK_CUDA_TORCH", "torch==2.14.1")


def _tracked(*parts):
    p = subprocess.run(["git", "ls-files", *parts], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip("not a git checkout")
    return {line for line in p.stdout.splitlines() if line}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    pytest.importorskip("build", reason="the `build` package (installed by scripts/setup.sh)")
    out = tmp_path_factory.mktemp("sdist")
    p = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (path,) = out.glob("rgk-*.tar.gz")
    return path


def test_sdist_carries_every_file_a_build_needs(sdist):
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    need = _tracked("csrc", "rgk") | {"setup.py", "pyproject.toml", "README.md", "MANIFEST.in"}
    missing = sorted(need - names)
    assert not missing, f"the sdist lacks {missing}"
    assert {"csrc/bindings.cpp", "csrc/rgk_common.cuh", "csrc/rgk_kernels.h", "rgk/ops/_build.py",
            "rgk/_C.py"} <= names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_wheel_carries_the_package_and_its_data(tmp_path):
    pytest.importorskip("build", reason="the `build` package (installed by scripts/setup.sh)")
    env = dict(os.environ, RGK_SKIP_CUDA="1")
    p = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (whl,) = tmp_path.glob("rgk-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    need = {f for f in _tracked("rgk") if f.endswith(".py") or "/data/" in f}
    assert not sorted(need - names), sorted(need - names)
    meta = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(whl).read(meta).decode()
    assert "License-Expression: Apache-2.0" in text


# ----------------------------------------------------------------------------- the real build

def _local_indexes() -> list[str]:
    """file:// package indexes from pip's configuration."""
    p = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    urls = []
    for line in p.stdout.splitlines():
        if "index-url" in line:
            urls += re.findall(r"file://[^\s'\"]+", line)
    return [u for u in urls if os.path.isdir(u[len("file://"):])]


def _skip(reason: str):
    warnings.warn(f"test_cuda_build: the real CUDA build was not run: {reason}")
    pytest.skip(reason)


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


CHECK = r"""
import json, os, subprocess, sys
import rgk._C as C          # first: the loader imports torch itself
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from rgk.ops._schemas import SCHEMAS
out = {"archs": C.ARCHS, "library": C.LIBRARY, "bytes": os.path.getsize(C.LIBRARY), "torch": torch.__version__}
out["schemas"] = {op: str(getattr(torch.ops.rgk, op).default._schema) for op in SCHEMAS}
with FakeTensorMode():
    f = dict(device="cuda")
    lp, ids = torch.ops.rgk.topk_logprobs(torch.empty(4, 100, **f), 5)
    q = torch.empty(2, 4, 3, 64, **f, dtype=torch.bfloat16)
    kc = torch.empty(2, 2, 20, 64, **f, dtype=torch.bfloat16)
    kn = torch.empty(2, 2, 3, 64, **f, dtype=torch.bfloat16)
    se = torch.empty(2, **f, dtype=torch.int32)
    o = torch.ops.rgk.fork_attention(q, kc, kc, kn, kn, se, se, 0.125, 0)
    h = torch.empty(2, 3, 64, **f)
    tok, idx, sc, rw = torch.ops.rgk.reward_select(h, torch.empty(2, 3, **f), torch.empty(2, 3, **f, dtype=torch.int64),
                                                   torch.empty(8, 64, **f), torch.empty(8, **f), torch.empty(1, 8, **f),
                                                   torch.empty(1, **f), 1.0, 0.0, None)
    r = torch.ops.rgk.argre_refine(torch.empty(2, 64, **f), torch.empty(8, 64, **f), torch.empty(8, **f),
                                   torch.empty(1, 8, **f), torch.empty(1, **f), torch.empty(64, **f), 1.0, 1.0, 2, 0.5)
out["fakes"] = [list(lp.shape), str(ids.dtype), list(o.shape), str(o.dtype), list(tok.shape), list(sc.shape),
                list(r.shape)]
from rgk.doctor import report
out["doctor"] = report()
print("RESULT" + json.dumps(out))
"""


def test_sdist_builds_the_cuda_library_in_a_fresh_venv(sdist, tmp_path):
    from rgk.ops import _build
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        _skip("no nvcc on PATH and no CUDA_HOME")
    indexes = _local_indexes()
    if not indexes:
        _skip("pip's configuration names no local (file://) package index to take a CUDA torch from")
    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    idx = ["--index-url", indexes[0], *[a for u in indexes[1:] for a in ("--extra-index-url", u)]]
    t0 = time.time()
    if not _install_offline(py, idx):
        _skip(f"{CUDA_TORCH} (a CUDA build) cannot be installed from the local indexes {indexes}")
    t_torch = time.time() - t0
    cuda = _run([str(py), "-c", "import torch; print(torch.version.cuda or '')"]).stdout.strip()
    if not cuda:
        _skip(f"{CUDA_TORCH} from the local indexes is a CPU build")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "RGK_CUDA_ARCHS")}
    env.update(RGK_FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST="8.0;9.0", MAX_JOBS=str(os.cpu_count() or 2),
               PIP_NO_INDEX="1")
    t0 = time.time()
    p = _run([str(py), "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-v", str(sdist)],
             env=env, timeout=1800, cwd=tmp_path)
    t_build = time.time() - t0
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "architectures (TORCH_CUDA_ARCH_LIST): 8.0, 9.0" in log, log[-4000:]
    check = tmp_path / "check.py"
    check.write_text(CHECK)
    p = _run([str(py), str(check)], cwd=tmp_path, timeout=600, env={**os.environ, "RGK_SELFTEST": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(p.stdout.split("RESULT", 1)[1])
    assert res["archs"] == "sm80_sm90"
    from rgk.ops._schemas import SCHEMAS
    assert res["schemas"] == {op: f"rgk::{s}" for op, s in SCHEMAS.items()}
    assert res["fakes"] == [[4, 5], "torch.int64", [2, 4, 3, 64], "torch.bfloat16", [2], [2, 3], [2, 64]]
    assert "built for     sm_80, sm_90" in res["doctor"], res["doctor"]
    # the machine code in the library, as cuobjdump lists it
    cuobjdump = _cuobjdump(venv)
    if cuobjdump is None:
        _skip("no cuobjdump (PATH, the toolkit, Triton's copy) to list the library's machine code")
    elf = _run([cuobjdump, "--list-elf", res["library"]]).stdout
    found = set(re.findall(r"\.(sm_\d+a?)\.cubin", elf))
    assert found == {"sm_80", "sm_90"}, elf[-2000:]
    figures = dict(torch=res["torch"], torch_install_s=round(t_torch), build_s=round(t_build),
                   archs=_build.describe_token(res["archs"]), cubins=sorted(found),
                   library_mib=round(res["bytes"] / 2**20, 1), cpus=os.cpu_count())
    print("CUDA build:", json.dumps(figures))
    if os.environ.get("RGK_BUILD_REPORT"):
        Path(os.environ["RGK_BUILD_REPORT"]).write_text(json.dumps(figures, indent=1) + "\n")
    assert res["bytes"] < 20 * 2**20, f"the release library is {res['bytes'] / 2**20:.1f} MiB (debug info left in?)"


REQS = r"""
import importlib.metadata as m
from pip._vendor.packaging.requirements import Requirement
for r in m.requires("torch") or []:
    req = Requirement(r)
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        print(str(req).split(";")[0])
"""


def _install_offline(py: Path, idx: list[str]) -> bool:
    """CUDA torch into the venv from local indexes only.  Where one of its dependencies is not
    there (cuda-bindings, on this machine kind: torch does not need it to import), torch goes
    in without dependencies and each dependency that is there follows; torch must import."""
    pip = [str(py), "-m", "pip", "install", "-q", "--no-compile", *idx]   # no .pyc: a quarter of the time
    if _run([*pip, CUDA_TORCH, "setuptools>=77", "ninja"], timeout=1200).returncode != 0:
        if _run([*pip, "--no-deps", CUDA_TORCH], timeout=1200).returncode != 0:
            return False
        reqs = _run([str(py), "-c", REQS]).stdout.split("\n")
        for r in [r.strip() for r in reqs if r.strip()] + ["setuptools>=77", "ninja"]:
            _run([*pip, r], timeout=1200)
    return _run([str(py), "-c", "import torch"]).returncode == 0


def _cuobjdump(venv: Path) -> str | None:
    from rgk.ops import _build
    cands = [shutil.which("cuobjdump")]
    try:
        cands.append(os.path.join(_build.find_cuda_home(), "bin", "cuobjdump"))
    except _build.BuildConfigError:
        pass
    cands += [str(p) for p in venv.glob("lib/python*/site-packages/triton/backends/nvidia/bin/cuobjdump")]
    return next((c for c in cands if c and os.access(c, os.X_OK)), None)
