"""Shared by the hardened-surface suites (test_bad_input.py, test_bad_input_ws.py,
test_fuzz.py): the tasks table read behind the API's back, a fresh owner per row, and the
checks that an answer leaks nothing and that the API logged no incident for it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tests.support.auth import TEST_JWT_SECRET

if TYPE_CHECKING:  # conftest imports this module for its fixtures
    from tests.e2e.conftest import Deployment

T = TypeVar("T")

ALLOWED_ORIGIN = "https://app.example.com"
FOREIGN_ORIGIN = "https://evil.example.net"
# What would betray the server's internals or another owner's data in an answer. graphql-core's
# "Did you mean" hints would spell out the schema that introspection (off) keeps to itself.
TELLTALES = ("Traceback", 'File "/', "Did you mean", "sqlalchemy", "asyncpg", "aio_pika")
# Lines of the API's log that mean an incident rather than an answer.
INCIDENT_MARKS = ("Traceback (most recent call last)", "Exception in ASGI application", " ERROR ")

# A valid UUID that no task has.
UNKNOWN_ID = "8c1b0c7e-0f2a-4a55-9d4e-1e2f3a4b5c6d"
CREATE = "mutation($input: String!) { createTask(input: {inputData: $input}) { id status } }"
GET = "query($id: ID!) { task(id: $id) { id status version inputData } }"
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { id status } }"
RETRY = "mutation($id: ID!) { retryTask(id: $id) { id status } }"
WATCH = "subscription($id: ID!) { taskUpdated(id: $id) { id status version inputData } }"


def fresh_subject(label: str = "row") -> str:
    """A token subject no other row uses: rows never share a rate-limit budget or tasks."""
    return f"{label}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class TaskRow:
    id: str
    owner: str
    status: str
    version: int
    input_data: str


class TaskRows:
    """The deployment's tasks table, read directly: what was created is counted where it is
    stored, not where the API says it is."""

    def __init__(self, database_url: str) -> None:
        self._engine: AsyncEngine = create_async_engine(database_url, poolclass=NullPool)

    async def close(self) -> None:
        await self._engine.dispose()

    async def count(self, owner: str | None = None) -> int:
        query = "SELECT count(*) FROM tasks" + (" WHERE owner = :owner" if owner else "")
        async with self._engine.connect() as connection:
            result = await connection.execute(sa.text(query), {"owner": owner})
            return int(result.scalar_one())

    async def owned_by(self, owner: str) -> list[TaskRow]:
        return await self._select("WHERE owner = :owner ORDER BY created_at", owner=owner)

    async def get(self, task_id: str) -> TaskRow | None:
        found = await self._select("WHERE id = :id", id=uuid.UUID(task_id))
        return found[0] if found else None

    async def _select(self, where: str, **params: object) -> list[TaskRow]:
        query = f"SELECT id, owner, status, version, input_data FROM tasks {where}"
        async with self._engine.connect() as connection:
            result = await connection.execute(sa.text(query), params)
            return [TaskRow(str(r.id), r.owner, r.status, r.version, r.input_data) for r in result]


@asynccontextmanager
async def task_rows(deployment: Deployment) -> AsyncIterator[TaskRows]:
    rows = TaskRows(deployment.env["DATABASE_URL"])
    try:
        yield rows
    finally:
        await rows.close()


def secrets_of(deployment: Deployment) -> list[str]:
    """Values that must never reach a client: the signing secret and the servers' URLs (the
    database URL names its host, port and database)."""
    env = deployment.env
    database = env["DATABASE_URL"].rsplit("/", 1)[-1]
    return [TEST_JWT_SECRET, env["DATABASE_URL"], env["REDIS_URL"], env["RABBITMQ_URL"], database]


def assert_nothing_leaked(text: str, deployment: Deployment, *also: str) -> None:
    """No secret, no server URL, no stack trace, no schema hint, nor any of `also` (another
    owner's data, the token that was sent...) in what a client received."""
    for needle in (*secrets_of(deployment), *TELLTALES, *also):
        assert needle not in text, f"{needle!r} leaked in: {text[:500]}"


class ApiLog:
    """The API process's log, to tell an answer from an incident: a refused request must be
    answered, never logged as an error with a traceback."""

    def __init__(self, deployment: Deployment) -> None:
        self.path = deployment.api.log_path
        self._mark = self._size()

    def _size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since_mark(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self._mark)
            return log.read().decode(errors="replace")

    def incidents(self) -> list[str]:
        """Incident lines written since this object was made."""
        return [
            line
            for line in self.since_mark().splitlines()
            if any(mark in line for mark in INCIDENT_MARKS)
        ]


@dataclass
class Guard:
    """What a refused request must leave as it was: the number of tasks (nothing created),
    what the client received (nothing leaked) and the API's log (no incident). Arm it before
    the row's requests, check after them."""

    api: Deployment
    rows: TaskRows
    before: int = 0
    log: ApiLog | None = None

    async def arm(self) -> Guard:
        self.before = await self.rows.count()
        self.log = ApiLog(self.api)
        return self

    async def check(self, received: str, *also: str) -> None:
        """`received`: everything the client got; `also`: values it must not contain."""
        assert await self.rows.count() == self.before, "a refused request created a task"
        assert_nothing_leaked(received, self.api, *also)
        assert self.log is not None
        assert self.log.incidents() == [], "the API logged an incident for a refused request"


def error_codes(body: object) -> list[str]:
    """extensions.code of every error of a GraphQL answer, in order."""
    if not isinstance(body, dict):
        return []
    errors: list[dict[str, Any]] = body.get("errors") or []
    return [str((e.get("extensions") or {}).get("code")) for e in errors]


def json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


async def poll(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """probe() until done(value), failing after `timeout` seconds with the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


async def wait_for_row_status(
    rows: TaskRows, task_id: str, status: str, *, timeout: float = 30.0
) -> TaskRow:
    """Until the task's row has this status, read from the database."""
    row = await poll(
        lambda: rows.get(task_id),
        lambda found: found is not None and found.status == status,
        timeout=timeout,
        what=f"task {task_id} {status}",
    )
    assert row is not None
    return row
