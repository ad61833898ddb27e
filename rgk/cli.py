"""`rgk` command line: demo, generate, train-reward-head, argre, eval, doctor ...

Every error is one line on stderr, `rgk: error: <message>`, and exit status 2 (argument
errors from argparse too); an interrupt exits with 130.  RGK_DEBUG=1 re-raises errors
with their traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: Errors a command reports as one line (the rest also do, flagged as unexpected).
EXPECTED_ERRORS = (ValueError, TypeError, OSError, ImportError, RuntimeError, LookupError)
_PACKAGE_DIR = Path(__file__).resolve().parent


def one_line(message: object) -> str:
    """`message` with its lines joined by spaces (indentation and blank lines dropped)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line: `rgk: error: argument --k: ... (see ... --help)`."""

    def error(self, message):  # noqa: D102 - argparse API
        self.exit(2, f"rgk: error: {one_line(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="rgk", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)   # subparsers share the class
    from rgk.args import cli as args_cli
    args_cli.add_parsers(sub)            # demo, generate
    from rgk.heads.cli import add_train_head_parser
    add_train_head_parser(sub)           # train-reward-head
    from rgk.argre import cli as argre_cli
    argre_cli.add_parsers(sub)           # argre train | eval | generate
    __import__("rgk.repulse.cli", fromlist=["add_parsers"]).add_parsers(sub)   # repulse train | eval
    from rgk.eval import cli as eval_cli
    eval_cli.add_parsers(sub)            # eval args | detox | eos-probe | train-judge
    from rgk import doctor
    doctor.add_parser(sub)               # doctor
    return parser


def _raised_in_rgk(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc`'s traceback is rgk's own code."""
    tb = exc.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def error_message(exc: BaseException) -> str:
    """The one-line message printed for `exc` (after `rgk: error: `)."""
    msg = one_line(exc) or type(exc).__name__
    if isinstance(exc, KeyError):
        msg = f"KeyError: {msg}"
    if not isinstance(exc, EXPECTED_ERRORS):
        return f"unexpected {type(exc).__name__}: {msg} (RGK_DEBUG=1 shows the traceback)"
    if isinstance(exc, RuntimeError) and not _raised_in_rgk(exc):
        return f"{type(exc).__name__}: {msg} (RGK_DEBUG=1 shows the traceback)"
    return msg


def main(argv=None) -> int:
    debug = os.environ.get("RGK_DEBUG", "") not in ("", "0")
    ns = build_parser().parse_args(argv)       # argument errors: SystemExit(2), one line
    ns.argv = list(sys.argv[1:] if argv is None else argv)    # reports quote the exact command
    try:
        return int(ns.func(ns) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("rgk: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if debug or e.code is None or isinstance(e.code, int):
            raise
        print(f"rgk: error: {one_line(e.code)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        if debug:
            raise
        print(f"rgk: error: {error_message(e)}", file=sys.stderr)
        return 2 if isinstance(e, EXPECTED_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
