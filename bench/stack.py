"""The servers of one bench run (started once) and the Taskwire deployments the scenarios
start on them: real `taskwire api` and `taskwire processor` processes, as in production."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import MappingProxyType

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractConnection

from bench.backend_load import asyncpg_dsn
from taskwire.queue import DELAY_BUCKETS_MS
from taskwire.rabbitmq import delay_queue_name
from taskwire.settings import Settings
from taskwire.tokens import mint_token
from tests.servers import KINDS, ServerPool
from tests.support.databases import fresh_postgres_database
from tests.support.processes import (
    TaskwireProcess,
    free_port,
    run_to_completion,
    wait_until_ready,
)

# A bench-only HS256 secret (32+ bytes, as the verifier requires); never a real one.
BENCH_JWT_SECRET = "taskwire-bench-only-secret-0123456789abcdef"
TOKEN_TTL_SECONDS = 6 * 3600
NO_ENV: Mapping[str, str] = MappingProxyType({})
READY_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Every deployment starts as one that has been running: its tasks table holds a history of
# finished tasks (of an owner no scenario uses) and has statistics. A new table has none until
# autovacuum's first ANALYZE, a minute or more after its first rows, and meanwhile PostgreSQL
# plans the store's batched statements as scans of a table it believes a page long, and keeps
# those plans for its prepared statements while the table grows. On an empty table the
# createTask scenario's outbox deferrals took 43 ms per batch and PostgreSQL 55 % of a core,
# against 2 ms and 9 % with this history: the measurement is of the first minute's planner.
HISTORY_TASKS = 20_000
HISTORY_OWNER = "bench-history"
_HISTORY = f"""
INSERT INTO tasks (id, status, input_data, result, attempts, attempt_limit, version, created_at,
                   updated_at, started_at, finished_at, dispatch_after, owner)
SELECT gen_random_uuid(), 'COMPLETED', 'history', 'yrotsih', 1, 3, 3, at, at, at, at,
       at + interval '1 year', '{HISTORY_OWNER}'
FROM (SELECT now() - interval '1 day' AS at) AS day, generate_series(1, {HISTORY_TASKS})
"""


class Stack:
    """The servers for one bench run (started once)."""

    def __init__(
        self, *, postgres_admin_url: str, redis_url: str, rabbitmq_url: str, run_dir: Path
    ) -> None:
        self.postgres_admin_url = postgres_admin_url
        self.redis_url = redis_url
        self.rabbitmq_url = rabbitmq_url
        self.run_dir = run_dir

    def deployment(
        self, *, apis: int = 1, processors: int = 1, env: Mapping[str, str] = NO_ENV
    ) -> AbstractAsyncContextManager[Deployment]:
        """A fresh migrated database, a unique queue and channel prefix, `apis` API processes
        (each answering /readyz) and `processors` processors (each consuming), stopped by pid
        on exit; `env` adds or overrides settings for all of them."""
        return _deployment(self, apis=apis, processors=processors, env=env)


@asynccontextmanager
async def open_stack() -> AsyncIterator[Stack]:
    """Start PostgreSQL, Redis and RabbitMQ on loopback (as the test command does) for the
    length of the block; they are stopped and their directory removed afterwards."""
    pool = ServerPool()
    try:
        await asyncio.to_thread(pool.start_shared, KINDS)
        yield Stack(
            postgres_admin_url=pool.shared("postgres").url,
            redis_url=pool.shared("redis").url,
            rabbitmq_url=pool.shared("rabbitmq").url,
            run_dir=pool.run_dir,
        )
    finally:
        await asyncio.to_thread(pool.close)


class Deployment:
    """One running Taskwire deployment: its database, API URLs and process ids."""

    def __init__(self, *, database_url: str, env: Mapping[str, str], workdir: Path) -> None:
        self.database_url = database_url
        self.env: Mapping[str, str] = MappingProxyType(dict(env))
        self.workdir = workdir
        self.api_urls: list[str] = []
        self._apis: list[TaskwireProcess] = []
        self._processors: list[TaskwireProcess] = []

    @property
    def api_pids(self) -> list[int]:
        return [_pid(process) for process in self._apis]

    @property
    def processor_pids(self) -> list[int]:
        return [_pid(process) for process in self._processors]

    def token(self, sub: str = "bench") -> str:
        """A valid bearer token of user `sub` for this deployment."""
        settings = Settings(jwt_secret=BENCH_JWT_SECRET)
        return mint_token(settings, sub, ttl_seconds=TOKEN_TTL_SECONDS)

    def rss_kib(self, pid: int) -> float:
        """Current resident memory of a process (VmRSS)."""
        return _status_kib(pid, "VmRSS")

    def peak_rss_kib(self, pid: int) -> float:
        """Peak resident memory of a process since it started (VmHWM)."""
        return _status_kib(pid, "VmHWM")

    def cpu_seconds(self, pid: int) -> float:
        """User plus system CPU time a process has used so far."""
        stat = Path(f"/proc/{pid}/stat").read_text()
        # "pid (comm) state ...": comm may hold spaces, so count fields after its ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    async def add_apis(self, count: int) -> list[int]:
        """Start `count` more API processes and wait until each answers /readyz."""
        if count < 1:
            return []
        started = []
        for _ in range(count):
            port = free_port()
            name = f"api-{len(self._apis) + 1}"
            process = self._process(name, ["api", "--port", str(port)])
            self._apis.append(process)
            self.api_urls.append(f"http://127.0.0.1:{port}")
            started.append(process)
        try:
            await asyncio.gather(
                *(
                    wait_until_ready(url, process, timeout=READY_TIMEOUT_SECONDS)
                    for url, process in zip(self.api_urls[-count:], started, strict=True)
                )
            )
        except AssertionError as exc:
            raise RuntimeError(str(exc)) from None
        return [_pid(process) for process in started]

    async def add_processors(self, count: int) -> list[int]:
        """Start `count` more processors and wait until the queue has a consumer for each
        processor of the deployment: work published from now on is theirs."""
        if count < 1:
            return []
        started = [
            self._process(f"processor-{len(self._processors) + n}", ["processor"])
            for n in range(1, count + 1)
        ]
        self._processors.extend(started)
        await self._wait_consuming(len(self._processors))
        return [_pid(process) for process in started]

    def _process(self, name: str, args: list[str]) -> TaskwireProcess:
        process = TaskwireProcess(name, args, env=self.env, log_dir=self.workdir, cwd=self.workdir)
        process.start()
        return process

    async def _wait_consuming(self, consumers: int) -> None:
        queue = self.env["QUEUE_NAME"]
        connection = await aio_pika.connect(self.env["RABBITMQ_URL"])
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                while (await _consumer_count(connection, queue)) < consumers:
                    for process in self._processors:
                        if not process.running:
                            raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
                    await asyncio.sleep(POLL_SECONDS)
        except TimeoutError:
            tails = "\n".join(process.log_tail() for process in self._processors)
            raise RuntimeError(
                f"processors not consuming after {READY_TIMEOUT_SECONDS:g} s:\n{tails}"
            ) from None
        finally:
            await connection.close()

    async def stop(self) -> None:
        """SIGTERM every process (SIGKILL after a grace), in parallel."""
        processes = [*self._apis, *self._processors]
        await asyncio.gather(*(asyncio.to_thread(process.stop) for process in processes))


@asynccontextmanager
async def _deployment(
    stack: Stack, *, apis: int, processors: int, env: Mapping[str, str]
) -> AsyncIterator[Deployment]:
    tag = uuid.uuid4().hex[:10]
    workdir = Path(tempfile.mkdtemp(prefix=f"deployment-{tag}-", dir=stack.run_dir))
    async with fresh_postgres_database(stack.postgres_admin_url) as database_url:
        full_env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": stack.redis_url,
            "RABBITMQ_URL": stack.rabbitmq_url,
            "QUEUE_NAME": f"taskwire.bench.{tag}",
            "CHANNEL_PREFIX": f"taskwire-bench-{tag}",
            "AUTH_MODE": "jwt",
            "JWT_SECRET": BENCH_JWT_SECRET,
            # Off: the bench measures throughput, not the limiter's refusals.
            "RATE_LIMIT_PER_MINUTE": "0",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        await asyncio.to_thread(run_to_completion, ["migrate"], env=full_env, cwd=workdir)
        await _add_history(database_url)
        deployment = Deployment(database_url=database_url, env=full_env, workdir=workdir)
        try:
            await _all_or_none(deployment.add_apis(apis), deployment.add_processors(processors))
            yield deployment
        finally:
            await deployment.stop()
            await _delete_topology(stack.rabbitmq_url, full_env["QUEUE_NAME"])


async def _add_history(database_url: str) -> None:
    database = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await database.execute(_HISTORY)
        await database.execute("ANALYZE tasks")
    finally:
        await database.close()


async def _all_or_none(*starting: Awaitable[list[int]]) -> None:
    """Await all; when one fails, cancel the others (no orphaned waits) and raise its error."""
    futures = [asyncio.ensure_future(step) for step in starting]
    try:
        await asyncio.gather(*futures)
    except BaseException:
        for future in futures:
            future.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
        raise


async def _consumer_count(connection: AbstractConnection, queue: str) -> int:
    """Consumers on `queue`; 0 while it does not exist yet (the first process declares it)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        return 0  # 404: the broker closed the channel already
    try:
        return declared.declaration_result.consumer_count or 0
    finally:
        await channel.close()


async def _delete_topology(rabbitmq_url: str, queue: str) -> None:
    """Delete the deployment's queues: a run starts dozens of deployments, each with 43 quorum
    queues (main, dead letters, the delay ladder), which would otherwise pile up on the broker
    and slow the later scenarios down."""
    names = [queue, f"{queue}.dead", *(delay_queue_name(queue, ms) for ms in DELAY_BUCKETS_MS)]
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel: AbstractChannel = await connection.channel()
        for name in names:
            if channel.is_closed:
                channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                await channel.queue_delete(name)
        if channel.is_closed:
            channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
            await channel.exchange_delete(f"{queue}.dlx")
    finally:
        await connection.close()


def _pid(process: TaskwireProcess) -> int:
    if process.process is None:
        raise RuntimeError(f"{process.name} was never started")
    return process.process.pid


def _status_kib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return float(line.split()[1])  # "VmRSS:   123456 kB"
    raise RuntimeError(f"/proc/{pid}/status has no {key}")
