"""Scenario 5: the processor. Throughput with TASK_DELAY_SECONDS=0 (one and two processes)
against the bare asyncpg UPDATE rate, and in-flight capacity with a 5 s delay.

Throughput: N tasks are created (through createTask, with no processor running), then the
processors start and the database is polled until all N are COMPLETED. The rate comes from
the tasks' own timestamps (started_at, finished_at, written by the processors), between the
10th and the 90th percentile of finish times, so neither start-up nor the tail counts.

Writes per task (read off taskwire.service and processor.handler): the processor does two
database writes per task, the claim (PENDING -> PROCESSING) and the finish (-> COMPLETED),
each one conditional UPDATE ... RETURNING. createTask's two (the INSERT, then the UPDATE that
defers the outbox deadline once the publish is confirmed) happen before the window: createTask
answers before its publish is confirmed, so the processors start only once every deadline has
been deferred (every message is in the queue and no deferral competes with the claims). The
target is 50 % of the UPDATE baseline divided by 2. (Redis cache writes and events, and the
AMQP ack, are not database writes.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime

import asyncpg

from bench.backend_load import asyncpg_dsn
from bench.baselines import ASYNCPG_UPDATE, wait_for_publishes
from bench.http_load import create_tasks
from bench.model import Measurement
from bench.registry import Scenario, at_least
from bench.stack import HISTORY_OWNER, Stack
from taskwire.settings import Settings

WRITES_PER_TASK = 2
SHARE_OF_UPDATE_RATE = 0.5
MIN_IN_FLIGHT = 500
# Sizes the pre-load so that processing lasts about the budget (it is a guess: the rate
# itself comes from timestamps, whatever N is).
TASKS_PER_SECOND_GUESS = 1000
MIN_TASKS = 500
# In-flight: more tasks than the raised prefetch, a 5 s delay, and a raised concurrency to
# show what the process holds when the prefetch is not what limits it.
DELAY_SECONDS = 5.0
IN_FLIGHT_TASKS = 1200
RAISED_CONCURRENCY = 1000
DEFAULT_CONCURRENCY = Settings().processor_concurrency
POLL_SECONDS = 0.2

ONE, TWO = "processor@1", "processor@2"
IN_FLIGHT_DEFAULT = f"processor-inflight@{DEFAULT_CONCURRENCY}"
IN_FLIGHT_RAISED = f"processor-inflight@{RAISED_CONCURRENCY}"


async def run(stack: Stack, seconds: float) -> list[Measurement]:
    return [
        await _throughput(stack, seconds, ONE, processors=1),
        await _throughput(stack, seconds, TWO, processors=2),
        await _in_flight(stack, IN_FLIGHT_DEFAULT, concurrency=DEFAULT_CONCURRENCY),
        await _in_flight(stack, IN_FLIGHT_RAISED, concurrency=RAISED_CONCURRENCY),
    ]


async def _throughput(stack: Stack, seconds: float, name: str, *, processors: int) -> Measurement:
    count = max(MIN_TASKS, int(seconds * TASKS_PER_SECOND_GUESS))
    async with stack.deployment(apis=1, processors=0, env={"TASK_DELAY_SECONDS": "0"}) as d:
        await create_tasks(d, count)
        # createTask answers before its publish is confirmed: processors started earlier would
        # race the API's late publishes and outbox deferrals for the machine.
        await wait_for_publishes(d, timeout=60 + count / 100)
        database = await asyncpg.connect(asyncpg_dsn(d.database_url))
        try:
            pids = await d.add_processors(processors)
            cpu_before = sum(d.cpu_seconds(pid) for pid in pids)
            began = time.perf_counter()
            await _wait_for_status(database, "COMPLETED", count, timeout=60 + count / 20)
            wall = time.perf_counter() - began
            cpu = sum(d.cpu_seconds(pid) for pid in pids) - cpu_before
            rows = await database.fetch(
                "SELECT started_at, finished_at FROM tasks WHERE status = 'COMPLETED'"
                " AND owner <> $1",
                HISTORY_OWNER,
            )
        finally:
            await database.close()
        peak_rss = max(d.peak_rss_kib(pid) for pid in pids)
    spans = [(row["started_at"], row["finished_at"]) for row in rows]
    return Measurement(
        scenario=name,
        throughput=steady_rate([finished for _, finished in spans]),
        latencies_ms=tuple((end - start).total_seconds() * 1000 for start, end in spans),
        peak_rss_kib=peak_rss,
        extra={
            "tasks": float(count),
            "overall_tasks_per_s": overall_rate(spans),
            "processor_cpu_pct": cpu / wall * 100,
        },
    )


async def _in_flight(stack: Stack, name: str, *, concurrency: int) -> Measurement:
    env = {"TASK_DELAY_SECONDS": f"{DELAY_SECONDS:g}", "PROCESSOR_CONCURRENCY": str(concurrency)}
    async with stack.deployment(apis=1, processors=0, env=env) as d:
        await create_tasks(d, IN_FLIGHT_TASKS)
        await wait_for_publishes(d, timeout=60)
        database = await asyncpg.connect(asyncpg_dsn(d.database_url))
        try:
            [pid] = await d.add_processors(1)
            peak = await _peak_processing(database, DELAY_SECONDS + 2)
            rows = await database.fetch(
                "SELECT started_at, finished_at FROM tasks WHERE status = 'COMPLETED'"
                " AND owner <> $1",
                HISTORY_OWNER,
            )
        finally:
            await database.close()
        peak_rss = d.peak_rss_kib(pid)
    return Measurement(
        scenario=name,
        # Little's law: what one process sustains with this delay and this many in flight.
        throughput=peak / DELAY_SECONDS,
        latencies_ms=tuple(
            (row["finished_at"] - row["started_at"]).total_seconds() * 1000 for row in rows
        ),
        peak_rss_kib=peak_rss,
        extra={"in_flight": float(peak), "concurrency": float(concurrency)},
    )


async def _wait_for_status(
    database: asyncpg.Connection, status: str, count: int, *, timeout: float
) -> None:
    try:
        async with asyncio.timeout(timeout):
            # The database is the truth being waited for; nothing signals it (ASYNC110).
            while await _count(database, status) < count:  # noqa: ASYNC110
                await asyncio.sleep(POLL_SECONDS)
    except TimeoutError:
        by_status = await database.fetch(
            "SELECT status, count(*) FROM tasks WHERE owner <> $1 GROUP BY status", HISTORY_OWNER
        )
        found = ", ".join(f"{row[0]}={row[1]}" for row in by_status)
        raise RuntimeError(f"{count} tasks not {status} after {timeout:g} s: {found}") from None


async def _peak_processing(database: asyncpg.Connection, seconds: float) -> int:
    """The most tasks seen PROCESSING at once while sampling for `seconds`."""
    peak = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        peak = max(peak, await _count(database, "PROCESSING"))
        await asyncio.sleep(POLL_SECONDS / 2)
    return peak


async def _count(database: asyncpg.Connection, status: str) -> int:
    # The deployment's history (bench.stack) is not the scenario's.
    found: int = await database.fetchval(
        "SELECT count(*) FROM tasks WHERE status = $1 AND owner <> $2", status, HISTORY_OWNER
    )
    return found


def steady_rate(finished: list[datetime]) -> float | None:
    """Tasks per second between the 10th and the 90th percentile of finish times."""
    if len(finished) < 10:
        return None
    ordered = sorted(finished)
    low, high = len(ordered) // 10, len(ordered) * 9 // 10
    span = (ordered[high] - ordered[low]).total_seconds()
    return (high - low) / span if span > 0 else None


def overall_rate(spans: list[tuple[datetime, datetime]]) -> float:
    """Tasks per second from the first claim to the last finish."""
    if not spans:
        return 0.0
    span = (max(end for _, end in spans) - min(start for start, _ in spans)).total_seconds()
    return len(spans) / span if span > 0 else 0.0


def update_target(medians: Mapping[str, Measurement]) -> float | None:
    """Tasks per second the zero-delay target asks for, from the UPDATE baseline."""
    update = medians.get(ASYNCPG_UPDATE)
    if update is None or not update.throughput:
        return None
    return SHARE_OF_UPDATE_RATE * update.throughput / WRITES_PER_TASK


def check(medians: Mapping[str, Measurement]) -> Mapping[str, bool]:
    target = update_target(medians)
    met: dict[str, bool] = {}
    for name in (ONE, TWO):
        if name in medians:
            rate = medians[name].throughput
            met[name] = target is not None and at_least(rate, target)
    for name in (IN_FLIGHT_DEFAULT, IN_FLIGHT_RAISED):
        if name in medians:
            met[name] = medians[name].extra.get("in_flight", 0.0) >= MIN_IN_FLIGHT
    return met


_ZERO_DELAY_TARGET = (
    f">= {SHARE_OF_UPDATE_RATE * 100 / WRITES_PER_TASK:g} % of UPDATE "
    f"(50 % / {WRITES_PER_TASK} writes)"
)
SCENARIO = Scenario(
    name="processor",
    title="processor: zero-delay throughput (1 and 2 processes), in-flight at 5 s delay",
    run=run,
    baselines={ONE: ASYNCPG_UPDATE, TWO: ASYNCPG_UPDATE},
    targets={
        ONE: _ZERO_DELAY_TARGET,
        TWO: _ZERO_DELAY_TARGET,
        IN_FLIGHT_DEFAULT: f">= {MIN_IN_FLIGHT} in flight",
        IN_FLIGHT_RAISED: f">= {MIN_IN_FLIGHT} in flight",
    },
    check=check,
)
