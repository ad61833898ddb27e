"""rgk.ops._limits.cuda_supports mirrors what the CUDA launchers refuse (csrc/rgk_kernels.h).

- its constants equal the RGK_* constants parsed from csrc/rgk_kernels.h, in both directions,
  and the kernel files use those constants (so header, kernels and Python cannot drift);
- the private numbers it copies from the kernel files (threads, chunk sizes, tile rows) equal
  the ones parsed from those files;
- representative shapes on each side of every limit give the documented answer;
- argument errors name the argument;
- where nvcc is on PATH, the C++ host-only rgk_*_supported functions (compiled with the kernel
  files into a small host program; they make no CUDA call, so no GPU is needed) give the same
  answers as the Python mirror on a few hundred shapes around the limits.
"""
import os
import random
import re
import shutil
import subprocess
import tempfile

import pytest

from rgk.ops import _limits
from rgk.ops._limits import cuda_supports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")


def _read(name):
    with open(os.path.join(CSRC, name)) as f:
        return f.read()


def header_constants():
    text = _read("rgk_kernels.h")
    found = dict(re.findall(r"^constexpr (?:int|int64_t) RGK_(\w+) = (\d+);", text, re.M))
    found.pop("SYNC_RESERVED")  # scratch layout, no limit
    return {k: int(v) for k, v in found.items()}


def test_constants_match_the_header():
    header = header_constants()
    mirrored = _limits.mirrored_constants()
    assert len(header) >= 12
    assert header == mirrored


@pytest.mark.parametrize("name,constants", [
    ("topk_logprobs.cu", ["TOPK_MAX_K", "TOPK_MAX_CHUNK", "TOPK_MAX_CANDIDATES", "MAX_GRID_X"]),
    ("fork_attention.cu", ["FORK_MAX_D", "FORK_MAX_SPLITS", "MAX_GRID_X"]),
    ("reward_select.cu", ["REWARD_MAX_K", "REWARD_UNITS_PER_BLOCK", "MAX_GRID_Y"]),
    ("argre_refine.cu", ["ARGRE_THREADS", "ARGRE_ROWS", "ARGRE_MIN_COLS", "ARGRE_MAX_COLS"]),
])
def test_kernel_files_use_the_header_limits(name, constants):
    text = _read(name)
    for c in constants:
        assert f"RGK_{c}" in text, f"{name} does not use RGK_{c}"


def test_private_numbers_match_the_kernel_files():
    topk = _read("topk_logprobs.cu")
    assert int(re.search(r"constexpr int kThreads = (\d+);", topk).group(1)) == _limits._TOPK_THREADS
    items = tuple(sorted(int(n) for n in re.findall(r"case (\d+): topk_logprobs_kernel<T, \1>", topk)))
    assert items == _limits._TOPK_ITEMS
    assert re.search(r"static_assert\(kThreads \* kMaxItems == RGK_TOPK_MAX_CHUNK", topk)
    assert int(re.search(r"constexpr int kMaxItems = (\d+);", topk).group(1)) == max(_limits._TOPK_ITEMS)
    fork = _read("fork_attention.cu")
    assert int(re.search(r"constexpr int kSimpleRows = (\d+);", fork).group(1)) == _limits._FORK_MIN_ROWS
    assert "B * Hkv * ceil_div(M, 16) > RGK_MAX_GRID_X" in fork
    argre = _read("argre_refine.cu")
    # the shared-memory formula the mirror restates
    assert "(a.m + 31) / 32 * 32 + 4" in argre
    assert "static_cast<size_t>(ds) * wp + static_cast<size_t>(R) * wp + static_cast<size_t>(ds) * R + red" in argre
    assert "cmax<size_t>(static_cast<size_t>(kThreads) * R, static_cast<size_t>(R) * (ub / 4))" in argre
    assert "(ceil_div(a.m, nblk) + 3) / 4 * 4" in argre


@pytest.mark.parametrize("shape,want", [
    (dict(B=1, V=49152, k=10), True),
    (dict(B=64, V=151936, k=64), True),
    (dict(B=8, V=49152, k=1, dtype="bfloat16"), True),
    (dict(B=0, V=100, k=5), True),
    (dict(B=1, V=8192 * 128, k=64), True),       # ceil(V / 8192) * k == 8192
    (dict(B=1, V=8192 * 128 + 1, k=64), False),  # one chunk more
    (dict(B=1, V=8192 * 819, k=10), True),
    (dict(B=1, V=8192 * 820, k=10), False),
    (dict(B=1, V=49152, k=65), False),
    (dict(B=1, V=49152, k=0), False),
    (dict(B=1, V=4, k=5), False),
    (dict(B=1, V=100, k=5, dtype="int64"), False),
])
def test_topk_logprobs(shape, want):
    assert cuda_supports("topk_logprobs", **shape) is want


@pytest.mark.parametrize("shape,want", [
    (dict(B=4, Hq=9, Hkv=3, K=10, D=64, L=2048), True),
    (dict(B=1, Hq=32, Hkv=8, K=8, D=128, L=131072), True),
    (dict(B=1, Hq=8, Hkv=8, K=4, D=256, L=16), True),
    (dict(B=1, Hq=8, Hkv=8, K=4, D=257, L=16), False),
    (dict(B=1, Hq=8, Hkv=3, K=4, D=64, L=16), False),
    (dict(B=1, Hq=8, Hkv=8, K=0, D=64, L=16), False),
    (dict(B=0, Hq=8, Hkv=8, K=4, D=64, L=0), True),
    (dict(B=2 ** 20, Hq=64, Hkv=1, K=64, D=64, L=16), False),  # B * Hq * K > int32
])
def test_fork_attention(shape, want):
    assert cuda_supports("fork_attention", **shape) is want


@pytest.mark.parametrize("shape,want", [
    (dict(B=64, K=10, d=2048, m=1024), True),
    (dict(B=1, K=10, d=576, m=1), True),                 # linear head
    (dict(B=1, K=10, d=576, m=1, mlp=True), True),
    (dict(B=1, K=10, d=576, m=2, mlp=False), False),    # a linear head has m == 1
    (dict(B=1, K=64, d=576, m=1024), True),
    (dict(B=1, K=65, d=576, m=1024), False),
    (dict(B=1, K=0, d=576, m=1024), False),
    (dict(B=1, K=4, d=8, m=64 * 65535), True),
    (dict(B=1, K=4, d=8, m=64 * 65535 + 1), False),
])
def test_reward_select(shape, want):
    assert cuda_supports("reward_select", **shape) is want


H200 = dict(sms=132, smem_per_block=232448)


@pytest.mark.parametrize("shape,want", [
    (dict(B=8, d=576, m=1024), True),
    (dict(B=1, d=2048, m=1024), True),
    (dict(B=0, d=576, m=1024), True),
    # d = 4096 needs ds >= 32 (128 blocks); with ds = 32, m = 1376 takes 230,016 bytes per block
    # and m = 1377 (one more 32-unit pitch step) 235,136 > 232,448: does not fit
    (dict(B=8, d=4096, m=1376), True),
    (dict(B=8, d=4096, m=1377), False),
    (dict(B=8, d=4096, m=100000), False),
])
def test_argre_refine(shape, want):
    assert cuda_supports("argre_refine", **shape, **H200) is want


def test_argre_smem_formula_by_hand():
    # B = 8 (R = 8), d = 576, m = 1024, ds = 8: wp = 1028, nblk = 72, ub = 16
    floats = 8 * 1028 + 8 * 1028 + 8 * 8 + max(256 * 8, 8 * 16 // 4)
    assert _limits.argre_smem_bytes(8, 576, 1024, 8) == 4 * floats
    assert _limits.argre_smem_bytes(8, 4096, 1376, 32) == 230016
    assert _limits.argre_smem_bytes(8, 4096, 1377, 32) == 235136


def test_argument_errors():
    with pytest.raises(ValueError, match="^op: "):
        cuda_supports("topk", B=1, V=2, k=1)
    with pytest.raises(TypeError, match="^k: "):
        cuda_supports("topk_logprobs", B=1, V=2)
    with pytest.raises(TypeError, match="^Vocab: "):
        cuda_supports("topk_logprobs", B=1, V=2, k=1, Vocab=3)
    with pytest.raises(TypeError, match="^k: "):
        cuda_supports("topk_logprobs", B=1, V=2, k=True)
    with pytest.raises(TypeError, match="^k: "):
        cuda_supports("topk_logprobs", B=1, V=2, k=1.0)
    np = pytest.importorskip("numpy")
    assert cuda_supports("topk_logprobs", B=np.int64(1), V=np.int32(100), k=np.int64(5)) is True
    torch = pytest.importorskip("torch")
    assert cuda_supports("topk_logprobs", B=torch.tensor(1), V=100, k=5, dtype=torch.bfloat16) is True
    assert cuda_supports("reward_select", B=1, K=3, d=8, m=4, hidden_dtype=torch.float16,
                         w1_dtype=torch.float32) is True


# ----------------------------------------------------------------- the C++ functions themselves
HOST_MAIN = r"""
#include <cstdio>
#include "rgk_kernels.h"
int main() {
  char op[8];
  long long a[7];
  while (std::scanf("%7s", op) == 1) {
    bool r = false;
    if (op[0] == 't') {
      for (int i = 0; i < 4; ++i) std::scanf("%lld", &a[i]);
      r = rgk_topk_logprobs_supported(a[0], a[1], static_cast<int>(a[2]), static_cast<RgkDType>(a[3]));
    } else if (op[0] == 'f') {
      for (int i = 0; i < 7; ++i) std::scanf("%lld", &a[i]);
      r = rgk_fork_attention_supported(a[0], a[1], a[2], a[3], a[4], a[5], static_cast<RgkDType>(a[6]));
    } else {
      for (int i = 0; i < 7; ++i) std::scanf("%lld", &a[i]);
      r = rgk_reward_select_supported(a[0], a[1], a[2], a[3], a[4] != 0, static_cast<RgkDType>(a[5]),
                                      static_cast<RgkDType>(a[6]));
    }
    std::printf("%d\n", r ? 1 : 0);
  }
  return 0;
}
"""
DT = ["float32", "bfloat16", "float16"]


def _cases():
    rng = random.Random(0)
    out = []
    for k in (0, 1, 2, 10, 63, 64, 65):
        for V in (1, 5, 64, 8192, 8193, 49152, 8192 * 128, 8192 * 128 + 1, 8192 * 819, 8192 * 820,
                  8192 * 8192, 8192 * 8192 + 1):
            out.append(("t", dict(B=rng.choice([0, 1, 64]), V=V, k=k, dtype=rng.randrange(3))))
    for _ in range(80):
        Hkv = rng.choice([1, 2, 3, 8])
        out.append(("f", dict(B=rng.choice([0, 1, 4, 2 ** 20]), Hq=Hkv * rng.choice([1, 3, 4]) + rng.choice([0, 0, 1]),
                              Hkv=Hkv, K=rng.choice([0, 1, 10, 64]), D=rng.choice([1, 63, 64, 128, 256, 257]),
                              L=rng.choice([0, 16, 4096]), dtype=rng.randrange(3))))
    for _ in range(80):
        mlp = rng.random() < 0.7
        out.append(("r", dict(B=rng.choice([0, 1, 64, 2 ** 26]), K=rng.choice([0, 1, 10, 64, 65]),
                              d=rng.choice([1, 576, 2048]), m=rng.choice([1, 2, 1024, 64 * 65535, 64 * 65535 + 1]),
                              mlp=int(mlp), hidden_dtype=rng.randrange(3), w1_dtype=rng.randrange(3))))
    return out


def test_cpp_supported_functions_agree():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    cases = _cases()
    with tempfile.TemporaryDirectory() as tmp:
        main = os.path.join(tmp, "main.cpp")
        with open(main, "w") as f:
            f.write(HOST_MAIN)
        exe = os.path.join(tmp, "supported")
        # PTX only (no ptxas): the device code just has to be there for the files to link
        cmd = [nvcc, "-std=c++17", "-O1", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
               "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr",
               "-gencode=arch=compute_90a,code=compute_90a", "-I", CSRC,
               *(os.path.join(CSRC, n) for n in ("topk_logprobs.cu", "fork_attention.cu", "reward_select.cu")),
               main, "-o", exe]
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        lines = []
        for kind, sh in cases:
            lines.append(kind + " " + " ".join(str(int(v)) for v in sh.values()))
        p = subprocess.run([exe], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        got = [line == "1" for line in p.stdout.split()]
    assert len(got) == len(cases)
    op = {"t": "topk_logprobs", "f": "fork_attention", "r": "reward_select"}
    mismatches = []
    for (kind, sh), cpp in zip(cases, got):
        kw = dict(sh)
        for key in ("dtype", "hidden_dtype", "w1_dtype"):
            if key in kw:
                kw[key] = DT[kw[key]]
        if "mlp" in kw:
            kw["mlp"] = bool(kw["mlp"])
        if cuda_supports(op[kind], **kw) != cpp:
            mismatches.append((op[kind], kw, cpp))
    assert not mismatches, mismatches[:10]
    assert sum(got) > len(got) // 5 and sum(got) < len(got)  # both answers occur
