"""The baselines: what Taskwire's own parts do on this machine, measured in the same run and
at the same concurrency as the scenarios that are compared with them.

The HTTP scenarios (create, read) also measure a floor of their own, paired with them: on
their own deployment, right before and right after their measurement (bracketed_by_floor).
The standalone floor is measured minutes away from them, and on this shared machine the
conditions drift in between; the paired floor sees the conditions the scenario saw.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import asyncpg

from bench.backend_load import asyncpg_dsn
from bench.http_load import (
    CONCURRENCY,
    FLOOR,
    LOAD_TIMEOUT_SLACK_SECONDS,
    measure_graphql,
    warmup_for,
)
from bench.load import measurement, run_load
from bench.model import Measurement
from bench.registry import Scenario
from bench.stack import Deployment, Stack
from taskwire.bootstrap import connect
from taskwire.settings import Settings

GRAPHQL_FLOOR = "baseline:graphql-floor"
ASYNCPG_INSERT = "baseline:asyncpg-insert"
ASYNCPG_UPDATE = "baseline:asyncpg-update"
AMQP_PUBLISH = "baseline:amqp-publish"
REDIS_GET = "baseline:redis-get"
REDIS_PUBLISH = "baseline:redis-publish"
ALL = (GRAPHQL_FLOOR, ASYNCPG_INSERT, ASYNCPG_UPDATE, AMQP_PUBLISH, REDIS_GET, REDIS_PUBLISH)

# The API's database pool (taskwire.bootstrap.connect's default), read off the code so that
# the INSERT baseline follows it; the processor's pool is min(PROCESSOR_CONCURRENCY, 16)
# (taskwire.cli), which the UPDATE baseline uses.
API_POOL_SIZE: int = inspect.signature(connect).parameters["pool_size"].default
PROCESSOR_POOL_SIZE = 16

Measure = Callable[[Stack, Deployment, float], Awaitable[Measurement]]


async def _graphql_floor(stack: Stack, deployment: Deployment, seconds: float) -> Measurement:
    """`{ __typename }`, authenticated, on the same API settings: parsing, validation, auth
    and HTTP with no resolver work; nothing a GraphQL request does can be cheaper."""
    return await measure_graphql(deployment, GRAPHQL_FLOOR, query=FLOOR, seconds=seconds)


def _backend(
    name: str, kind: str, url: Callable[[Stack, Deployment], str], **extra: Any
) -> Measure:
    async def measure(stack: Stack, deployment: Deployment, seconds: float) -> Measurement:
        warmup = warmup_for(seconds)
        params = {
            "kind": kind,
            "url": url(stack, deployment),
            "concurrency": CONCURRENCY,
            "seconds": seconds,
            "warmup": warmup,
            **extra,
        }
        result = await run_load(
            "bench.backend_load", params, timeout=seconds + warmup + LOAD_TIMEOUT_SLACK_SECONDS
        )
        return measurement(name, result)

    return measure


MEASURES: dict[str, Measure] = {
    GRAPHQL_FLOOR: _graphql_floor,
    ASYNCPG_INSERT: _backend(
        ASYNCPG_INSERT,
        "asyncpg-insert",
        lambda stack, deployment: deployment.database_url,
        pool_size=API_POOL_SIZE,
    ),
    ASYNCPG_UPDATE: _backend(
        ASYNCPG_UPDATE,
        "asyncpg-update",
        lambda stack, deployment: deployment.database_url,
        pool_size=PROCESSOR_POOL_SIZE,
    ),
    AMQP_PUBLISH: _backend(AMQP_PUBLISH, "amqp-publish", lambda stack, _: stack.rabbitmq_url),
    REDIS_GET: _backend(REDIS_GET, "redis-get", lambda stack, _: stack.redis_url),
    REDIS_PUBLISH: _backend(REDIS_PUBLISH, "redis-publish", lambda stack, _: stack.redis_url),
}


def baseline_scenario(names: Iterable[str] = ALL) -> Scenario:
    """A scenario measuring these baselines (in ALL's order) in one deployment: one API with
    the scenarios' settings and no processor, its database, the run's RabbitMQ and Redis."""
    wanted = set(names)
    unknown = wanted - set(ALL)
    if unknown:
        raise ValueError(f"unknown baselines: {', '.join(sorted(unknown))}")
    chosen = [name for name in ALL if name in wanted]

    async def run(stack: Stack, seconds: float) -> list[Measurement]:
        async with stack.deployment(apis=1, processors=0) as deployment:
            return [await MEASURES[name](stack, deployment, seconds) for name in chosen]

    return Scenario(
        name="baselines",
        title="the parts alone: GraphQL floor, asyncpg, aio-pika, redis-py",
        run=run,
    )


SCENARIO = baseline_scenario()


# The paired floor.

# Each of the two floors measures half the scenario's seconds: together they sample as long as
# the scenario does (the floor's throughput is steady enough for that), and a scenario's run
# takes twice its seconds rather than three times.
FLOOR_SHARE_OF_SECONDS = 0.5
# Keys in the paired scenario's extra: its run's floor (ops/s) and its ratio to it.
FLOOR_OPS = "floor_ops_s"
FLOOR_RATIO = "floor_ratio"
PUBLISH_WAIT_SECONDS = 120.0
PUBLISH_POLL_SECONDS = 0.1


def floor_name(name: str) -> str:
    """The name of the floor paired with measurement `name`: "create" -> "create:floor"."""
    return f"{name}:floor"


async def bracketed_by_floor(
    deployment: Deployment,
    name: str,
    seconds: float,
    measure: Callable[[], Awaitable[Measurement]],
) -> list[Measurement]:
    """`measure` (the scenario's measurement `name` on `deployment`) with `{ __typename }`
    measured on the same API right before and right after it, each for FLOOR_SHARE_OF_SECONDS
    of `seconds`: [the measurement with its ratio to the floor (against_floor), the floor
    (paired_floor)]. Whatever the scenario leaves running in the API must be waited out inside
    `measure`, so that the floor after it measures the floor, not the leftovers."""
    floor_seconds = seconds * FLOOR_SHARE_OF_SECONDS
    before = await measure_graphql(deployment, floor_name(name), query=FLOOR, seconds=floor_seconds)
    measured = await measure()
    after = await measure_graphql(deployment, floor_name(name), query=FLOOR, seconds=floor_seconds)
    floor = paired_floor(before, after)
    return [against_floor(measured, floor), floor]


def paired_floor(before: Measurement, after: Measurement) -> Measurement:
    """One run's floor from the floors measured before and after the scenario: the mean of
    their throughputs (each was measured for as long as the other), their latencies pooled,
    errors summed, the other extras averaged, and each throughput kept as an extra."""
    if before.scenario != after.scenario:
        raise ValueError(f"floors of two measurements: {before.scenario}, {after.scenario}")
    if before.throughput is None or after.throughput is None:
        raise ValueError(f"{before.scenario}: a floor without a throughput")
    extra = {
        key: before.extra[key] + after.extra[key]
        if key == "errors"
        else (before.extra[key] + after.extra[key]) / 2
        for key in before.extra
        if key in after.extra
    }
    return Measurement(
        scenario=before.scenario,
        throughput=(before.throughput + after.throughput) / 2,
        latencies_ms=before.latencies_ms + after.latencies_ms,
        # VmHWM is the peak since the API started: by the end of the floor after the
        # scenario it is the scenario's peak. The one before is the floor's own.
        peak_rss_kib=before.peak_rss_kib,
        extra={**extra, "before_ops_s": before.throughput, "after_ops_s": after.throughput},
    )


def against_floor(measured: Measurement, floor: Measurement) -> Measurement:
    """`measured` carrying its run's floor and its ratio to it (FLOOR_OPS, FLOOR_RATIO), the
    ratio as its figure: its median run is then the run of the median ratio, so the ratio the
    report gives is the median of the runs' own ratios (never one run's scenario over another
    run's floor), and that run's latencies are the ones judged with it."""
    if not measured.throughput or not floor.throughput:
        raise ValueError(f"{measured.scenario}: no throughput to compare with its floor")
    return Measurement(
        scenario=measured.scenario,
        throughput=measured.throughput,
        latencies_ms=measured.latencies_ms,
        peak_rss_kib=measured.peak_rss_kib,
        extra={
            **measured.extra,
            FLOOR_OPS: floor.throughput,
            FLOOR_RATIO: measured.throughput / floor.throughput,
        },
        figure=FLOOR_RATIO,
    )


def paired_ratio(medians: Mapping[str, Measurement], name: str) -> float | None:
    """The ratio of measurement `name` to its paired floor in its median run (for a check)."""
    measured = medians.get(name)
    return None if measured is None else measured.extra.get(FLOOR_RATIO)


async def wait_for_publishes(
    deployment: Deployment, *, timeout: float = PUBLISH_WAIT_SECONDS
) -> float:
    """Wait until every task in the deployment's database had its publish confirmed and
    return the seconds that took. createTask answers before its publish is confirmed; the API
    then publishes in the background and, once confirmed, pushes the task's outbox deadline
    from created_at + the dispatch grace out to the re-dispatch interval. A task still at its
    first deadline is work the API has yet to do."""
    grace = Settings.from_env(deployment.env).dispatch_grace_seconds
    query = (
        "SELECT count(*) FROM tasks WHERE dispatch_after <= created_at + make_interval(secs => $1)"
    )
    began = time.perf_counter()
    database = await asyncpg.connect(asyncpg_dsn(deployment.database_url))
    try:
        async with asyncio.timeout(timeout):
            # The database is the truth being waited for; nothing signals it (ASYNC110).
            while await database.fetchval(query, grace):  # noqa: ASYNC110
                await asyncio.sleep(PUBLISH_POLL_SECONDS)
    except TimeoutError:
        pending = await database.fetchval(query, grace)
        raise RuntimeError(f"{pending} publishes not confirmed after {timeout:g} s") from None
    finally:
        await database.close()
    return time.perf_counter() - began
