"""Scenario 3: notification latency, from the processor's commit of COMPLETED to the client's
receipt of the event, at 1, 1,000 and 10,000 concurrent subscriptions on one API process.

How: tasks are created first (no processor runs yet), the load processes subscribe to them
(many subscriptions per graphql-transport-ws connection) and report ready, and only then does a
processor start and complete the tasks, at a pace that spreads the completions over the time
budget. A sample is receipt time minus the task's finishedAt (the same machine's clock).
finishedAt is taken by the processor just *before* it runs its COMPLETED UPDATE, so every sample
overstates the commit-to-receipt time by that statement's own duration (its wait for a pooled
connection and its round trip to PostgreSQL). At 1 subscription the cycle create, subscribe,
complete is repeated for the time budget.

The figure redis_p50_ms / redis_p99_ms is the same measure taken by a direct Redis subscriber
beside the API (ws_client.RedisProbe): the part of the latency spent before the API had the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from bench.load import run_load
from bench.model import Measurement, percentile
from bench.registry import Scenario, at_most, p99_ms
from bench.stack import Deployment, Stack
from bench.ws_parent import (
    cpu_seconds,
    graphql_ws_url,
    open_files_limit,
    processes_for,
    raise_fd_limit,
    report_errors,
    split,
    subscriber_loads,
)

NAME = "notify"
SIZES = (1, 1_000, 10_000)
# The bulk sizes spread their subscriptions over this many tasks (10,000 = 10 per task), so
# that the event rate the processor produces is the same and only the fan-out grows.
BULK_TASKS = 1_000
PER_CONNECTION = 100
# The processor holds each task this long and its concurrency (pace()) sets the completion
# rate. Short work at a low concurrency makes completions come one or two at a time, as those
# of independent tasks would: 10 tasks held 0.1 s each (the same rate) complete in lockstep
# batches of 10, the last of each waiting for the other nine's writes (measured at 1,000
# subscriptions: p99 68 ms against 15 ms).
WORK_SECONDS = 0.02
# At 1 subscription: long enough for the subscription to be live before COMPLETED.
SINGLE_WORK_SECONDS = 0.1
SETUP_TIMEOUT_SECONDS = 180.0
RECHECK_SECONDS = 600.0
# Subscriptions a load process keeps waiting for their first message: more at once only
# measures the API's backlog (and at 1,000 its cache reads time out; see the report).
SUBSCRIBE_WINDOW = 100
# How much longer than the paced completion time the subscribers wait for the last event.
FINAL_SLACK_SECONDS = 30.0
STOP_GRACE_SECONDS = 15.0
P99_LIMITS_MS = {f"{NAME}@1000": 10.0, f"{NAME}@10000": 250.0}


def name_for(size: int) -> str:
    return f"{NAME}@{size}"


def pace(tasks: int, seconds: float, work_seconds: float = WORK_SECONDS) -> int:
    """Processor concurrency that completes `tasks` in about `seconds` when each takes
    `work_seconds` (the rate is concurrency / work_seconds)."""
    return max(1, round(tasks / max(seconds, 0.1) * work_seconds))


async def run(stack: Stack, seconds: float) -> list[Measurement]:
    env = {
        "MAX_SUBSCRIPTIONS_PER_CONNECTION": str(PER_CONNECTION),
        # The subscriptions are made within seconds of each other, so the product's 30-s
        # re-read of an idle subscription would fire for all of them at once, a storm of
        # database reads in the middle of the measurement that the set-up itself caused.
        "WATCH_RECHECK_SECONDS": str(RECHECK_SECONDS),
    }
    # The API processes inherit this process's open-files limit: 10,000 websockets need it.
    raise_fd_limit()
    # No processor in the deployment: each measurement starts its own once subscribed.
    async with stack.deployment(apis=1, processors=0, env=env) as deployment:
        measurements = [await _single(deployment, seconds)]
        for size in SIZES[1:]:
            measurements.append(await _bulk(deployment, size, seconds))
    return measurements


async def _single(deployment: Deployment, seconds: float) -> Measurement:
    api_url = deployment.api_urls[0]
    params = {
        "mode": "single",
        "http_url": f"{api_url}/graphql",
        "ws_url": graphql_ws_url(api_url),
        "token": deployment.token(),
        "seconds": seconds,
    }
    work = {"TASK_DELAY_SECONDS": str(SINGLE_WORK_SECONDS), "PROCESSOR_CONCURRENCY": "1"}
    async with processor(deployment.env, work):
        result = await run_load("bench.ws_load", params, timeout=seconds + 60)
    return _measurement(name_for(1), [result], deployment, extra={})


async def _bulk(deployment: Deployment, size: int, seconds: float) -> Measurement:
    api_url = deployment.api_urls[0]
    token = deployment.token()
    tasks = min(size, BULK_TASKS)
    created = await run_load(
        "bench.ws_load",
        {"mode": "create", "http_url": f"{api_url}/graphql", "token": token, "count": tasks},
        timeout=SETUP_TIMEOUT_SECONDS,
    )
    task_ids: list[str] = created["task_ids"]
    if len(task_ids) < tasks:
        raise RuntimeError(f"created {len(task_ids)} of {tasks} tasks: {created['first_error']}")
    api_pid = deployment.api_pids[0]
    params = [
        {
            "ws_url": graphql_ws_url(api_url),
            "token": token,
            "task_ids": share,
            "subs_per_task": size // tasks,
            "per_connection": PER_CONNECTION,
            "subscribe_window": SUBSCRIBE_WINDOW,
            # One load process also watches the events at Redis (see RedisProbe).
            "probe_redis_url": deployment.env["REDIS_URL"] if index == 0 else "",
            "probe_prefix": deployment.env["CHANNEL_PREFIX"],
            "timeout": SETUP_TIMEOUT_SECONDS,
            "wait_seconds": 3 * seconds + FINAL_SLACK_SECONDS,
        }
        for index, share in enumerate(split(task_ids, processes_for(size)))
    ]
    async with subscriber_loads(
        params,
        timeout=SETUP_TIMEOUT_SECONDS + 3 * seconds + 2 * FINAL_SLACK_SECONDS,
        ready_timeout=SETUP_TIMEOUT_SECONDS,
    ) as (ready, loads):
        rss_subscribed = deployment.rss_kib(api_pid)
        cpu_before = cpu_seconds(api_pid)
        work = {
            "TASK_DELAY_SECONDS": str(WORK_SECONDS),
            "PROCESSOR_CONCURRENCY": str(pace(tasks, seconds)),
        }
        async with processor(deployment.env, work):
            results = list(await asyncio.gather(*loads))
        api_cpu = cpu_seconds(api_pid) - cpu_before
    at_redis = [sample for result in results for sample in result.get("redis_latencies_ms", ())]
    extra = {
        # The processor's share of the latency: finishedAt to the event's arrival at Redis.
        "redis_p50_ms": percentile(at_redis, 50) or 0.0,
        "redis_p99_ms": percentile(at_redis, 99) or 0.0,
        "setup_seconds": max(float(item["setup_seconds"]) for item in ready),
        "api_rss_subscribed_kib": rss_subscribed,
        "api_cpu_seconds": api_cpu,
        "api_fd_limit": float(open_files_limit(api_pid)),
        "subs_per_task": float(size // tasks),
    }
    return _measurement(name_for(size), results, deployment, extra=extra)


def _measurement(
    name: str, results: list[dict[str, Any]], deployment: Deployment, *, extra: dict[str, float]
) -> Measurement:
    latencies = [sample for result in results for sample in result["latencies_ms"]]
    totals = {
        key: float(sum(result.get(key, 0) for result in results))
        for key in (
            "subscriptions",
            "connections",
            "pushed",
            "late",
            "missing",
            "errors",
            "messages",
            "load_cpu_seconds",
        )
    }
    report_errors(name, results)
    return Measurement(
        scenario=name,
        throughput=None,
        latencies_ms=tuple(latencies),
        peak_rss_kib=deployment.peak_rss_kib(deployment.api_pids[0]),
        extra={**totals, "load_processes": float(len(results)), **extra},
    )


@asynccontextmanager
async def processor(env: Mapping[str, str], overrides: Mapping[str, str]) -> AsyncIterator[int]:
    """A `taskwire processor` of the deployment's settings plus `overrides`, started now (the
    deployment's own processors start with it, before any task exists) and stopped by pid.
    RuntimeError with its log when it exits on its own."""
    with tempfile.TemporaryFile() as log:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "taskwire.cli",
            "processor",
            env={**os.environ, **env, **overrides},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            yield child.pid
            if child.returncode is not None:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"processor exited {child.returncode}:\n{tail}")
        finally:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(child.wait(), STOP_GRACE_SECONDS)
                except TimeoutError:
                    child.kill()
                    await child.wait()


def check(medians: Mapping[str, Measurement]) -> Mapping[str, bool]:
    return {name: at_most(p99_ms(medians, name), limit) for name, limit in P99_LIMITS_MS.items()}


SCENARIO = Scenario(
    name=NAME,
    title="notification latency, commit of COMPLETED to receipt, one API process",
    run=run,
    targets={name: f"p99 <= {limit:g} ms" for name, limit in P99_LIMITS_MS.items()},
    check=check,
)
