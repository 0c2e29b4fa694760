"""`python -m graphql_api` is `taskwire api`."""

import sys

from taskwire.cli import main

raise SystemExit(main(["api", *sys.argv[1:]]))
