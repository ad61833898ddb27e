"""`rgk doctor` (also `python -m rgk.doctor`): what rgk runs on here, for bug reports.

Prints torch and its CUDA runtime, the CUDA driver, the visible GPUs, the architectures
built into the CUDA library (rgk._C) and whether it serves the device, Triton's version
and whether it compiles for the device, and, for each fused op and dtype, the backend it
routes to on the device with its first-use self-test (`rgk.ops._selftest`), run now.
Works on a CPU-only machine (the ops then run the PyTorch reference, which is not
self-tested: it is the reference).
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys


def _driver_version() -> str:
    """The CUDA driver's version (cuDriverGetVersion), or why there is none."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "none (libcuda.so.1 not found: no NVIDIA driver)"
    v = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
        return "present, but cuDriverGetVersion failed"
    return f"{v.value // 1000}.{(v.value % 1000) // 10}"


def _library(lines: list[str], device) -> None:
    from rgk.ops import _backend, _build
    try:
        mod = _backend.cuda_ext()
    except Exception as e:  # noqa: BLE001 - the doctor reports, it does not fail
        lines.append(f"rgk._C          fails to load: {type(e).__name__}: {e}")
        return
    if mod is None:
        lines.append("rgk._C          not built (CPU-only or RGK_SKIP_CUDA install; on a CUDA machine: "
                     "RGK_FORCE_CUDA=1 pip install --no-build-isolation .)")
        return
    token = _backend.ext_archs()
    path = getattr(mod, "LIBRARY", getattr(mod, "__file__", "?"))
    size = f", {os.path.getsize(path) / 2**20:.1f} MiB" if path and os.path.exists(path) else ""
    archs = _build.describe_token(token) if token != "unknown" else "unknown (built before rgk recorded it)"
    lines.append(f"rgk._C          {path}{size}")
    lines.append(f"  built for     {archs}")
    if device.type == "cuda":
        lines.append(f"  serves {device}: {'yes' if _backend.ext_serves(device) else 'no (Triton is used there)'}")


def _triton(lines: list[str], device) -> None:
    try:
        import triton
    except ImportError:
        lines.append("triton          not installed")
        return
    if device.type != "cuda":
        lines.append(f"triton          {triton.__version__}; no GPU: its kernels run only in the interpreter "
                     f"(TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')}), as CI does")
        return
    try:
        import torch
        import triton.language as tl

        @triton.jit
        def _plus_one(x_ptr, n, BLOCK: tl.constexpr):
            i = tl.arange(0, BLOCK)
            tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) + 1, mask=i < n)

        x = torch.zeros(8, device=device)
        _plus_one[(1,)](x, 8, BLOCK=8)
        ok = bool((x == 1).all())
        target = triton.runtime.driver.active.get_current_target()
        lines.append(f"triton          {triton.__version__}; compiles for {device} ({target.backend} "
                     f"{target.arch}): {'yes' if ok else 'ran, but gave a wrong result'}")
    except Exception as e:  # noqa: BLE001
        lines.append(f"triton          {triton.__version__}; cannot compile for {device}: {type(e).__name__}: {e}")


def _ops(lines: list[str], device) -> None:
    import torch
    from rgk.ops import _backend, _selftest
    shapes = {  # typical decode-step shapes, for the route only
        "topk_logprobs": lambda dt: dict(B=8, V=49152, k=10, dtype=dt),
        "fork_attention": lambda dt: dict(B=8, Hq=9, Hkv=3, K=10, D=64, L=1024, dtype=dt),
        "reward_select": lambda dt: dict(B=8, K=10, d=576, m=1, mlp=False, hidden_dtype=dt),
        "argre_refine": lambda dt: dict(B=8, d=576, m=256, h_dtype=dt),
    }
    lines.append(f"ops on {device} (RGK_BACKEND={_backend.requested()}, "
                 f"RGK_SELFTEST={os.environ.get('RGK_SELFTEST', '1')}):")
    lines.append(f"  {'op':<15} {'dtype':<9} {'backend':<8} self-test")
    for op in _selftest.OPS:
        for dt in (torch.float32, torch.bfloat16, torch.float16):
            try:
                with _no_selftest():
                    b = _backend.route(op, device, **shapes[op](dt))
            except Exception as e:  # noqa: BLE001
                lines.append(f"  {op:<15} {str(dt)[6:]:<9} error: {type(e).__name__}: {e}")
                continue
            if b == "torch":
                verdict = "- (the reference)"
            else:
                ok, detail = _selftest.run_case(op, b, device, dt)
                verdict = f"{'pass' if ok else 'FAIL'} ({detail})"
            lines.append(f"  {op:<15} {str(dt)[6:]:<9} {b:<8} {verdict}")


class _no_selftest:
    """Route without the first-use self-test (the doctor runs the test itself)."""

    def __enter__(self):
        self.prev = os.environ.get("RGK_SELFTEST")
        os.environ["RGK_SELFTEST"] = "0"

    def __exit__(self, *exc):
        if self.prev is None:
            os.environ.pop("RGK_SELFTEST", None)
        else:
            os.environ["RGK_SELFTEST"] = self.prev


def report(device: str | None = None) -> str:
    """The doctor's report as text."""
    import torch
    import rgk
    lines = [f"rgk {rgk.__version__} doctor", f"python          {platform.python_version()} ({sys.executable})",
             f"platform        {platform.platform()}"]
    cuda_rt = torch.version.cuda or "none (a CPU build of torch)"
    lines.append(f"torch           {torch.__version__}; CUDA runtime {cuda_rt}")
    lines.append(f"CUDA driver     {_driver_version()}")
    n = torch.cuda.device_count() if torch.version.cuda else 0
    if n:
        for i in range(n):
            cap = torch.cuda.get_device_capability(i)
            lines.append(f"GPU {i}           {torch.cuda.get_device_name(i)}, compute capability {cap[0]}.{cap[1]}")
    else:
        lines.append("GPUs            none visible")
    if device is None:
        dev = torch.device("cuda", torch.cuda.current_device()) if n else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    _library(lines, dev)
    _triton(lines, dev)
    _ops(lines, dev)
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="what rgk runs on here (paste it into bug reports)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="device to check (default: the current GPU, else cpu)")
    p.set_defaults(func=_run)


def _run(ns) -> int:
    import torch
    if ns.device is not None:
        try:
            d = torch.device(ns.device)
        except RuntimeError as e:
            raise ValueError(f"--device: expected a device such as cpu or cuda:0, got {ns.device!r}") from e
        if d.type not in ("cpu", "cuda"):
            raise ValueError(f"--device: expected cpu or cuda[:N], got {ns.device!r}")
        if d.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device: {ns.device} was asked for, but torch sees no CUDA device")
    print(report(ns.device))
    return 0


def main(argv=None) -> int:
    from rgk.cli import main as cli_main
    return cli_main(["doctor", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
