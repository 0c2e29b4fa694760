"""Scenario 2: task(id) of cached tasks at 50 concurrent HTTP clients, against the GraphQL
floor measured beside it (bench.baselines.bracketed_by_floor)."""

from __future__ import annotations

from collections.abc import Mapping

from bench.baselines import bracketed_by_floor, floor_name, paired_ratio, wait_for_publishes
from bench.http_load import READ, create_tasks, measure_graphql
from bench.model import Measurement
from bench.registry import Scenario, at_least
from bench.stack import Stack

NAME = "read"
FLOOR = floor_name(NAME)
FLOOR_SHARE = 0.80
# Tasks read round-robin; createTask cached each of them. Should an entry outlive its
# RESULT_TTL_SECONDS (60 s by default) in a long run, the read-through caches it again: one
# miss per task among tens of thousands of hits.
TASKS = 200
READER = "bench-reader"


async def run(stack: Stack, seconds: float) -> list[Measurement]:
    # No processor: the tasks stay PENDING and cached, with nothing evicting or rewriting them.
    async with stack.deployment(apis=1, processors=0) as deployment:
        ids = await create_tasks(deployment, TASKS, sub=READER)
        # Before the first floor: the API publishes the new tasks in the background.
        await wait_for_publishes(deployment)

        async def measure() -> Measurement:
            # Reads leave nothing running in the API: the floor after may follow at once.
            return await measure_graphql(
                deployment,
                NAME,
                query=READ,
                variables=[{"id": task_id} for task_id in ids],
                subs=[READER],
                reject=['"errors"', '"task":null'],
                seconds=seconds,
            )

        return await bracketed_by_floor(deployment, NAME, seconds, measure)


def check(medians: Mapping[str, Measurement]) -> Mapping[str, bool]:
    return {NAME: at_least(paired_ratio(medians, NAME), FLOOR_SHARE)}


SCENARIO = Scenario(
    name=NAME,
    title="task(id) of a cached task, 50 HTTP clients",
    run=run,
    baselines={NAME: FLOOR},
    targets={NAME: f">= {FLOOR_SHARE * 100:g} % of its floor"},
    check=check,
)
