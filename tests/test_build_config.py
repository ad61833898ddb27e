"""Build configuration (rgk/ops/_build.py): the architecture list from TORCH_CUDA_ARCH_LIST and
the defaults, the flags and the token compiled into the library, which GPUs a build serves,
and CUDA_HOME discovery through a wrapper script and a symlink (fake toolkits: no CUDA
needed)."""
from __future__ import annotations

import os
import stat

import pytest

from rgk.ops import _build
from rgk.ops._build import Arch, BuildConfigError

CUDA13 = [(7, 5), (8, 0), (8, 6), (8, 7), (8, 8), (8, 9), (9, 0), (10, 0), (10, 3), (11, 0), (12, 0), (12, 1)]


def archs(text, **kw):
    warned = []
    out = _build.parse_arch_list(text, warn=warned.append, **kw)
    return [str(a) for a in out], warned


# ----------------------------------------------------------------------------- TORCH_CUDA_ARCH_LIST

def test_arch_list_torch_syntax():
    assert archs("8.0;9.0")[0] == ["8.0", "9.0"]
    assert archs("8.0 8.6+PTX")[0] == ["8.0", "8.6+PTX"]          # spaces, like torch
    assert archs("9.0a;8.9,12.0+ptx")[0] == ["8.9", "9.0a", "12.0+PTX"]   # sorted, case of +PTX free
    assert archs("10.0f")[0] == ["10.0f"]
    assert archs("8.0;8.0+PTX")[0] == ["8.0+PTX"]                 # duplicates merged, PTX kept
    assert archs("Ampere;Hopper")[0] == ["8.0", "8.6+PTX", "9.0+PTX"]
    assert archs("Blackwell")[0] == ["10.0", "12.0+PTX"]


def test_arch_list_drops_old_gpus_with_a_warning_and_refuses_nonsense():
    got, warned = archs("7.0;7.5;8.0")
    assert got == ["8.0"]
    assert len(warned) == 1 and "7.0, 7.5" in warned[0] and "8.0" in warned[0]
    with pytest.raises(BuildConfigError, match=r"^TORCH_CUDA_ARCH_LIST: no architecture >= 8.0"):
        archs("7.5+PTX")
    with pytest.raises(BuildConfigError, match=r"^TORCH_CUDA_ARCH_LIST: expected entries like .* got 'sm_90'"):
        archs("8.0;sm_90")
    with pytest.raises(BuildConfigError, match=r"^RGK_CUDA_ARCHS: expected architectures"):
        archs(" ; ", var="RGK_CUDA_ARCHS")


def test_build_archs_sources_in_order():
    w = []
    got, src = _build.build_archs({"TORCH_CUDA_ARCH_LIST": "8.0;9.0+PTX", "RGK_CUDA_ARCHS": "8.6"},
                                  visible_caps=[(8, 9)], nvcc_caps=CUDA13, warn=w.append)
    assert [str(a) for a in got] == ["8.0", "9.0+PTX"] and src == "TORCH_CUDA_ARCH_LIST" and not w
    # the old switch still works, with a deprecation warning, when TORCH_CUDA_ARCH_LIST is unset
    got, src = _build.build_archs({"RGK_CUDA_ARCHS": "9.0a"}, visible_caps=[], nvcc_caps=CUDA13, warn=w.append)
    assert [str(a) for a in got] == ["9.0a"] and src == "RGK_CUDA_ARCHS"
    assert len(w) == 1 and "deprecated" in w[0] and "TORCH_CUDA_ARCH_LIST" in w[0]
    # the visible GPUs, PTX on the highest
    got, src = _build.build_archs({}, visible_caps=[(8, 6), (9, 0), (8, 6)], nvcc_caps=CUDA13)
    assert [str(a) for a in got] == ["8.6", "9.0+PTX"] and src == "the visible GPUs"
    with pytest.raises(BuildConfigError, match="no visible GPU has compute capability >= 8.0"):
        _build.build_archs({}, visible_caps=[(7, 5)], nvcc_caps=CUDA13)
    # an architecture this nvcc cannot compile for is an error naming the variable
    with pytest.raises(BuildConfigError, match=r"^TORCH_CUDA_ARCH_LIST: the installed nvcc cannot compile for 13.0"):
        _build.build_archs({"TORCH_CUDA_ARCH_LIST": "9.0;13.0"}, nvcc_caps=CUDA13)


def test_default_archs_without_a_gpu_cover_ampere_to_what_nvcc_supports_with_ptx():
    got, src = _build.build_archs({}, visible_caps=[], nvcc_caps=CUDA13)
    assert src == "the default list"
    assert [str(a) for a in got] == ["8.0", "8.6", "8.9", "9.0a", "10.0", "11.0", "12.0+PTX"]
    # an older nvcc (CUDA 12.4: up to 9.0): no newer majors, PTX on 9.0a (emitted as plain compute_90)
    cuda124 = [(5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0)]
    got = _build.default_archs(cuda124)
    assert [str(a) for a in got] == ["8.0", "8.6", "8.9", "9.0a+PTX"]
    assert "-gencode=arch=compute_90,code=compute_90" in _build.gencode_flags(got)
    # unknown nvcc: the fixed list
    assert [str(a) for a in _build.default_archs([])] == ["8.0", "8.6", "8.9", "9.0a+PTX"]


def test_gencode_flags_and_token():
    a = [Arch(8, 0), Arch(9, 0, "a"), Arch(12, 0, ptx=True)]
    assert _build.gencode_flags(a) == ["-gencode=arch=compute_80,code=sm_80",
                                       "-gencode=arch=compute_90a,code=sm_90a",
                                       "-gencode=arch=compute_120,code=sm_120",
                                       "-gencode=arch=compute_120,code=compute_120"]
    tok = _build.arch_token(a)
    assert tok == "sm80_sm90a_sm120_ptx120" and tok.replace("_", "").isalnum()
    assert _build.parse_arch_token(tok) == ([(8, 0, ""), (9, 0, "a"), (12, 0, "")], [(12, 0)])
    assert _build.describe_token(tok) == "sm_80, sm_90a, sm_120, PTX compute_120"
    flags = _build.compile_args(a, debug=False)
    assert "-g0" in flags["cxx"] and "-g" not in flags["cxx"] and "-g" not in flags["nvcc"]
    assert "-lineinfo" not in flags["nvcc"] and f"-DRGK_ARCHS={tok}" in flags["nvcc"]
    dbg = _build.compile_args(a, debug=True)
    assert "-g" in dbg["cxx"] and {"-g", "-lineinfo"} <= set(dbg["nvcc"])
    assert _build.link_args(debug=False) == ["-Wl,--strip-debug"] and _build.link_args(debug=True) == []


@pytest.mark.parametrize("cap,token,ok", [
    ((8, 0), "sm80_sm90", True), ((8, 6), "sm80_sm90", True), ((8, 9), "sm80", True),   # same major, newer minor
    ((7, 5), "sm80_ptx80", False),                                                       # older than every target
    ((9, 0), "sm80", False), ((9, 0), "sm80_ptx80", True),                               # PTX JITs forward
    ((9, 0), "sm90a", True), ((10, 0), "sm90a", False), ((10, 0), "sm90a_ptx90", True),
    ((12, 1), "sm80_sm120", True), ((10, 3), "sm100f", True), ((10, 0), "sm103", False),
    ((12, 0), "sm80_sm86_sm89_sm90a", False),                                            # a Blackwell card, old build
])
def test_serves(cap, token, ok):
    assert _build.serves(cap, token) is ok


# ----------------------------------------------------------------------------- CUDA_HOME

def _toolkit(root, name="cuda-x"):
    home = root / name
    (home / "include").mkdir(parents=True)
    (home / "include" / "cuda_runtime.h").write_text("/* fake */\n")
    (home / "bin").mkdir()
    nvcc = home / "bin" / "nvcc"
    # a fake nvcc that answers --dryrun the way the real one does
    nvcc.write_text(f"#!/bin/sh\necho '#$ _HERE_={home}/bin' >&2\necho '#$ TOP={home}/bin/..' >&2\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return home


def _which(path):
    return lambda name: str(path) if name == "nvcc" else None


def test_cuda_home_through_a_wrapper_script(tmp_path):
    home = _toolkit(tmp_path)
    wrap = tmp_path / "usr" / "local" / "bin" / "nvcc"           # torch would guess tmp/usr/local
    wrap.parent.mkdir(parents=True)
    wrap.write_text(f'#!/bin/sh\nexec {home}/bin/nvcc "$@"\n')
    wrap.chmod(0o755)
    assert _build.find_cuda_home({}, which=_which(wrap)) == str(home)


def test_cuda_home_through_a_symlink(tmp_path):
    home = _toolkit(tmp_path)
    (home / "bin" / "nvcc").write_text("#!/bin/sh\nexit 1\n")     # --dryrun says nothing: follow the link
    link = tmp_path / "conda" / "bin" / "nvcc"
    link.parent.mkdir(parents=True)
    os.symlink(home / "bin" / "nvcc", link)
    assert _build.find_cuda_home({}, which=_which(link)) == str(home)


def test_cuda_home_from_the_environment_checked(tmp_path):
    home = _toolkit(tmp_path)
    other = _toolkit(tmp_path, "cuda-y")
    assert _build.find_cuda_home({"CUDA_HOME": str(home), "CUDA_PATH": str(other)}) == str(home)
    assert _build.find_cuda_home({"CUDA_PATH": str(other)}, which=lambda n: None) == str(other)
    with pytest.raises(BuildConfigError, match=r"^CUDA_HOME: .* has no include/cuda_runtime.h"):
        _build.find_cuda_home({"CUDA_HOME": str(tmp_path)})
    with pytest.raises(BuildConfigError, match=r"^CUDA_PATH: .* does not exist"):
        _build.find_cuda_home({"CUDA_PATH": str(tmp_path / "nope")})
    bad = tmp_path / "bin" / "nvcc"        # an nvcc whose folder is no toolkit
    bad.parent.mkdir()
    bad.write_text("#!/bin/sh\nexit 1\n")
    bad.chmod(0o755)
    with pytest.raises(BuildConfigError, match=r"^nvcc: the nvcc on PATH .* set CUDA_HOME"):
        _build.find_cuda_home({}, which=_which(bad))


def test_cuda_home_of_this_machine_has_the_runtime_header():
    import shutil
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on PATH")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    home = _build.find_cuda_home(env)
    assert os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))
    caps = _build.nvcc_archs(_build.nvcc_path(home))
    assert (8, 0) in caps and (9, 0) in caps
