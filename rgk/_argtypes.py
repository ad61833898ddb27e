"""argparse value types shared by the CLI commands (argparse prefixes errors with the
option's name, e.g. "argument --k: expected an integer >= 1, got 0")."""
from __future__ import annotations

import argparse
import math


def int_at_least(minimum: int = 1):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {v}")
        return v
    parse.__name__ = f"int>={minimum}"
    return parse


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False):
    """A finite float in [lo, hi] (open ends with lo_open/hi_open; None = unbounded)."""
    lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
    hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
    want = f"a finite number{'' if lo is None and hi is None else ' with ' + lo_s + 'value' + hi_s}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(v)
        ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
        ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return v
    parse.__name__ = "float"
    return parse
