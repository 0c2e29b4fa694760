"""Scenario 6: push versus polling. 1,000 clients each wait for their own task to finish, by a
subscription or by polling task(id) once a second; counted per finished task: the requests the
clients made and the database queries (and Redis commands) the deployment ran for them.

Counting database queries: what waiting costs the database is reads of a task's snapshot (a
task(id) that misses the cache, a subscription's first read on a miss and its re-reads), and
nothing else reads one: createTask inserts, the processor's transitions are UPDATE ...
RETURNING, the dispatcher selects ids. pg_stat_statements (preloaded by tests/servers) counts
those reads exactly: `db_queries_per_task`. For context, `db_statements_per_task_total` is every
statement the deployment ran (PostgreSQL's `xact_commit`: each statement is a transaction in
autocommit), the work's own included; it cannot be split by subtracting a phase with nobody
waiting, since concurrent transitions share statements (taskwire.batching) as load allows. The
counters are read from another database, after the deployment's sessions were ended so that
every backend reported (see Counters). Redis commands are counted from `INFO commandstats`
(server-wide: exact when the Redis is the bench's own), less the idle phase's per task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from redis.asyncio import Redis

from bench.load import run_load
from bench.model import Measurement
from bench.registry import Scenario
from bench.stack import HISTORY_OWNER, Deployment, Stack
from bench.ws_parent import graphql_ws_url
from taskwire.models import TERMINAL

NAME = "push-vs-poll"
PUSH, POLL, IDLE = f"{NAME}:push", f"{NAME}:poll", f"{NAME}:idle"
CLIENTS = 1_000
# Each task takes this long, so that a poller asks a few times; the processor holds all of them
# at once (PROCESSOR_CONCURRENCY), as 1,000 clients waiting at the same time would need.
WORK_SECONDS = 3.0
POLL_SECONDS = 1.0
SHARE_LIMIT = 0.01
# Below this many extra queries per task (one per hundred tasks) a figure is noise.
NOISE_PER_TASK = 0.01
PHASE_TIMEOUT_SECONDS = 180.0
# A new pooled connection runs one statement of its own (the driver's type set-up; measured:
# 30 statements on a pool that opened 12 connections counted 42), whatever opened it. The
# pools open and close connections with the load (beyond pool_size they close on return), so
# this is counted apart: db_sessions_per_task.
SESSION_SETUP_QUERIES = 1
FINISH_POLL_SECONDS = 0.5
FLUSH_POLL_SECONDS = 0.05
FLUSH_TIMEOUT_SECONDS = 10.0
# The store's reads of a task snapshot (taskwire.statements GET and GET_BY_KEY) begin so, and
# no other statement does.
SNAPSHOT_READ = "SELECT tasks.id, tasks.status, tasks.input_data,%"
# Commands that are the measuring itself or keep-alive, not work for a client.
UNCOUNTED_REDIS = frozenset({"info", "ping"})


def per_task(delta: float, own: float, tasks: int) -> float:
    """A counter's increase over a phase, less what the measuring itself added, per task."""
    if tasks < 1:
        raise ValueError("no tasks finished")
    return (delta - own) / tasks


def share(push_extra: float, poll_extra: float) -> float | None:
    """Push's extra per-task cost as a fraction of polling's; None when polling's is noise."""
    if poll_extra < NOISE_PER_TASK:
        return None
    return max(push_extra, 0.0) / poll_extra


def push_is_cheap(push_extra: float, poll_extra: float) -> bool:
    """The target: push needs <= 1 % of polling's queries per finished task. When polling
    itself needs none beyond the work (its reads hit the cache), push meets it by needing
    none either (under one query per hundred tasks)."""
    ratio = share(push_extra, poll_extra)
    return push_extra < NOISE_PER_TASK if ratio is None else ratio <= SHARE_LIMIT


def redis_calls(commandstats: Mapping[str, Any]) -> int:
    """Calls counted by INFO commandstats, less the measuring's own (INFO) and keep-alives."""
    total = 0
    for key, stats in commandstats.items():
        command = key.removeprefix("cmdstat_").lower()
        if command not in UNCOUNTED_REDIS and isinstance(stats, Mapping):
            total += int(stats.get("calls", 0))
    return total


@dataclass(frozen=True, slots=True)
class Phase:
    how: str
    result: dict[str, Any]
    queries: float  # database statements, less this scenario's own and sessions' set-up
    reads: float  # reads of a task snapshot (pg_stat_statements)
    sessions: float  # database sessions the deployment opened
    redis_commands: float
    finished: int


class Counters:
    """The deployment's database statements, sessions and Redis commands, and its final tasks.

    PostgreSQL 15 backends report their counts at the end of a transaction at most once a
    second, and an idle one not at all until it runs again or exits (measured: 90 statements on
    three idle connections stayed unreported for 14 s, until they closed). So each reading
    first ends the deployment's database sessions (its pools reconnect on next use, as after a
    server restart: pool_pre_ping) and reads the counter after they exited. Every phase thus
    starts with its pools empty, the idle phase included.
    """

    def __init__(self, stack: Stack, deployment: Deployment) -> None:
        self.database = sa.make_url(deployment.database_url).database or ""
        self.admin_dsn = _dsn(stack.postgres_admin_url)
        self.dsn = _dsn(deployment.database_url)
        self.redis = Redis.from_url(stack.redis_url)
        self.own_queries = 0
        self.admin: Any = None

    async def __aenter__(self) -> Counters:
        self.admin = await asyncpg.connect(self.admin_dsn)
        if await self.admin.fetchval("SELECT current_database()") == self.database:
            raise RuntimeError("the admin URL must name another database than the deployment's")
        try:
            await self.admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await self.admin.fetchval("SELECT count(*) FROM pg_stat_statements")
        except asyncpg.PostgresError as exc:
            raise RuntimeError(
                f"push-vs-poll counts reads with pg_stat_statements, preloaded: {exc}"
            ) from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.admin is not None:
            await self.admin.close()
        await self.redis.aclose()

    async def read(self) -> tuple[int, int, int, int]:
        """(statements, snapshot reads, sessions, Redis commands) so far, every backend's
        counts reported."""
        deadline = time.monotonic() + FLUSH_TIMEOUT_SECONDS
        while True:
            # Ends only the sessions of the deployment's own (throwaway) database.
            live = await self.admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.database,
            )
            if not live or time.monotonic() > deadline:
                break
            await asyncio.sleep(FLUSH_POLL_SECONDS)
        row = await self.admin.fetchrow(
            "SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = $1",
            self.database,
        )
        reads = await self.admin.fetchval(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = $1 AND s.query LIKE $2",
            self.database,
            SNAPSHOT_READ,
        )
        redis = redis_calls(await self.redis.info("commandstats"))
        return int(row["xact_commit"]), int(reads), int(row["sessions"]), redis

    async def wait_finished(self, total: int, timeout: float) -> int:
        """Wait until `total` tasks of the deployment are final; returns how many are. Its own
        statements are counted (to be subtracted) on a connection it closes, so that they are
        reported before the next reading."""
        deadline = time.monotonic() + timeout
        connection = await asyncpg.connect(self.dsn)
        self.own_queries += SESSION_SETUP_QUERIES  # measured: a bare asyncpg session's too
        try:
            while True:
                self.own_queries += 1  # the SELECT below: one statement on the measured database
                done = int(
                    await connection.fetchval(
                        "SELECT count(*) FROM tasks WHERE status = ANY($1::text[]) AND owner <> $2",
                        [status.value for status in TERMINAL],
                        HISTORY_OWNER,
                    )
                )
                if done >= total or time.monotonic() > deadline:
                    return done
                await asyncio.sleep(FINISH_POLL_SECONDS)
        finally:
            await connection.close()


def _dsn(url: str) -> str:
    """A SQLAlchemy postgresql+asyncpg URL as a DSN that asyncpg takes."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def run(stack: Stack, seconds: float) -> list[Measurement]:
    env = {"TASK_DELAY_SECONDS": str(WORK_SECONDS), "PROCESSOR_CONCURRENCY": str(CLIENTS)}
    async with (
        stack.deployment(apis=1, processors=1, env=env) as deployment,
        Counters(stack, deployment) as counters,
    ):
        phases: dict[str, Phase] = {}
        for how in ("none", "push", "poll"):
            phases[how] = await _phase(deployment, counters, how, CLIENTS * (len(phases) + 1))
    return _measurements(phases)


async def _phase(deployment: Deployment, counters: Counters, how: str, total: int) -> Phase:
    api_url = deployment.api_urls[0]
    own_before = counters.own_queries
    commits_before, reads_before, sessions_before, redis_before = await counters.read()
    result = await run_load(
        "bench.ws_load",
        {
            "mode": "wait",
            "how": how,
            "http_url": f"{api_url}/graphql",
            "ws_url": graphql_ws_url(api_url),
            "token": deployment.token(),
            "clients": CLIENTS,
            "poll_interval": POLL_SECONDS,
            "task_timeout": PHASE_TIMEOUT_SECONDS / 2,
        },
        timeout=PHASE_TIMEOUT_SECONDS,
    )
    finished = await counters.wait_finished(total, PHASE_TIMEOUT_SECONDS / 2)
    commits_after, reads_after, sessions_after, redis_after = await counters.read()
    sessions = sessions_after - sessions_before - 1  # less wait_finished's own
    own = counters.own_queries - own_before
    return Phase(
        how=how,
        result=result,
        # Less one per new session: its set-up query (see SESSION_SETUP_QUERIES).
        queries=commits_after - commits_before - own - sessions * SESSION_SETUP_QUERIES,
        reads=reads_after - reads_before,
        sessions=sessions,
        redis_commands=redis_after - redis_before,
        finished=finished - (total - CLIENTS),
    )


def _measurements(phases: Mapping[str, Phase]) -> list[Measurement]:
    idle = phases["none"]
    base_queries = per_task(idle.queries, 0, idle.finished)
    base_reads = per_task(idle.reads, 0, idle.finished)
    base_redis = per_task(idle.redis_commands, 0, idle.finished)
    extras: dict[str, dict[str, float]] = {}
    for how in ("push", "poll"):
        phase = phases[how]
        result = phase.result
        creates = len(result["task_ids"])
        # What waiting cost: task(id) requests (the HTTP count less the createTask calls),
        # websocket upgrades and subscribe operations.
        waiting = result["requests"] - creates + result["upgrades"] + result["subscribes"]
        queries = per_task(phase.queries, 0, phase.finished)
        reads = per_task(phase.reads, 0, phase.finished)
        redis = per_task(phase.redis_commands, 0, phase.finished)
        extras[how] = {
            "requests_per_task": waiting / max(phase.finished, 1),
            "messages_per_task": result["messages"] / max(phase.finished, 1),
            "db_queries_per_task": reads,
            "db_statements_per_task_total": queries,
            "db_sessions_per_task": phase.sessions / max(phase.finished, 1),
            "redis_commands_per_task": redis - base_redis,
            "finished": float(phase.finished),
            "errors": float(result["errors"] + result["client_errors"]),
            "seconds": float(result["seconds"]),
        }
    push_share = share(extras["push"]["db_queries_per_task"], extras["poll"]["db_queries_per_task"])
    if push_share is not None:
        extras["push"]["db_share_of_polling_percent"] = push_share * 100
    measurements = [
        Measurement(
            scenario=IDLE,
            throughput=None,
            extra={
                "db_queries_per_task": base_reads,
                "db_statements_per_task_total": base_queries,
                "db_sessions_per_task": idle.sessions / max(idle.finished, 1),
                "redis_commands_per_task": base_redis,
                "finished": float(idle.finished),
            },
        )
    ]
    for how, name in (("push", PUSH), ("poll", POLL)):
        # Latency: from the processor's finishedAt to the moment the client knew.
        measurements.append(
            Measurement(
                scenario=name,
                throughput=None,
                latencies_ms=tuple(phases[how].result["latencies_ms"]),
                extra=extras[how],
            )
        )
    return measurements


def check(medians: Mapping[str, Measurement]) -> Mapping[str, bool]:
    push, poll = medians.get(PUSH), medians.get(POLL)
    if push is None or poll is None:
        return {PUSH: False}
    met = push_is_cheap(push.extra["db_queries_per_task"], poll.extra["db_queries_per_task"])
    return {PUSH: met}


SCENARIO = Scenario(
    name=NAME,
    title="1,000 clients waiting for their task: subscription vs polling once a second",
    run=run,
    targets={PUSH: "DB queries per finished task <= 1 % of polling's"},
    check=check,
)
