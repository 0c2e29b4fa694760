"""SqlTaskStore: the source of truth on SQLAlchemy Core (PostgreSQL or SQLite).

Every transition is one conditional `UPDATE ... RETURNING`; when its WHERE does not match, the
method returns None and nothing changed. The statements themselves are in taskwire.statements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import asyncpg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from taskwire import statements
from taskwire.batching import Batcher
from taskwire.db import create_engine
from taskwire.driver import StatementCache
from taskwire.errors import ServiceUnavailable
from taskwire.models import Task, TaskStatus
from taskwire.ports import TaskCounts

# Driver errors that mean "no usable connection" rather than "this statement is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, timed out (TimeoutError is an OSError)
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # no pooled connection came free in time
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


# How long deferrals of the outbox deadline gather before they share one UPDATE.
DEFERRAL_LINGER_SECONDS = 0.02


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Claim(NamedTuple):
    task_id: UUID
    worker: str
    lease_seconds: float


class _Completion(NamedTuple):
    task_id: UUID
    attempt: int
    result: str


class _Insert(NamedTuple):
    task: Task
    dispatch_after: datetime
    idempotency_key: str | None


class _Deferral(NamedTuple):
    task_id: UUID
    dispatch_after: datetime


def _task_id(item: _Claim | _Completion | _Deferral) -> UUID:
    return item.task_id


def _insert_key(item: _Insert) -> object:
    # Two inserts with one owner's key wait for each other, so the second meets the first's row.
    if item.idempotency_key is None:
        return item.task.id
    return (item.task.owner, item.idempotency_key)


class SqlTaskStore:
    """taskwire.ports.TaskStore on an async SQLAlchemy engine (which the caller owns)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        dispatch_grace_seconds: float,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._connect: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
        if engine.dialect.name == "postgresql":
            # Each call is one statement, atomic on its own: autocommit spares the BEGIN and
            # COMMIT round trips (measured: a get() takes half the time).
            self._connect = engine.execution_options(isolation_level="AUTOCOMMIT").connect
            # Run on asyncpg itself (taskwire.driver): SQLAlchemy's per-row processing was a
            # third of a processor's CPU and changes nothing on this driver.
            self._compiled: StatementCache | None = StatementCache(engine.dialect)
            # A processor's hundreds of concurrent claims and completions share statements.
            self._claims: Batcher[_Claim, Task | None] | None = Batcher(
                self._claim_batch, key=_task_id
            )
            self._completions: Batcher[_Completion, Task | None] | None = Batcher(
                self._complete_batch, key=_task_id
            )
            # And an API's concurrent createTasks.
            self._inserts: Batcher[_Insert, bool] | None = Batcher(
                self._insert_batch, key=_insert_key
            )
            # Deferrals are not waited for (taskwire.service._dispatch): they gather for a while.
            self._deferrals: Batcher[_Deferral, None] | None = Batcher(
                self._defer_batch, key=_task_id, linger_seconds=DEFERRAL_LINGER_SECONDS
            )
        else:
            # pysqlite flips isolation levels through aiosqlite's thread on every checkout,
            # which costs more than the transaction it saves (measured: twice as slow).
            self._connect = engine.begin
            self._compiled = None
            self._claims = self._completions = None
            self._inserts = None
            self._deferrals = None
        self._insert = statements.INSERTS[engine.dialect.name]
        self._grace = timedelta(seconds=dispatch_grace_seconds)
        self._clock = clock

    async def create(
        self,
        input_data: str,
        *,
        attempt_limit: int,
        idempotency_key: str | None = None,
        owner: str = "",
    ) -> tuple[Task, bool]:
        if attempt_limit < 1:
            raise ValueError("attempt_limit must be at least 1")
        now = self._clock()
        task = Task(
            id=uuid4(),
            status=TaskStatus.PENDING,
            input_data=input_data,
            result=None,
            error=None,
            attempts=0,
            version=1,
            created_at=now,
            updated_at=now,
            attempt_limit=attempt_limit,
            owner=owner,
        )
        if self._inserts is not None:
            inserted = await self._inserts.submit(_Insert(task, now + self._grace, idempotency_key))
        else:
            values = {
                "id": task.id,
                "status": statements.PENDING,
                "input_data": input_data,
                "attempts": 0,
                "attempt_limit": attempt_limit,
                "version": 1,
                "created_at": now,
                "updated_at": now,
                "dispatch_after": now + self._grace,
                "idempotency_key": idempotency_key,
                "owner": owner,
            }
            inserted = bool(await self._execute(self._insert, values))
        if inserted:
            return task, True
        # The key is taken. ON CONFLICT waited for the row's own insert to commit (PostgreSQL
        # locks the key meanwhile) and rows are never deleted, so this read finds it.
        existing = _task(
            await self._execute(statements.GET_BY_KEY, {"p_owner": owner, "p_key": idempotency_key})
        )
        if existing is None:
            raise RuntimeError(f"idempotency key {idempotency_key!r} conflicted but has no task")
        return existing, False

    async def get(self, task_id: UUID) -> Task | None:
        return _task(await self._execute(statements.GET, {"p_id": task_id}))

    async def claim(self, task_id: UUID, *, worker: str, lease_seconds: float) -> Task | None:
        if self._claims is not None:
            return await self._claims.submit(_Claim(task_id, worker, lease_seconds))
        now = self._clock()
        params = {
            "p_id": task_id,
            statements.NOW: now,
            "p_worker": worker,
            "p_lease_until": now + timedelta(seconds=lease_seconds),
        }
        return _task(await self._execute(statements.CLAIM, params))

    async def complete(self, task_id: UUID, *, attempt: int, result: str) -> Task | None:
        if self._completions is not None:
            return await self._completions.submit(_Completion(task_id, attempt, result))
        return await self._finish(task_id, attempt, TaskStatus.COMPLETED, result=result)

    async def _claim_batch(self, claims: Sequence[_Claim]) -> list[Task | None]:
        claimed: dict[UUID, Task] = {}
        # One statement per worker and lease: in practice every claim of a process shares both.
        groups: dict[tuple[str, float], list[UUID]] = {}
        for claim in claims:
            groups.setdefault((claim.worker, claim.lease_seconds), []).append(claim.task_id)
        for (worker, lease_seconds), task_ids in groups.items():
            now = self._clock()
            params = {
                "p_ids": task_ids,
                statements.NOW: now,
                "p_worker": worker,
                "p_lease_until": now + timedelta(seconds=lease_seconds),
            }
            claimed.update(_tasks(await self._execute(statements.CLAIM_MANY, params)))
        return [claimed.get(claim.task_id) for claim in claims]

    async def _insert_batch(self, inserts: Sequence[_Insert]) -> list[bool]:
        params = {
            "p_ids": [item.task.id for item in inserts],
            "p_inputs": [item.task.input_data for item in inserts],
            "p_attempt_limits": [item.task.attempt_limit for item in inserts],
            "p_created": [item.task.created_at for item in inserts],
            "p_dispatch_after": [item.dispatch_after for item in inserts],
            "p_keys": [item.idempotency_key for item in inserts],
            "p_owners": [item.task.owner for item in inserts],
        }
        inserted = {row[0] for row in await self._execute(statements.INSERT_MANY, params)}
        return [item.task.id in inserted for item in inserts]

    async def _defer_batch(self, deferrals: Sequence[_Deferral]) -> list[None]:
        params = {
            "p_ids": [item.task_id for item in deferrals],
            "p_dispatch_after": [item.dispatch_after for item in deferrals],
            statements.NOW: self._clock(),
        }
        await self._execute(statements.DEFER_MANY, params)
        return [None] * len(deferrals)

    async def _complete_batch(self, completions: Sequence[_Completion]) -> list[Task | None]:
        params = {
            "p_ids": [item.task_id for item in completions],
            "p_attempts": [item.attempt for item in completions],
            "p_results": [item.result for item in completions],
            statements.NOW: self._clock(),
        }
        done = _tasks(await self._execute(statements.COMPLETE_MANY, params))
        return [done.get(item.task_id) for item in completions]

    async def fail(self, task_id: UUID, *, attempt: int, error: str) -> Task | None:
        return await self._finish(task_id, attempt, TaskStatus.FAILED, error=error)

    async def retry_later(
        self, task_id: UUID, *, attempt: int, error: str, delay_seconds: float
    ) -> Task | None:
        """As in TaskStore; on the task's last attempt it fails the task instead (the
        returned status is FAILED), since a PENDING task must always have an attempt left."""
        now = self._clock()
        params = {
            "p_id": task_id,
            "p_attempt": attempt,
            statements.NOW: now,
            "p_error": error,
            "p_dispatch_after": now + timedelta(seconds=delay_seconds) + self._grace,
        }
        return _task(await self._execute(statements.RETRY_LATER, params))

    async def cancel(self, task_id: UUID) -> Task | None:
        return _task(
            await self._execute(statements.CANCEL, {"p_id": task_id, statements.NOW: self._clock()})
        )

    async def retry(self, task_id: UUID, *, extra_attempts: int) -> Task | None:
        if extra_attempts < 1:
            raise ValueError("extra_attempts must be at least 1")
        now = self._clock()
        params = {
            "p_id": task_id,
            statements.NOW: now,
            "p_extra": extra_attempts,
            "p_dispatch_after": now + self._grace,
        }
        return _task(await self._execute(statements.RETRY, params))

    async def release(self, task_id: UUID, *, attempt: int) -> Task | None:
        params = {"p_id": task_id, "p_attempt": attempt, statements.NOW: self._clock()}
        return _task(await self._execute(statements.RELEASE, params))

    async def heartbeat(self, task_id: UUID, *, attempt: int, lease_seconds: float) -> bool:
        lease_until = self._clock() + timedelta(seconds=lease_seconds)
        params = {"p_id": task_id, "p_attempt": attempt, "p_lease_until": lease_until}
        return bool(await self._execute(statements.HEARTBEAT, params))

    async def due_for_dispatch(self, *, limit: int, grace_seconds: float) -> list[UUID]:
        now = self._clock()
        params = {
            statements.NOW: now,
            "p_limit": limit,
            "p_dispatch_after": now + timedelta(seconds=grace_seconds),
        }
        return [row[0] for row in await self._execute(statements.DISPATCH, params)]

    async def defer_dispatch(self, task_id: UUID, *, seconds: float) -> None:
        now = self._clock()
        if self._deferrals is not None:
            await self._deferrals.submit(_Deferral(task_id, now + timedelta(seconds=seconds)))
            return
        params = {
            "p_id": task_id,
            statements.NOW: now,
            "p_dispatch_after": now + timedelta(seconds=seconds),
        }
        await self._execute(statements.DEFER, params)

    async def ping(self) -> None:
        await self._execute(statements.PING, {})

    async def stats(self) -> TaskCounts:
        rows = await self._execute(statements.STATS, {})
        counts = {TaskStatus(row[0]): int(row[1]) for row in rows}
        oldest = next((row[2] for row in rows if row[0] == statements.PENDING), None)
        return TaskCounts(
            pending=counts.get(TaskStatus.PENDING, 0),
            processing=counts.get(TaskStatus.PROCESSING, 0),
            completed=counts.get(TaskStatus.COMPLETED, 0),
            failed=counts.get(TaskStatus.FAILED, 0),
            cancelled=counts.get(TaskStatus.CANCELLED, 0),
            oldest_pending_at=oldest,
            as_of=self._clock(),
        )

    async def _finish(
        self,
        task_id: UUID,
        attempt: int,
        status: TaskStatus,
        *,
        result: str | None = None,
        error: str | None = None,
    ) -> Task | None:
        params = {
            "p_id": task_id,
            "p_attempt": attempt,
            statements.NOW: self._clock(),
            "p_status": status.value,
            "p_result": result,
            "p_error": error,
        }
        return _task(await self._execute(statements.FINISH, params))

    async def _execute(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """Run one statement and fetch its rows; the one place driver errors are translated."""
        try:
            async with self._connect() as connection:
                if self._compiled is not None:
                    compiled = self._compiled.get(statement)
                    driver = (await connection.get_raw_connection()).driver_connection
                    assert driver is not None  # a checked-out connection has its driver's
                    rows: Sequence[Sequence[Any]] = await driver.fetch(
                        compiled.sql, *compiled.arguments(params)
                    )
                    return rows
                result = await connection.execute(statement, params)
                return result.fetchall() if result.returns_rows else ()
        except Exception as exc:
            if _is_unavailable(exc):
                raise ServiceUnavailable("The database is unavailable.") from exc
            raise


def _task(rows: Sequence[Sequence[Any]]) -> Task | None:
    return _snapshot(rows[0]) if rows else None


def _tasks(rows: Sequence[Sequence[Any]]) -> dict[UUID, Task]:
    return {row[0]: _snapshot(row) for row in rows}


def _snapshot(row: Sequence[Any]) -> Task:
    return Task(
        id=row[0],
        status=TaskStatus(row[1]),
        input_data=row[2],
        result=row[3],
        error=row[4],
        attempts=row[5],
        version=row[6],
        created_at=row[7],
        updated_at=row[8],
        started_at=row[9],
        finished_at=row[10],
        attempt_limit=row[11],
        owner=row[12],
    )


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    # SQLAlchemy wraps the driver's error (`orig`), whose own cause may be asyncpg's exception.
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, _UNAVAILABLE):
            return True
        orig = getattr(seen, "orig", None)
        seen = orig if isinstance(orig, BaseException) else seen.__cause__
    return False


@asynccontextmanager
async def open_store(
    url: str,
    *,
    dispatch_grace_seconds: float,
    pool_size: int = 10,
    clock: Callable[[], datetime] = _utc_now,
) -> AsyncIterator[SqlTaskStore]:
    """A store on its own engine, disposed of on exit."""
    # Every store call is one statement (see SqlTaskStore.__init__).
    engine = create_engine(url, pool_size=pool_size, autocommit=True)
    try:
        yield SqlTaskStore(engine, dispatch_grace_seconds=dispatch_grace_seconds, clock=clock)
    finally:
        await engine.dispose()
