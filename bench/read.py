"""Scenario 2: task(id) of cached tasks at 50 concurrent HTTP clients, against the floor."""

from __future__ import annotations

from collections.abc import Mapping

from bench.baselines import GRAPHQL_FLOOR
from bench.http_load import READ, create_tasks, measure_graphql
from bench.model import Measurement
from bench.registry import Scenario, at_least, throughput_ratio
from bench.stack import Stack

NAME = "read"
FLOOR_SHARE = 0.80
# Tasks read round-robin; createTask cached each of them (RESULT_TTL_SECONDS, 60 s by default,
# outlives the measurement).
TASKS = 200
READER = "bench-reader"


async def run(stack: Stack, seconds: float) -> list[Measurement]:
    # No processor: the tasks stay PENDING and cached, with nothing evicting or rewriting them.
    async with stack.deployment(apis=1, processors=0) as deployment:
        ids = await create_tasks(deployment, TASKS, sub=READER)
        return [
            await measure_graphql(
                deployment,
                NAME,
                query=READ,
                variables=[{"id": task_id} for task_id in ids],
                subs=[READER],
                reject=['"errors"', '"task":null'],
                seconds=seconds,
            )
        ]


def check(medians: Mapping[str, Measurement]) -> Mapping[str, bool]:
    return {NAME: at_least(throughput_ratio(medians, NAME, GRAPHQL_FLOOR), FLOOR_SHARE)}


SCENARIO = Scenario(
    name=NAME,
    title="task(id) of a cached task, 50 HTTP clients",
    run=run,
    baselines={NAME: GRAPHQL_FLOOR},
    targets={NAME: ">= 80 % of floor"},
    check=check,
)
