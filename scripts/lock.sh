#!/usr/bin/env bash
# Regenerates requirements.lock (exact pins with hashes) from pyproject.toml: the base
# dependencies, the `dev` extra and the build-system requirements, so that scripts/test.sh can
# install everything hash-checked and then install the project with --no-build-isolation.
# The resolver (uv) lives in a throwaway venv; the project itself is not in the lock.
# Target: CPython 3.11 on linux x86_64 (CI, the developers' machines and the Docker image).
#
#   bash scripts/lock.sh                  # re-resolve within the ranges, keeping current pins
#   bash scripts/lock.sh --upgrade        # move every pin to the newest allowed version
#   bash scripts/lock.sh --upgrade-package redis
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

uv_version="0.13.9"
tool_dir="$(mktemp -d)"
trap 'rm -rf "$tool_dir"' EXIT

python3 -m venv "$tool_dir/venv"
"$tool_dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$uv_version"

# The build-system requirements are read from pyproject.toml and fed on stdin, so the lock's
# "# via" comments name no temporary path.
python3 -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
' | "$tool_dir/venv/bin/uv" pip compile pyproject.toml - \
    --extra dev \
    --generate-hashes \
    --python-version 3.11 \
    --python-platform x86_64-unknown-linux-gnu \
    --custom-compile-command "bash scripts/lock.sh" \
    --no-progress \
    --quiet \
    --output-file requirements.lock \
    "$@"

echo "requirements.lock: $(grep -c '^[a-z0-9]' requirements.lock) packages pinned" >&2
