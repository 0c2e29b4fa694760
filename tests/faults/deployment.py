"""A Taskwire deployment to break: private PostgreSQL, Redis and RabbitMQ servers, a fresh
database, `taskwire api` and two `taskwire processor` subprocesses with short timings, and the
test's back doors (tests/faults/probes.py) into its servers."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis.asyncio
from yarl import URL

from tests.faults.probes import Broker, TaskTable, poll
from tests.servers import Server
from tests.support.auth import AUTH_ENV
from tests.support.databases import fresh_postgres_database
from tests.support.processes import (
    ApiAddress,
    TaskwireProcess,
    free_port,
    run_to_completion,
    wait_until_ready,
)

# Short enough that a takeover, a re-dispatch and a re-check each happen within seconds.
TIMINGS = {
    "TASK_DELAY_SECONDS": "0.5",
    "LEASE_SECONDS": "2",
    "DISPATCH_GRACE_SECONDS": "1",
    "REDISPATCH_SECONDS": "3",
    "WATCH_RECHECK_SECONDS": "2",
    "KEEPALIVE_SECONDS": "1",
    "MAX_ATTEMPTS": "3",
    "RETRY_BASE_SECONDS": "0.2",
    "RETRY_MAX_SECONDS": "1",
    "SHUTDOWN_GRACE_SECONDS": "2",
    "LOG_LEVEL": "INFO",
}
POISON_MARKER = "!poison!"
PROCESSORS = 2
UVICORN_CHATTER = re.compile(r"INFO: +(127\.0\.0\.1:\d+ - |connection (open|closed))")
READY_SECONDS = 30.0


@dataclass
class FaultServers:
    """The private servers a fault test may kill, stop and restart."""

    postgres: Server
    redis: Server
    rabbitmq: Server

    def all(self) -> list[Server]:
        return [self.postgres, self.redis, self.rabbitmq]

    def revive(self) -> None:
        """Start whatever an earlier (failed) test left down, so one failure does not cascade."""
        for server in self.all():
            if server.pid is None:
                server.start()


class FaultDeployment(ApiAddress):
    """`taskwire api` + two `taskwire processor` on private servers, with a database, queue
    and channel prefix of their own. Logs go to `workdir`; processes are stopped by pid."""

    def __init__(
        self,
        servers: FaultServers,
        workdir: Path,
        *,
        rabbitmq: Server | None = None,
        env: Mapping[str, str] | None = None,
        rabbitmq_query: Mapping[str, str] | None = None,
    ) -> None:
        self.servers = servers
        self.rabbitmq = rabbitmq or servers.rabbitmq
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:10]
        self.port = free_port()
        self.queue_name = f"taskwire.faults.{self.tag}"
        self._extra_env = dict(env or {})
        # Only the taskwire processes see the query (e.g. a short AMQP heartbeat); the test's
        # own connections use the plain URL.
        self._amqp_query = dict(rabbitmq_query or {})
        self.env: dict[str, str] = {}
        self.database_url = ""
        self.api: TaskwireProcess | None = None
        self.processors: list[TaskwireProcess] = []
        self.retired: list[TaskwireProcess] = []
        self.extra: list[TaskwireProcess] = []
        self.consuming_since = 0.0
        self._table: TaskTable | None = None
        self.broker = Broker(self.rabbitmq.url, self.queue_name)
        self._stack = AsyncExitStack()

    # ---------------------------------------------------------------- lifecycle

    async def start(self, *, api_env: Mapping[str, str] | None = None) -> None:
        """Fresh database, migrated; both processors consuming; the API ready."""
        self.database_url = await self._stack.enter_async_context(
            fresh_postgres_database(self.servers.postgres.url)
        )
        amqp = str(URL(self.rabbitmq.url).update_query(self._amqp_query))
        self.env = {
            **TIMINGS,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.servers.redis.url,
            "RABBITMQ_URL": amqp,
            "QUEUE_NAME": self.queue_name,
            "CHANNEL_PREFIX": f"taskwire-faults-{self.tag}",
            "POISON_MARKER": POISON_MARKER,
            "CRASH_POINT": "",
            **AUTH_ENV,
            **self._extra_env,
        }
        self._table = TaskTable(self.database_url)
        await asyncio.to_thread(run_to_completion, ["migrate"], env=self.env, cwd=self.workdir)
        self.processors = [self._process(f"processor-{n}", ["processor"]) for n in (1, 2)]
        for processor in self.processors:
            processor.start()
        await self.start_api(api_env)
        await self.broker.wait_for_consumers(PROCESSORS, timeout=READY_SECONDS)
        self.consuming_since = time.monotonic()

    async def start_api(
        self, extra_env: Mapping[str, str] | None = None, name: str = "api"
    ) -> None:
        """Start the main API process (a new one, logging to `<name>.log`), wait for /readyz."""
        if self.api is not None:
            self.retired.append(self.api)
        self.api = await self.launch_api(name, self.port, extra_env)

    async def launch_api(
        self, name: str, port: int, extra_env: Mapping[str, str] | None = None
    ) -> TaskwireProcess:
        """An API process on `port` (besides the main one, or in its place), once ready.
        Stopped at close() unless it is the main one and has been replaced since."""
        api = self._process(name, ["api", "--port", str(port)], extra_env)
        if port != self.port:
            self.extra.append(api)
        api.start()
        await wait_until_ready(f"http://127.0.0.1:{port}", api, timeout=READY_SECONDS)
        return api

    async def restart_processor(self, index: int) -> TaskwireProcess:
        """A new process in the place of processor `index` (logging to the same file)."""
        old = self.processors[index]
        self.retired.append(old)
        new = self._process(old.name, ["processor"])
        self.processors[index] = new
        new.start()
        return new

    async def close(self) -> None:
        try:
            for process in self.all_processes():
                # A SIGSTOPped process would sit on SIGTERM until its stop timeout.
                process.signal(signal.SIGCONT)
            await asyncio.gather(
                *(asyncio.to_thread(process.stop, 10.0) for process in self.all_processes())
            )
        finally:
            if self._table is not None:
                await self._table.close()
            await self._stack.aclose()

    def all_processes(self) -> list[TaskwireProcess]:
        api = [self.api] if self.api is not None else []
        return [*api, *self.processors, *self.extra, *self.retired]

    def _process(
        self, name: str, args: list[str], extra_env: Mapping[str, str] | None = None
    ) -> TaskwireProcess:
        env = {**self.env, **(extra_env or {})}
        return TaskwireProcess(name, args, env=env, log_dir=self.workdir, cwd=self.workdir)

    # ---------------------------------------------------------------- back doors

    @property
    def table(self) -> TaskTable:
        assert self._table is not None, "start() the deployment first"
        return self._table

    async def cached(self, task_ids: list[str]) -> int:
        """How many of these tasks have a state in the Redis cache."""
        client = redis.asyncio.Redis.from_url(self.servers.redis.url)
        try:
            prefix = self.env["CHANNEL_PREFIX"]
            return int(await client.exists(*(f"{prefix}:task:{i}" for i in task_ids)))
        finally:
            await client.aclose()

    # ---------------------------------------------------------------- logs

    def log_paths(self, prefix: str) -> list[Path]:
        """Each log file once (a restarted process appends to its predecessor's)."""
        paths = {p.log_path for p in self.all_processes() if p.name.startswith(prefix)}
        return sorted(paths)

    def log_text(self, prefix: str) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in self.log_paths(prefix) if path.exists()
        )

    def count_in_logs(self, pattern: str, prefix: str = "processor") -> int:
        return len(re.findall(pattern, self.log_text(prefix)))

    async def wait_for_log(
        self, pattern: str, *, count: int = 1, prefix: str = "processor", timeout: float = 20.0
    ) -> int:
        """Poll the logs until `pattern` occurs `count` times; returns how many it found."""
        return await poll(
            lambda: self.count_in_logs(pattern, prefix),
            lambda found: found >= count,
            timeout=timeout,
            what=f"{count} log line(s) matching {pattern!r} in {prefix} logs",
        )

    def queue_age(self) -> float:
        """Seconds since the first processor declared the queue (its "started" line, logged
        once its connection and topology were up)."""
        stamps = re.findall(
            r"^(\S+ \S+) INFO processor\.runner: processor \S+ started",
            self.log_text("processor"),
            re.M,
        )
        first = min(datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in stamps)
        return (datetime.now() - first).total_seconds()

    def log_tails(self, lines: int = 60) -> str:
        parts = []
        for path in self.log_paths(""):
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            # uvicorn's access and websocket lines would crowd out everything else.
            text = [line for line in text if not UVICORN_CHATTER.match(line)]
            parts.append(f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)
