"""The parent's side of the websocket load processes (bench.ws_load): how many to start and
how to share subscriptions among them, waiting for their ready files, the release signal, and
reading a running process's limits and CPU time from /proc."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from bench.load import run_load

# How often the parent looks for the load processes' ready files.
READY_POLL_SECONDS = 0.05
# Sent by the parent to a load process holding idle subscriptions: close them and report.
RELEASE_SIGNAL = signal.SIGUSR1
# Most subscriptions one load process holds (see processes_for).
SUBSCRIPTIONS_PER_PROCESS = 5_000

T = TypeVar("T")


def split(items: Sequence[T], parts: int) -> list[list[T]]:
    """`parts` nearly equal shares (sizes differ by at most one), in order; for load processes."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    size, rest = divmod(len(items), parts)
    shares: list[list[T]] = []
    start = 0
    for index in range(parts):
        end = start + size + (1 if index < rest else 0)
        shares.append(list(items[start:end]))
        start = end
    return shares


@asynccontextmanager
async def subscriber_loads(
    params: Sequence[Mapping[str, Any]], *, timeout: float, ready_timeout: float
) -> AsyncIterator[tuple[list[dict[str, Any]], list[asyncio.Task[dict[str, Any]]]]]:
    """One `bench.ws_load` subscribe process per entry of `params` (each with its own ready
    file); yields once all are subscribed, with their ready files' contents and the running
    loads (gather them for the results). Whatever is still running at exit is cancelled."""
    with tempfile.TemporaryDirectory(prefix="bench-subscribers-") as workdir:
        ready_files = [Path(workdir, f"ready-{index}") for index in range(len(params))]
        loads = [
            asyncio.create_task(
                run_load(
                    "bench.ws_load",
                    {**share, "mode": "subscribe", "ready_file": str(ready_file)},
                    timeout=timeout,
                )
            )
            for share, ready_file in zip(params, ready_files, strict=True)
        ]
        try:
            yield await wait_ready(ready_files, loads, timeout=ready_timeout), loads
        finally:
            for load in loads:
                load.cancel()
            await asyncio.gather(*loads, return_exceptions=True)


async def wait_ready(
    files: Sequence[Path], loads: Sequence[asyncio.Task[dict[str, Any]]], *, timeout: float
) -> list[dict[str, Any]]:
    """Wait until every load process wrote its ready file; returns their contents. Raises the
    load's own error when one ended first, RuntimeError after `timeout`."""
    async with asyncio.timeout(timeout):
        while not all(path.exists() for path in files):
            for load in loads:
                if load.done():
                    load.result()  # raises the load's error
                    raise RuntimeError("a load process ended before it was ready")
            await asyncio.sleep(READY_POLL_SECONDS)
    ready: list[dict[str, Any]] = [json.loads(path.read_text()) for path in files]
    return ready


def open_files_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of a running process (its 'Max open files'), -1 if unlimited."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return -1 if soft == "unlimited" else int(soft)
    raise RuntimeError(f"/proc/{pid}/limits has no open files limit")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a running process has used (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes_for(subscriptions: int) -> int:
    """Load processes for this many subscriptions: one event loop receiving thousands of
    notifications at once would delay its own receipts and count that as latency."""
    return max(1, -(-subscriptions // SUBSCRIPTIONS_PER_PROCESS))


# Also called by each load process (bench.ws_load.run), for its own sockets.
def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (10,000 sockets need it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def report_errors(name: str, results: Sequence[Mapping[str, Any]]) -> None:
    """One line on stderr per load process that saw errors, with its first one."""
    for result in results:
        if result.get("first_error"):
            print(
                f"bench {name}: {result['errors']} error(s), e.g. {result['first_error']}",
                file=sys.stderr,
            )


def graphql_ws_url(api_url: str) -> str:
    """ws://host:port/graphql for an API at http://host:port."""
    return "ws" + api_url.removeprefix("http") + "/graphql"
