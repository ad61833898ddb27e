"""csrc/: every CUDA kernel file compiles with nvcc alone (no torch headers) for sm_90a, with
warnings as errors and the same -D flags torch's extension build adds; the torch binding
declares the schemas that rgk.ops dispatches to, and bindings.cpp itself compiles (syntax and
types, -Wall -Wextra -Werror) against the installed torch's headers plus the CUDA toolkit's.

The CPU torch wheel lacks the CUDA build's generated config header
c10/cuda/impl/cuda_cmake_macros.h (the only one bindings.cpp needs, found by trying); the
binding test writes a stub of it into a temporary folder.  Headers such as
ATen/cuda/CUDAContext.h also need cuBLAS/cuSPARSE/cuSOLVER headers that a plain toolkit may
not carry, so bindings.cpp must not include them (checked below).

The kernel files compile in parallel (one nvcc per file); on two cores this takes about a
minute, the binding about 20 s.  Skipped when nvcc (or, for the binding, g++) is missing."""
import inspect
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import time
from multiprocessing.pool import ThreadPool

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
KERNELS = sorted(f for f in os.listdir(CSRC) if f.endswith(".cu"))
# what torch.utils.cpp_extension passes to nvcc for every .cu file of an extension
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr"]
# the only headers a kernel file may include besides its csrc/ neighbours
ALLOWED = re.compile(r"^(cuda_runtime(_api)?\.h|cuda_bf16\.h|cuda_fp16\.h|cub/.+|cooperative_groups(/.+)?|mma\.h"
                     r"|c(stdint|stddef|stdio|stdlib|math|float|limits|string)|type_traits|utility|limits)$")
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)

SCHEMAS = [
    "topk_logprobs(Tensor logits, int k) -> (Tensor, Tensor)",
    "fork_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor k_new, Tensor v_new, Tensor cache_start, "
    "Tensor cache_end, float scale, int max_valid_len=0) -> Tensor",
    "reward_select(Tensor hidden, Tensor logp, Tensor ids, Tensor w1, Tensor b1, Tensor? w2, Tensor? b2, "
    "float reward_weight, float temperature, Tensor? uniform) -> (Tensor, Tensor, Tensor, Tensor)",
    "argre_refine(Tensor h, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor direction, float r_plus, "
    "float beta, int n_steps, float step_size) -> Tensor",
]


def includes(path, seen=None):
    """(kind, name) of every include reached from `path`, following csrc/-local headers."""
    seen = set() if seen is None else seen
    out = []
    with open(path) as f:
        text = f.read()
    for kind, name in INCLUDE.findall(text):
        local = os.path.join(CSRC, name)
        if kind == '"' and os.path.exists(local):
            if local not in seen:
                seen.add(local)
                out += includes(local, seen)
        else:
            out.append((kind, name))
    return out


def test_kernel_files_are_there():
    assert {"topk_logprobs.cu", "fork_attention.cu", "reward_select.cu", "argre_refine.cu"} <= set(KERNELS)


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_file_includes_cuda_headers_only(name):
    bad = [n for _, n in includes(os.path.join(CSRC, name)) if not ALLOWED.match(n)]
    assert not bad, f"{name} includes {bad}: kernel files may include CUDA headers and csrc/ headers only"
    assert not [n for _, n in includes(os.path.join(CSRC, name)) if re.match(r"(torch|ATen|c10|pybind11)/|Python\.h", n)]


def test_binding_declares_the_dispatched_schemas():
    with open(os.path.join(CSRC, "bindings.cpp")) as f:
        text = re.sub(r'"\s*\n\s*"', "", f.read())  # join adjacent string literals
    for schema in SCHEMAS:
        assert f'm.def("{schema}")' in text, f"bindings.cpp lacks the schema {schema!r}"
        op = schema.split("(")[0]
        assert f'm.impl("{op}", &{op}_cuda)' in text
    with open(os.path.join(ROOT, "rgk", "ops", "_fake.py")) as f:
        fake = f.read()
    for schema in SCHEMAS:
        assert f'register_fake("rgk::{schema.split("(")[0]}")' in fake


def test_kernels_compile_with_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH (install the CUDA toolkit to compile-check csrc/)")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        def compile_one(name):
            cmd = [nvcc, "-c", "-std=c++17", "-O3", *TORCH_NVCC_FLAGS, "-Werror", "all-warnings",
                   "-gencode=arch=compute_90a,code=sm_90a",
                   os.path.join(CSRC, name), "-o", os.path.join(tmp, name + ".o")]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=CSRC)
            return name, p.returncode, p.stdout + p.stderr

        with ThreadPool(len(KERNELS)) as pool:
            results = pool.map(compile_one, KERNELS)
    failed = [f"--- {name} (exit {rc})\n{log}" for name, rc, log in results if rc != 0]
    assert not failed, "nvcc failed:\n" + "\n".join(failed)
    elapsed = time.time() - t0
    assert elapsed < 180, f"compiling csrc/ took {elapsed:.0f} s (budget 180 s)"


# ----------------------------------------------------------------------------- the binding
# Generated by a CUDA build of torch, absent from the CPU wheel: (path, content of our stub).
CUDA_CONFIG_STUBS = {
    "c10/cuda/impl/cuda_cmake_macros.h": "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n",
}
# Headers that drag in CUDA math libraries' headers (cusparse.h, cublas_v2.h, cusolverDn.h).
HEAVY = re.compile(r"^ATen/cuda/(CUDAContext|CUDAContextLight|CUDABlas|CUDASparse)\.h$|^(cublas|cusparse|cusolver)")


def test_binding_includes_no_cuda_library_headers():
    with open(os.path.join(CSRC, "bindings.cpp")) as f:
        names = [n for _, n in INCLUDE.findall(f.read())]
    bad = [n for n in names if HEAVY.match(n)]
    assert not bad, f"bindings.cpp includes {bad}: use c10/cuda/CUDAStream.h and the CUDA runtime instead"
    assert "c10/cuda/CUDAStream.h" in names


def _cuda_include_dirs(nvcc):
    """The toolkit's include folders, as nvcc itself reports them (nvcc may be a wrapper script)."""
    p = subprocess.run([nvcc, "-x", "cu", "-E", os.devnull, "-o", os.devnull, "--dryrun"], capture_output=True,
                       text=True)
    dirs = []
    for line in (p.stdout + p.stderr).splitlines():
        if "INCLUDES=" in line:
            for inc, sys_inc in re.findall(r'"-I([^"]+)"|"-isystem"\s+"([^"]+)"', line):
                dirs.append(inc or sys_inc)
    return [d for d in dirs if os.path.isdir(d)]


def _torch_cxx_std():
    """The -std=c++NN that torch.utils.cpp_extension passes for this torch (17 or 20)."""
    from torch.utils import cpp_extension
    found = [int(n) for n in re.findall(r"-std=c\+\+(\d+)", inspect.getsource(cpp_extension))]
    return max(found) if found else 17


def test_binding_compiles_against_torch_headers():
    nvcc, cxx = shutil.which("nvcc"), shutil.which("g++") or shutil.which("c++")
    if nvcc is None or cxx is None:
        pytest.skip("needs nvcc (for the CUDA include folder) and g++")
    from torch.utils import cpp_extension
    torch_inc = cpp_extension.include_paths()
    py_inc = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(py_inc, "Python.h")):
        pytest.skip(f"Python.h not found in {py_inc}")
    cuda_inc = _cuda_include_dirs(nvcc)
    assert any(os.path.exists(os.path.join(d, "cuda_runtime.h")) for d in cuda_inc), cuda_inc
    t0 = time.time()
    with tempfile.TemporaryDirectory() as stub:
        for rel, text in CUDA_CONFIG_STUBS.items():
            if not any(os.path.exists(os.path.join(d, rel)) for d in torch_inc):  # a CUDA wheel has it
                os.makedirs(os.path.dirname(os.path.join(stub, rel)), exist_ok=True)
                with open(os.path.join(stub, rel), "w") as f:
                    f.write(text)
        inc = []
        for d in [stub, *torch_inc, *cuda_inc, py_inc]:  # system folders: warnings of ours only
            inc += ["-isystem", d]
        cmd = [cxx, f"-std=c++{_torch_cxx_std()}", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *inc,
               "-I", CSRC, "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
               os.path.join(CSRC, "bindings.cpp")]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=CSRC)
    assert p.returncode == 0, "bindings.cpp does not compile:\n" + " ".join(cmd) + "\n" + (p.stdout + p.stderr)[-6000:]
    elapsed = time.time() - t0
    assert elapsed < 120, f"compiling bindings.cpp took {elapsed:.0f} s (budget 120 s)"
