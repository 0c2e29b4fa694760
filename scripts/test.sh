#!/usr/bin/env bash
# The one test command. On a fresh Debian 12 machine, as root, it installs what is missing
# (the servers and Python from Debian's packages, the venv from the hash-checked lock), then runs
# the linter, the format check, the type checker and the whole pytest suite. The suite starts
# and stops its own PostgreSQL, Redis and RabbitMQ on free ports (tests/servers.py), unless
# TASKWIRE_TEST_{POSTGRES,REDIS,RABBITMQ}_URL name servers to use instead. The browser tests
# run Debian's `chromium` (or TASKWIRE_CHROMIUM) and save screenshots in artifacts/browser/.
#
#   bash scripts/test.sh                          # everything
#   bash scripts/test.sh tests/unit -x -k schema  # extra arguments go to pytest
#
# The exit code is the first failing step's; for pytest, 5 (no test collected) fails too.
# scripts/dev.sh sources this file for its setup functions (then nothing runs by itself).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=${EPOCHREALTIME/./}
step() {
    local ms=$(((${EPOCHREALTIME/./} - started) / 1000))
    printf '==> [%3d.%ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*" >&2
}

# pip on some machines warns about every package for a configured local index that does not
# exist; the lines say nothing about this project.
quiet_pip() {
    "$@" 2> >(grep -v "^WARNING: Location 'file://.*' is ignored" >&2)
}

have() { command -v "$1" >/dev/null 2>&1; }

debian_python() { [[ "$(readlink -f "$(command -v python3)")" == /usr/bin/python3* ]]; }

dpkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# Debian packages that are needed and not installed; "python" asks only for the Python side.
missing_packages() {
    if [[ ${1:-all} == all ]]; then
        compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || echo postgresql
        have redis-server || echo redis-server
        [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] && have epmd || echo rabbitmq-server
        have git || echo git
        # The browser tests (tests/browser): Debian's Chromium, driven by Playwright's node
        # driver, which comes in the wheel and needs libatomic (Playwright downloads nothing).
        [[ -n ${TASKWIRE_CHROMIUM:-} ]] || have chromium || echo chromium
        if have dpkg-query && ! dpkg_installed libatomic1; then echo libatomic1; fi
    fi
    have gcc || echo gcc
    [[ -e /etc/ssl/certs/ca-certificates.crt ]] || echo ca-certificates
    if ! have python3; then
        echo python3 python3-venv python3-dev
    elif debian_python; then
        # Debian splits venv (ensurepip's wheels) and the C headers out of python3.
        dpkg_installed python3-venv || echo python3-venv
        dpkg_installed python3-dev || echo python3-dev
    fi
}

install_debian_packages() {
    local missing
    missing=$(missing_packages "${1:-all}" | xargs)
    [[ -z "$missing" ]] && return 0
    if [[ $EUID -ne 0 ]] || ! have apt-get; then
        echo "warning: not installed: $missing (as root: apt-get install $missing);" \
            "tests that need a missing server are skipped (they fail with CI=true)" >&2
        return 0
    fi
    step "apt-get install $missing"
    # The packages would start system services we never use: deny that during the install
    # unless the machine already has a policy.
    local policy=/usr/sbin/policy-rc.d own_policy="" status=0
    if [[ ! -e $policy ]]; then
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
    fi
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # a list of package names
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
        status=$?
    if [[ -n $own_policy ]]; then
        rm -f "$policy"
        trap - EXIT
    fi
    return "$status"
}

ensure_venv() {
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: python3 is $(python3 --version 2>&1); Taskwire needs 3.11 or newer" >&2
        exit 1
    fi
    # A venv whose interpreter has gone (python upgraded or removed) is made anew.
    if [[ -e .venv ]] && ! .venv/bin/python -c '' 2>/dev/null; then
        step "removing a broken .venv"
        rm -rf .venv
    fi
    if [[ ! -e .venv ]]; then
        step "creating .venv with $(python3 --version)"
        python3 -m venv .venv
    fi
    # pip runs only when the lock, the project's metadata or the interpreter changed.
    local stamp
    stamp=$(cat requirements.lock pyproject.toml <(.venv/bin/python -VV) | sha256sum)
    if [[ "$(cat .venv/.taskwire-installed 2>/dev/null)" == "$stamp" ]]; then
        return 0
    fi
    step "installing requirements.lock (hash-checked) and the project (editable)"
    local pip=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
    quiet_pip "${pip[@]}" install --require-hashes -r requirements.lock
    # setuptools comes from the lock, so the build needs nothing unchecked from the network.
    quiet_pip "${pip[@]}" install --no-deps --no-build-isolation --editable .
    echo "$stamp" >.venv/.taskwire-installed
}

main() {
    step "checking Debian packages"
    install_debian_packages all
    ensure_venv

    step "ruff check"
    .venv/bin/ruff check .
    step "ruff format --check"
    .venv/bin/ruff format --check .
    step "mypy"
    .venv/bin/mypy

    step "pytest $*"
    local status=0
    .venv/bin/pytest -p no:cacheprovider -ra --durations=15 "$@" || status=$?
    if [[ $status -eq 5 ]]; then
        echo "error: pytest collected no test" >&2
    fi
    step "done (exit code $status)"
    return "$status"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
