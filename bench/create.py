"""Scenario 1: createTask at 50 concurrent HTTP clients, against the GraphQL floor measured
beside it (bench.baselines.bracketed_by_floor)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from bench.baselines import bracketed_by_floor, floor_name, paired_ratio, wait_for_publishes
from bench.http_load import CONCURRENCY, CREATE, measure_graphql
from bench.model import Measurement
from bench.registry import Scenario, at_least, at_most, p99_ms
from bench.stack import Deployment, Stack

NAME = "create"
FLOOR = floor_name(NAME)
FLOOR_SHARE = 0.40
P99_LIMIT_MS = 50.0


async def run(stack: Stack, seconds: float) -> list[Measurement]:
    # The API alone (no processor): the floor it is compared with runs on this very API
    # process, so the ratio is the cost of createTask's own work (INSERT, publish with
    # confirm, cache write).
    async with stack.deployment(apis=1, processors=0) as deployment:

        async def measure() -> Measurement:
            return await _create(deployment, seconds)

        return await bracketed_by_floor(deployment, NAME, seconds, measure)


async def _create(deployment: Deployment, seconds: float) -> Measurement:
    # Each client is its own user, as 50 callers would be.
    measured = await measure_graphql(
        deployment,
        NAME,
        query=CREATE,
        variables=[{"input": {"inputData": "benchmark input"}}],
        subs=[f"bench-{n}" for n in range(CONCURRENCY)],
        seconds=seconds,
    )
    # createTask answers before its publish is confirmed: when the load stops, the API may
    # still be publishing (and deferring outbox deadlines) for the last requests. That work is
    # createTask's, done on the same CPU: the throughput counts the time it took too, so a
    # backlog built up during the window is not counted as speed (the rate of answers alone
    # stays in answered_ops_s). The floor after it then runs on an API with nothing left to do.
    waited = await wait_for_publishes(deployment)
    answered = measured.throughput or 0.0
    return replace(
        measured,
        throughput=answered * seconds / (seconds + waited),
        extra={**measured.extra, "answered_ops_s": answered, "publish_wait_s": waited},
    )


def check(medians: Mapping[str, Measurement]) -> Mapping[str, bool]:
    ratio = paired_ratio(medians, NAME)
    return {NAME: at_least(ratio, FLOOR_SHARE) and at_most(p99_ms(medians, NAME), P99_LIMIT_MS)}


SCENARIO = Scenario(
    name=NAME,
    title="createTask, 50 HTTP clients",
    run=run,
    baselines={NAME: FLOOR},
    targets={NAME: f">= {FLOOR_SHARE * 100:g} % of its floor, p99 <= {P99_LIMIT_MS:g} ms"},
    check=check,
)
