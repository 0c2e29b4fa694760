"""A whole Taskwire deployment as real processes: `taskwire api` and two `taskwire processor`
against real PostgreSQL, Redis and RabbitMQ, each test module with its own database, queue
and channel prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest

from tests.e2e.hardened import TaskRows, task_rows
from tests.support.auth import AUTH_ENV
from tests.support.databases import fresh_postgres_database
from tests.support.processes import (
    ApiAddress,
    TaskwireProcess,
    free_port,
    run_to_completion,
    wait_until_ready,
)
from tests.support.rabbitmq import delete_topology

TASK_DELAY_SECONDS = "1"


@dataclass
class Deployment(ApiAddress):
    env: dict[str, str]
    workdir: Path
    port: int
    api: TaskwireProcess
    processors: list[TaskwireProcess] = field(default_factory=list)

    async def start_api(self) -> None:
        self.api.start()
        await wait_until_ready(self.base_url, self.api)

    def all_processes(self) -> list[TaskwireProcess]:
        return [self.api, *self.processors]


@asynccontextmanager
async def running_deployment(
    postgres_admin_url: str,
    redis_url: str,
    rabbitmq_url: str,
    workdir: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    processors: int = 2,
) -> AsyncIterator[Deployment]:
    """A migrated fresh database, `processors` processors and a ready API, stopped on exit.
    `extra_env` adds or overrides settings (limits, origins...) for every process."""
    tag = uuid.uuid4().hex[:10]
    async with fresh_postgres_database(postgres_admin_url) as database_url:
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "RABBITMQ_URL": rabbitmq_url,
            "QUEUE_NAME": f"taskwire.e2e.{tag}",
            "CHANNEL_PREFIX": f"taskwire-e2e-{tag}",
            "TASK_DELAY_SECONDS": TASK_DELAY_SECONDS,
            "LEASE_SECONDS": "10",
            "KEEPALIVE_SECONDS": "0.5",
            **AUTH_ENV,
            **(extra_env or {}),
        }
        run_to_completion(["migrate"], env=env, cwd=workdir)
        port = free_port()
        api = TaskwireProcess(
            "api", ["api", "--port", str(port)], env=env, log_dir=workdir, cwd=workdir
        )
        workers = [
            TaskwireProcess(f"processor-{n}", ["processor"], env=env, log_dir=workdir, cwd=workdir)
            for n in range(1, processors + 1)
        ]
        deployment = Deployment(env=env, workdir=workdir, port=port, api=api, processors=workers)
        try:
            for processor in workers:
                processor.start()
            await deployment.start_api()
            yield deployment
        finally:
            for process in deployment.all_processes():
                process.stop()
            # The broker is shared by the whole session: leave none of this deployment's queues.
            connection = await aio_pika.connect(rabbitmq_url, timeout=10)
            try:
                await delete_topology(connection, env["QUEUE_NAME"])
            finally:
                await connection.close()


@pytest.fixture(scope="module")
async def api(
    request: pytest.FixtureRequest,
    postgres_admin_url: str,
    redis_url: str,
    rabbitmq_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployment]:
    """A deployment of the test module's own: its SETTINGS (extra environment) and PROCESSORS."""
    workdir = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    async with running_deployment(
        postgres_admin_url,
        redis_url,
        rabbitmq_url,
        workdir,
        extra_env=getattr(request.module, "SETTINGS", {}),
        processors=getattr(request.module, "PROCESSORS", 2),
    ) as deployment:
        yield deployment


@pytest.fixture(scope="module")
async def rows(api: Deployment) -> AsyncIterator[TaskRows]:
    """The tasks table of the module's deployment."""
    async with task_rows(api) as table:
        yield table


@pytest.fixture(scope="module")
async def deployment(
    postgres_admin_url: str,
    redis_url: str,
    rabbitmq_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployment]:
    workdir = tmp_path_factory.mktemp("deployment")
    async with running_deployment(postgres_admin_url, redis_url, rabbitmq_url, workdir) as running:
        yield running
