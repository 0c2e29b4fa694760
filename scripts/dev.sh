#!/usr/bin/env bash
# The run command: Taskwire in embedded mode, with no servers at all (SQLite, in-memory queue,
# cache and events), after installing Python and the venv if they are missing.
#
#   bash scripts/dev.sh                 # then open http://127.0.0.1:8000/graphql
#   bash scripts/dev.sh --help          # arguments go to `taskwire dev`
set -euo pipefail
# shellcheck source=scripts/test.sh
source "$(dirname "${BASH_SOURCE[0]}")/test.sh" # its setup functions; it cds to the repo root

install_debian_packages python
ensure_venv
exec .venv/bin/taskwire dev "$@"
