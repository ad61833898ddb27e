"""Former name of benchmarks/bench_args_e2e.py (ARGS end to end, every way in, one run),
kept so that the command recorded in RESULTS.md still runs: same flags, same code; the
outputs are named args_e2e.json / .md / .png.  See bench_args_e2e.py --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_args_e2e import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
