"""`rgk` command line: demo, generate, train-reward-head, argre ..."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rgk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from rgk.args import cli as args_cli
    args_cli.add_parsers(sub)            # demo, generate
    from rgk import train_head
    train_head.add_parser(sub)           # train-reward-head
    from rgk.argre import cli as argre_cli
    argre_cli.add_parsers(sub)
    ns = parser.parse_args(argv)
    return int(ns.func(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
