"""`python -m toolchain ARGS` = `vqtool ARGS` (what toolchain/distributed.py starts in each worker)."""

import sys

from toolchain.cli import main

sys.argv[0] = "vqtool"
main()
