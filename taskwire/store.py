"""SqlTaskStore: the source of truth on SQLAlchemy Core (PostgreSQL or SQLite).

Every transition is one conditional `UPDATE ... RETURNING`; when its WHERE does not match, the
method returns None and nothing changed. Statements are built once (below) and executed with
parameters, so a call costs no statement construction and no cache-key generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from taskwire.db import UtcDateTime, create_engine, tasks
from taskwire.errors import ServiceUnavailable
from taskwire.models import Task, TaskStatus

_PENDING = TaskStatus.PENDING.value
_PROCESSING = TaskStatus.PROCESSING.value
_FAILED = TaskStatus.FAILED.value
_CANCELLED = TaskStatus.CANCELLED.value

# The columns of a Task snapshot; _task() reads them by position.
_SNAPSHOT = (
    tasks.c.id,
    tasks.c.status,
    tasks.c.input_data,
    tasks.c.result,
    tasks.c.error,
    tasks.c.attempts,
    tasks.c.version,
    tasks.c.created_at,
    tasks.c.updated_at,
    tasks.c.started_at,
    tasks.c.finished_at,
    tasks.c.attempt_limit,
)


def _param(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name)


def _time(name: str) -> sa.BindParameter[datetime]:
    return sa.bindparam(name, type_=UtcDateTime())


def _text(sql_literal: str) -> sa.ColumnElement[str]:
    # Inlined rather than bound: asyncpg cannot type a parameter that is only concatenated.
    return sa.literal_column(f"'{sql_literal}'", sa.Text())


_NOW = "p_now"
_LEASE_EXPIRED = sa.and_(tasks.c.status == _PROCESSING, tasks.c.lease_expires_at < _time(_NOW))
_CURRENT_ATTEMPT = sa.and_(
    tasks.c.id == _param("p_id"),
    tasks.c.status == _PROCESSING,
    tasks.c.attempts == _param("p_attempt"),
)
# Every state change bumps the version: caches and subscribers order snapshots by it.
_NEXT_VERSION: Mapping[str, Any] = {"version": tasks.c.version + 1, "updated_at": _time(_NOW)}
_NO_LEASE: Mapping[str, Any] = {"lease_owner": None, "lease_expires_at": None}

# Without a key ON CONFLICT never fires (NULLs are distinct), so one statement serves both cases.
# RETURNING yields the id only when the row went in.
_INSERTS: Mapping[str, sa.Executable] = {
    name: dialect_insert(tasks)
    .on_conflict_do_nothing(index_elements=[tasks.c.idempotency_key])
    .returning(tasks.c.id)
    for name, dialect_insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
_GET = sa.select(*_SNAPSHOT).where(tasks.c.id == _param("p_id"))
_GET_BY_KEY = sa.select(*_SNAPSHOT).where(tasks.c.idempotency_key == _param("p_key"))

# Whether the task may have another attempt. The store keeps every PENDING task within its
# budget (create and retry give at least one attempt, release refunds the one handed back,
# retry_later of the last attempt fails the task instead), so only a PROCESSING task whose
# worker was lost can run out: its claim gives it up (PROCESSING -> FAILED) in the same
# statement, and two claimers can never both see budget left. SET expressions all read the row
# as it was before the UPDATE (PostgreSQL and SQLite alike).
_HAS_BUDGET = tasks.c.attempts < tasks.c.attempt_limit


def _by_budget(another_attempt: Any, no_more: Any) -> sa.Case[Any]:
    return sa.case((_HAS_BUDGET, another_attempt), else_=no_more)


_GIVE_UP_ERROR = (
    _text("Gave up after ")
    + sa.cast(tasks.c.attempts, sa.Text())
    # The processor cannot report its own death (kill -9, OOM) or freeze: the lease says it.
    + _text(" attempts: the worker running it was lost.")
)
_CLAIM = (
    sa.update(tasks)
    .where(
        tasks.c.id == _param("p_id"),
        sa.or_(sa.and_(tasks.c.status == _PENDING, _HAS_BUDGET), _LEASE_EXPIRED),
    )
    .values(
        **_NEXT_VERSION,
        status=_by_budget(_PROCESSING, _FAILED),
        attempts=_by_budget(tasks.c.attempts + 1, tasks.c.attempts),
        started_at=_by_budget(_time(_NOW), tasks.c.started_at),
        finished_at=_by_budget(sa.null(), _time(_NOW)),
        error=_by_budget(tasks.c.error, _GIVE_UP_ERROR),
        lease_owner=_by_budget(sa.bindparam("p_worker", type_=sa.String()), sa.null()),
        lease_expires_at=_by_budget(_time("p_lease_until"), sa.null()),
        # The dispatcher has nothing to do for this task until the lease lapses (nor ever, once
        # it is FAILED: the dispatcher only looks at PENDING and PROCESSING tasks).
        dispatch_after=_by_budget(_time("p_lease_until"), tasks.c.dispatch_after),
    )
    .returning(*_SNAPSHOT)
)
_FINISH = (
    sa.update(tasks)
    .where(_CURRENT_ATTEMPT)
    .values(
        **_NEXT_VERSION,
        **_NO_LEASE,
        status=_param("p_status"),
        result=_param("p_result"),
        error=_param("p_error"),
        finished_at=_time(_NOW),
    )
    .returning(*_SNAPSHOT)
)
# The last attempt cannot be retried: it fails the task instead (PROCESSING -> FAILED, with the
# same error), so that no PENDING task is ever left without an attempt to run.
_RETRY_LATER = (
    sa.update(tasks)
    .where(_CURRENT_ATTEMPT)
    .values(
        **_NEXT_VERSION,
        **_NO_LEASE,
        status=_by_budget(_PENDING, _FAILED),
        error=_param("p_error"),
        finished_at=_by_budget(sa.null(), _time(_NOW)),
        dispatch_after=_by_budget(_time("p_dispatch_after"), tasks.c.dispatch_after),
    )
    .returning(*_SNAPSHOT)
)
_RELEASE = (
    sa.update(tasks)
    .where(_CURRENT_ATTEMPT)
    .values(
        **_NEXT_VERSION,
        **_NO_LEASE,
        status=_PENDING,
        # A handed-back attempt did not fail: give it back to the budget, so that a graceful
        # shutdown never turns into "gave up". attempts still grows: it is the fence.
        attempt_limit=tasks.c.attempt_limit + 1,
        # Due at once: the dispatcher republishes it on its next round.
        dispatch_after=_time(_NOW),
    )
    .returning(*_SNAPSHOT)
)
_CANCEL = (
    sa.update(tasks)
    .where(tasks.c.id == _param("p_id"), tasks.c.status == _PENDING)
    .values(**_NEXT_VERSION, status=_CANCELLED, finished_at=_time(_NOW))
    .returning(*_SNAPSHOT)
)
# started_at is kept: it says when the last attempt began until the next claim overwrites it.
_RETRY = (
    sa.update(tasks)
    .where(tasks.c.id == _param("p_id"), tasks.c.status == _FAILED)
    .values(
        **_NEXT_VERSION,
        **_NO_LEASE,
        status=_PENDING,
        attempt_limit=tasks.c.attempts + sa.bindparam("p_extra", type_=sa.Integer()),
        result=None,
        error=None,
        finished_at=None,
        dispatch_after=_time("p_dispatch_after"),
    )
    .returning(*_SNAPSHOT)
)
# Not a state change (the snapshot is the same), so neither version nor updated_at move.
_HEARTBEAT = (
    sa.update(tasks)
    .where(_CURRENT_ATTEMPT)
    .values(lease_expires_at=_time("p_lease_until"), dispatch_after=_time("p_lease_until"))
    .returning(tasks.c.id)
)
# Also not a state change. Only a task waiting for dispatch (claimable) is deferred: one claimed
# before its publish was even confirmed keeps its deadline at its lease expiry.
_DEFER = (
    sa.update(tasks)
    .where(tasks.c.id == _param("p_id"), sa.or_(tasks.c.status == _PENDING, _LEASE_EXPIRED))
    .values(dispatch_after=_time("p_dispatch_after"))
)
# An expired lease counts only once its dispatch deadline passed too (claim and heartbeat keep
# the deadline at the lease expiry): pushing the deadline is what keeps a takeover from being
# republished on every round, and what PostgreSQL re-checks when a row changed under a concurrent
# dispatcher's snapshot, so two dispatchers never return the same id.
_DUE = (
    sa.select(tasks.c.id)
    .where(
        tasks.c.dispatch_after <= _time(_NOW),
        sa.or_(tasks.c.status == _PENDING, _LEASE_EXPIRED),
    )
    .order_by(tasks.c.dispatch_after)
    .limit(_param("p_limit"))
    # Rendered on PostgreSQL only; SQLite runs one writer at a time anyway.
    .with_for_update(skip_locked=True)
)
_DISPATCH = (
    sa.update(tasks)
    .where(tasks.c.id.in_(_DUE.scalar_subquery()))
    .values(dispatch_after=_time("p_dispatch_after"))
    .returning(tasks.c.id)
)
_PING = sa.select(sa.literal(1))

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


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
        else:
            # pysqlite flips isolation levels through aiosqlite's thread on every checkout,
            # which costs more than the transaction it saves (measured: twice as slow).
            self._connect = engine.begin
        self._insert = _INSERTS[engine.dialect.name]
        self._grace = timedelta(seconds=dispatch_grace_seconds)
        self._clock = clock

    async def create(
        self, input_data: str, *, attempt_limit: int, idempotency_key: str | None = None
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
        )
        values = {
            "id": task.id,
            "status": _PENDING,
            "input_data": input_data,
            "attempts": 0,
            "attempt_limit": attempt_limit,
            "version": 1,
            "created_at": now,
            "updated_at": now,
            "dispatch_after": now + self._grace,
            "idempotency_key": idempotency_key,
        }
        if await self._execute(self._insert, values):
            return task, True
        # The key is taken. ON CONFLICT waited for the row's own insert to commit (PostgreSQL
        # locks the key meanwhile) and rows are never deleted, so this read finds it.
        existing = _task(await self._execute(_GET_BY_KEY, {"p_key": idempotency_key}))
        if existing is None:
            raise RuntimeError(f"idempotency key {idempotency_key!r} conflicted but has no task")
        return existing, False

    async def get(self, task_id: UUID) -> Task | None:
        return _task(await self._execute(_GET, {"p_id": task_id}))

    async def claim(self, task_id: UUID, *, worker: str, lease_seconds: float) -> Task | None:
        now = self._clock()
        params = {
            "p_id": task_id,
            _NOW: now,
            "p_worker": worker,
            "p_lease_until": now + timedelta(seconds=lease_seconds),
        }
        return _task(await self._execute(_CLAIM, params))

    async def complete(self, task_id: UUID, *, attempt: int, result: str) -> Task | None:
        return await self._finish(task_id, attempt, TaskStatus.COMPLETED, result=result)

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
            _NOW: now,
            "p_error": error,
            "p_dispatch_after": now + timedelta(seconds=delay_seconds) + self._grace,
        }
        return _task(await self._execute(_RETRY_LATER, params))

    async def cancel(self, task_id: UUID) -> Task | None:
        return _task(await self._execute(_CANCEL, {"p_id": task_id, _NOW: self._clock()}))

    async def retry(self, task_id: UUID, *, extra_attempts: int) -> Task | None:
        if extra_attempts < 1:
            raise ValueError("extra_attempts must be at least 1")
        now = self._clock()
        params = {
            "p_id": task_id,
            _NOW: now,
            "p_extra": extra_attempts,
            "p_dispatch_after": now + self._grace,
        }
        return _task(await self._execute(_RETRY, params))

    async def release(self, task_id: UUID, *, attempt: int) -> Task | None:
        params = {"p_id": task_id, "p_attempt": attempt, _NOW: self._clock()}
        return _task(await self._execute(_RELEASE, params))

    async def heartbeat(self, task_id: UUID, *, attempt: int, lease_seconds: float) -> bool:
        lease_until = self._clock() + timedelta(seconds=lease_seconds)
        params = {"p_id": task_id, "p_attempt": attempt, "p_lease_until": lease_until}
        return bool(await self._execute(_HEARTBEAT, params))

    async def due_for_dispatch(self, *, limit: int, grace_seconds: float) -> list[UUID]:
        now = self._clock()
        params = {
            _NOW: now,
            "p_limit": limit,
            "p_dispatch_after": now + timedelta(seconds=grace_seconds),
        }
        return [row[0] for row in await self._execute(_DISPATCH, params)]

    async def defer_dispatch(self, task_id: UUID, *, seconds: float) -> None:
        now = self._clock()
        params = {"p_id": task_id, _NOW: now, "p_dispatch_after": now + timedelta(seconds=seconds)}
        await self._execute(_DEFER, params)

    async def ping(self) -> None:
        await self._execute(_PING, {})

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
            _NOW: self._clock(),
            "p_status": status.value,
            "p_result": result,
            "p_error": error,
        }
        return _task(await self._execute(_FINISH, params))

    async def _execute(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """Run one statement and fetch its rows; the one place driver errors are translated."""
        try:
            async with self._connect() as connection:
                result = await connection.execute(statement, params)
                return result.fetchall() if result.returns_rows else ()
        except Exception as exc:
            if _is_unavailable(exc):
                raise ServiceUnavailable("The database is unavailable.") from exc
            raise


def _task(rows: Sequence[Sequence[Any]]) -> Task | None:
    if not rows:
        return None
    row = rows[0]
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
    engine = create_engine(url, pool_size=pool_size)
    try:
        yield SqlTaskStore(engine, dispatch_grace_seconds=dispatch_grace_seconds, clock=clock)
    finally:
        await engine.dispose()
