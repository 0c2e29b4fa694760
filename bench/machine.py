"""What the numbers depend on: the machine, its load, Python and the library versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED_PACKAGES = (
    "strawberry-graphql",
    "graphql-core",
    "uvicorn",
    "starlette",
    "asyncpg",
    "sqlalchemy",
    "aio-pika",
    "redis",
    "uvloop",
    "httptools",
    "aiohttp",
)


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPUs, load before the run, Python and library versions."""
    versions: dict[str, str | None] = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mib": _memory_mib(),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": versions,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _memory_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return None
