"""The baselines: what Taskwire's own parts do on this machine, measured in the same run and
at the same concurrency as the scenarios that are compared with them."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

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
