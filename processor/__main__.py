"""`python -m processor` is `taskwire processor`."""

import sys

from taskwire.cli import main

raise SystemExit(main(["processor", *sys.argv[1:]]))
