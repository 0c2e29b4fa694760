"""Scenario 4: resident memory of one API process per idle subscription, at 10,000.

How: a fresh deployment per connection layout (a fresh API process, so that one layout's freed
memory does not flatter the next), tasks that stay PENDING (no processor), a warm-up round of
subscriptions opened and closed, then RSS before, the 10,000 subscriptions held by load
processes, RSS with them; (with - before) / subscriptions is the figure. Layouts: one
subscription per connection (10,000 websockets, the worst case: every subscriber a client of
its own) and 100 subscriptions per connection (a client multiplexing its subscriptions).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bench.load import run_load
from bench.model import Measurement
from bench.registry import Scenario, at_most
from bench.stack import Deployment, Stack
from bench.ws_parent import (
    RELEASE_SIGNAL,
    graphql_ws_url,
    open_files_limit,
    processes_for,
    raise_fd_limit,
    report_errors,
    split,
    subscriber_loads,
)

NAME = "memory"
SUBSCRIPTIONS = 10_000
# Measurement name -> subscriptions per connection.
LAYOUTS = {NAME: 1, f"{NAME}:100-per-connection": 100}
# The subscriptions spread over this many tasks (10 per task): creating 10,000 tasks over HTTP
# would take most of a minute, and what a distinct task adds (one Redis channel entry in the
# API) is a few hundred bytes, next to the subscription's kilobytes.
TASKS = 1_000
WARMUP_SUBSCRIPTIONS = 500
LIMIT_KIB = 20.0
SETUP_TIMEOUT_SECONDS = 300.0
HOLD_SECONDS = 120.0
# RSS counts as settled when two readings this far apart differ by less than SETTLE_KIB.
SETTLE_INTERVAL_SECONDS = 0.5
SETTLE_KIB = 256.0
SETTLE_TIMEOUT_SECONDS = 10.0


def kib_per_subscription(rss_before_kib: float, rss_with_kib: float, subscriptions: int) -> float:
    """The API's extra resident memory per held subscription."""
    if subscriptions < 1:
        raise ValueError("no subscriptions were held")
    return (rss_with_kib - rss_before_kib) / subscriptions


async def run(stack: Stack, seconds: float) -> list[Measurement]:
    # The API processes inherit this process's open-files limit: 10,000 websockets need it.
    raise_fd_limit()
    return [await _layout(stack, name, per_connection) for name, per_connection in LAYOUTS.items()]


async def _layout(stack: Stack, name: str, per_connection: int) -> Measurement:
    env = {
        "MAX_SUBSCRIPTIONS_PER_CONNECTION": str(per_connection),
        # Idle subscriptions re-read the database every 30 s by default; set up over tens of
        # seconds, they would do so while the RSS is read. Memory, not that traffic, is measured.
        "WATCH_RECHECK_SECONDS": "600",
    }
    async with stack.deployment(apis=1, processors=0, env=env) as deployment:
        api_url = deployment.api_urls[0]
        pid = deployment.api_pids[0]
        created = await run_load(
            "bench.ws_load",
            {
                "mode": "create",
                "http_url": f"{api_url}/graphql",
                "token": deployment.token(),
                "count": TASKS,
            },
            timeout=SETUP_TIMEOUT_SECONDS,
        )
        task_ids: list[str] = created["task_ids"]
        if len(task_ids) < TASKS:
            raise RuntimeError(f"created {len(task_ids)} of {TASKS}: {created['first_error']}")
        # Warm-up: the first subscriptions import, compile and cache what every later one uses.
        await _hold(deployment, task_ids, WARMUP_SUBSCRIPTIONS, per_connection, on_ready=None)
        before = await settled_rss(deployment, pid)
        readings: dict[str, float] = {}

        async def read_rss() -> None:
            readings["with"] = await settled_rss(deployment, pid)

        results = await _hold(deployment, task_ids, SUBSCRIPTIONS, per_connection, read_rss)
        after = await settled_rss(deployment, pid)
        held = int(sum(result["held"] for result in results))
        report_errors(name, results)
        return Measurement(
            scenario=name,
            throughput=None,
            peak_rss_kib=deployment.peak_rss_kib(pid),
            figure="kib_per_subscription",
            extra={
                "kib_per_subscription": kib_per_subscription(before, readings["with"], held),
                "subscriptions": float(held),
                "per_connection": float(per_connection),
                "connections": float(sum(result["connections"] for result in results)),
                "rss_before_kib": before,
                "rss_with_kib": readings["with"],
                "rss_after_close_kib": after,
                "setup_seconds": max(float(result["setup_seconds"]) for result in results),
                "errors": float(sum(result["errors"] for result in results)),
                "api_fd_limit": float(open_files_limit(pid)),
                "load_fd_limit": float(min(result["fd_limit"] for result in results)),
            },
        )


async def _hold(
    deployment: Deployment,
    task_ids: list[str],
    subscriptions: int,
    per_connection: int,
    on_ready: Callable[[], Awaitable[None]] | None,
) -> list[dict[str, Any]]:
    """Hold `subscriptions` idle subscriptions over the tasks in load processes, call
    `on_ready` once all are live, then release them; returns the load processes' results."""
    api_url = deployment.api_urls[0]
    subs_per_task = max(1, subscriptions // len(task_ids))
    tasks = task_ids[: subscriptions // subs_per_task]
    token = deployment.token()
    params = [
        {
            "ws_url": graphql_ws_url(api_url),
            "token": token,
            "task_ids": share,
            "subs_per_task": subs_per_task,
            "per_connection": per_connection,
            "subscribe_window": 100,
            "hold": True,
            "timeout": SETUP_TIMEOUT_SECONDS,
            "wait_seconds": HOLD_SECONDS,
        }
        for share in split(tasks, processes_for(subscriptions))
    ]
    async with subscriber_loads(
        params,
        timeout=SETUP_TIMEOUT_SECONDS + HOLD_SECONDS + 60,
        ready_timeout=SETUP_TIMEOUT_SECONDS + 30,
    ) as (ready, loads):
        if on_ready is not None:
            await on_ready()
        for item in ready:
            os.kill(int(item["pid"]), RELEASE_SIGNAL)
        return list(await asyncio.gather(*loads))


async def settled_rss(deployment: Deployment, pid: int) -> float:
    """The process's RSS once it stops moving (the last reading after SETTLE_TIMEOUT_SECONDS)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    previous = deployment.rss_kib(pid)
    while True:
        await asyncio.sleep(SETTLE_INTERVAL_SECONDS)
        current = deployment.rss_kib(pid)
        if abs(current - previous) < SETTLE_KIB or time.monotonic() > deadline:
            return current
        previous = current


def check(medians: Mapping[str, Measurement]) -> Mapping[str, bool]:
    met: dict[str, bool] = {}
    for name in LAYOUTS:
        measured = medians.get(name)
        figure = None if measured is None else measured.extra.get("kib_per_subscription")
        met[name] = at_most(figure, LIMIT_KIB)
    return met


SCENARIO = Scenario(
    name=NAME,
    title="API RSS per idle subscription, 10,000 subscriptions",
    run=run,
    targets={name: f"<= {LIMIT_KIB:g} KiB per subscription" for name in LAYOUTS},
    check=check,
)
