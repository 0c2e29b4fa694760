"""Scenario 1: createTask at 50 concurrent HTTP clients, against the GraphQL floor."""

from __future__ import annotations

from collections.abc import Mapping

from bench.baselines import GRAPHQL_FLOOR
from bench.http_load import CONCURRENCY, CREATE, measure_graphql
from bench.model import Measurement
from bench.registry import Scenario, at_least, at_most, p99_ms, throughput_ratio
from bench.stack import Stack

NAME = "create"
FLOOR_SHARE = 0.40
P99_LIMIT_MS = 50.0


async def run(stack: Stack, seconds: float) -> list[Measurement]:
    # The API alone (no processor): the same deployment shape as the floor it is compared
    # with, so the ratio is the cost of createTask's own work (INSERT, publish with confirm,
    # cache write). Each client is its own user, as 50 callers would be.
    async with stack.deployment(apis=1, processors=0) as deployment:
        return [
            await measure_graphql(
                deployment,
                NAME,
                query=CREATE,
                variables=[{"input": {"inputData": "benchmark input"}}],
                subs=[f"bench-{n}" for n in range(CONCURRENCY)],
                seconds=seconds,
            )
        ]


def check(medians: Mapping[str, Measurement]) -> Mapping[str, bool]:
    ratio = throughput_ratio(medians, NAME, GRAPHQL_FLOOR)
    return {NAME: at_least(ratio, FLOOR_SHARE) and at_most(p99_ms(medians, NAME), P99_LIMIT_MS)}


SCENARIO = Scenario(
    name=NAME,
    title="createTask, 50 HTTP clients",
    run=run,
    baselines={NAME: GRAPHQL_FLOOR},
    targets={NAME: ">= 40 % of floor, p99 <= 50 ms"},
    check=check,
)
