"""Scenario 7: scale-out on one machine. Two API processes and three processors; clients create
tasks through API 2 and wait for them on a subscription to API 1, so every event crosses
processes (processor -> Redis -> API 1). Measured: create-to-COMPLETED-received latency and the
rate of tasks done that way, and whether every task's final state arrived (reported as the
target, never raised: the bench does not fail on a result).
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.load import run_load
from bench.model import Measurement, percentile
from bench.registry import Scenario
from bench.stack import Stack
from bench.ws_parent import cpu_seconds, graphql_ws_url

NAME = "scale-out"
CLIENTS = 100
# Each task takes this long: a subscription made on API 1 right after createTask answered on
# API 2 is live before COMPLETED, so the final state travels as an event (a subscription made
# after it gets it as the snapshot, counted as "late"; at 0.25 s, 8 % were, the machine being
# saturated).
WORK_SECONDS = 0.5
LOAD_SLACK_SECONDS = 120.0


def all_arrived(result: Mapping[str, float]) -> bool:
    """Every created task's COMPLETED reached its subscriber, with no error on the way."""
    return (
        result["created"] > 0
        and result["completed"] == result["created"]
        and result["missing"] == 0
        and result["errors"] == 0
        and result["client_errors"] == 0
    )


async def run(stack: Stack, seconds: float) -> list[Measurement]:
    env = {"TASK_DELAY_SECONDS": str(WORK_SECONDS)}
    async with stack.deployment(apis=2, processors=3, env=env) as deployment:
        subscribe_on, create_on = deployment.api_urls[0], deployment.api_urls[1]
        roles = {"api": deployment.api_pids, "processor": deployment.processor_pids}
        cpu_before = {role: _cpu(pids) for role, pids in roles.items()}
        result = await run_load(
            "bench.ws_load",
            {
                "mode": "relay",
                "create_url": f"{create_on}/graphql",
                "ws_url": graphql_ws_url(subscribe_on),
                "token": deployment.token(),
                "clients": CLIENTS,
                "seconds": seconds,
            },
            timeout=seconds + LOAD_SLACK_SECONDS,
        )
        peak = max(deployment.peak_rss_kib(pid) for pid in deployment.api_pids)
        # Where a task's CPU goes: both API processes together, the three processors together.
        done = max(float(result["completed"]), 1.0)
        cpu_ms = {
            f"{role}_cpu_ms_per_task": (_cpu(pids) - cpu_before[role]) * 1000 / done
            for role, pids in roles.items()
        }
    counts = {
        key: float(result[key])
        for key in ("created", "completed", "pushed", "late", "missing", "errors", "client_errors")
    }
    notify = result["notify_latencies_ms"]
    return [
        Measurement(
            scenario=NAME,
            throughput=float(result["throughput"]),
            latencies_ms=tuple(result["latencies_ms"]),
            peak_rss_kib=peak,
            extra={
                **counts,
                "all_arrived": 1.0 if all_arrived(counts) else 0.0,
                # The cross-process notification alone: finishedAt to receipt on API 1.
                "notify_p50_ms": percentile(notify, 50) or 0.0,
                "notify_p99_ms": percentile(notify, 99) or 0.0,
                **cpu_ms,
                "load_cpu_ms_per_task": float(result["load_cpu_seconds"]) * 1000 / done,
                "clients": float(CLIENTS),
                "work_seconds": WORK_SECONDS,
            },
        )
    ]


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def check(medians: Mapping[str, Measurement]) -> Mapping[str, bool]:
    measured = medians.get(NAME)
    return {NAME: measured is not None and measured.extra.get("all_arrived") == 1.0}


SCENARIO = Scenario(
    name=NAME,
    title="2 APIs + 3 processors: create on API 2, COMPLETED received on API 1",
    run=run,
    targets={NAME: "every event arrives"},
    check=check,
)
