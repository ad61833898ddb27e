"""The checkout imports cleanly from its own root, and the installed package has every subpackage."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_from_the_checkout_root_with_transformers():
    # `python -c` / `python -m pytest` put the root first on sys.path: no folder there may
    # shadow a package transformers imports (the Hugging Face `kernels` package, for one)
    code = "import transformers.modeling_utils, rgk.args, rgk.kernels, rgk.repulse; print('ok')"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
    import importlib.util
    for name in ("kernels", "csrc", "benchmarks", "tests"):
        if (ROOT / name / "__init__.py").exists():
            spec = importlib.util.find_spec(name)
            assert spec is None or not str(spec.origin).startswith(str(ROOT)), name


def test_setup_packages_every_subpackage():
    src = (ROOT / "setup.py").read_text()
    assert "find_packages(include=[\"rgk\", \"rgk.*\"])" in src
    pkgs = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "rgk").rglob("__init__.py")}
    from setuptools import find_packages
    assert set(find_packages(str(ROOT), include=["rgk", "rgk.*"])) == pkgs
    assert {"rgk.kernels", "rgk.repulse", "rgk.args", "rgk.ops", "rgk.argre"} <= pkgs
    ast.parse(src)
