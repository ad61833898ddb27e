"""`python -m rgk ...` is the `rgk` command."""
import sys

from rgk.cli import main

sys.exit(main())
