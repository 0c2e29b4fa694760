"""Operators' numbers: tasks by status from the database and what the work queue holds, for
the `queueStats` query and `taskwire status`.

The database answers or the whole read fails (its counts are the point). The broker is asked
second and may be down: its numbers are then missing, never invented, and the read still
succeeds with `broker_reachable` false.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from taskwire.bootstrap import Services
from taskwire.errors import Forbidden, ServiceUnavailable
from taskwire.identity import Principal
from taskwire.ports import QueueCounts, TaskCounts, TaskQueue, TaskStore
from taskwire.queue import open_queue
from taskwire.settings import Settings, is_memory
from taskwire.store import open_store

log = logging.getLogger(__name__)

# `taskwire status` exit code when the database cannot be read (2 is bad configuration).
EXIT_NO_DATABASE = 3
EMBEDDED_QUEUE_NOTE = (
    "embedded (RABBITMQ_URL=memory://): it lives inside the `taskwire dev` process, so a "
    "separate `taskwire status` sees the database counts only"
)


@dataclass(frozen=True, slots=True)
class QueueStats:
    tasks: TaskCounts
    # None when the queue could not say (broker down, or an embedded queue in another process).
    queue: QueueCounts | None

    @property
    def broker_reachable(self) -> bool:
        return self.queue is not None

    @property
    def as_of(self) -> datetime:
        return self.tasks.as_of

    @property
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest PENDING task was created; None when none is PENDING."""
        oldest = self.tasks.oldest_pending_at
        if oldest is None:
            return None
        # Clamped: the clocks of the process that created the task and of this one may differ.
        return max(0.0, round((self.as_of - oldest).total_seconds(), 3))

    def to_json(self) -> dict[str, Any]:
        """The fields as the `QueueStats` GraphQL type names them."""
        queue = self.queue
        return {
            "pending": self.tasks.pending,
            "processing": self.tasks.processing,
            "completed": self.tasks.completed,
            "failed": self.tasks.failed,
            "cancelled": self.tasks.cancelled,
            "oldestPendingAge": self.oldest_pending_age,
            "brokerReachable": self.broker_reachable,
            "queued": queue.queued if queue else None,
            "delayed": queue.delayed if queue else None,
            "deadLettered": queue.dead_lettered if queue else None,
            "consumers": queue.consumers if queue else None,
            "asOf": self.as_of.isoformat(),
        }


async def queue_stats(services: Services, caller: Principal) -> QueueStats:
    """The numbers over every owner: counts only, no task's content. A watch token is refused
    (it may only read its one task); any full token, or the local user, may ask."""
    if not caller.may_write:
        raise Forbidden("A watch token may only read and subscribe to its task.")
    return await read_stats(services.store, services.queue)


async def read_stats(store: TaskStore, queue: TaskQueue | None) -> QueueStats:
    """The database first (ServiceUnavailable when it is down), then the queue, if any."""
    tasks = await store.stats()
    return QueueStats(tasks=tasks, queue=await _queue_counts(queue))


async def _queue_counts(queue: TaskQueue | None) -> QueueCounts | None:
    if queue is None:
        return None
    try:
        return await queue.stats()
    except ServiceUnavailable:
        log.warning("the task queue cannot say how many messages it holds")
        return None


# ---------------------------------------------------------------- `taskwire status`


def run(settings: Settings, *, as_json: bool) -> int:
    """Print the numbers read with this process's settings; 0, or EXIT_NO_DATABASE."""
    # The output says when the broker is unreachable (and taskwire.rabbitmq logs why): the
    # drivers' connection errors and reconnect notices would only bury it.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    problem = _missing_sqlite_file(settings.database_url)
    if problem is not None:
        print(f"taskwire status: {problem}", file=sys.stderr)
        return EXIT_NO_DATABASE
    try:
        stats = asyncio.run(_read(settings))
    except (ServiceUnavailable, SQLAlchemyError) as exc:
        print(f"taskwire status: {_database_problem(exc)}", file=sys.stderr)
        return EXIT_NO_DATABASE
    embedded = is_memory(settings.rabbitmq_url)
    if as_json:
        print(json.dumps(stats.to_json(), indent=2))
    else:
        print(render_table(stats, queue_name=settings.queue_name, embedded=embedded))
    return 0


def render_table(stats: QueueStats, *, queue_name: str, embedded: bool) -> str:
    tasks, queue = stats.tasks, stats.queue
    age = stats.oldest_pending_age
    rows: list[tuple[str, str]] = [
        ("pending", str(tasks.pending)),
        ("processing", str(tasks.processing)),
        ("completed", str(tasks.completed)),
        ("failed", str(tasks.failed)),
        ("cancelled", str(tasks.cancelled)),
        ("oldest pending", "-" if age is None else f"{age:.1f} s"),
    ]
    lines = ["tasks (database, every owner)", *_aligned(rows)]
    if queue is not None:
        lines.append(f"queue {queue_name}")
        lines += _aligned(
            [
                ("queued", str(queue.queued)),
                ("delayed", str(queue.delayed)),
                ("dead-lettered", str(queue.dead_lettered)),
                ("consumers", str(queue.consumers)),
            ]
        )
    elif embedded:
        lines.append(f"queue: {EMBEDDED_QUEUE_NOTE}")
    else:
        lines.append(f"queue {queue_name}: the broker at RABBITMQ_URL cannot be reached")
    lines.append(f"as of {stats.as_of.isoformat(timespec='seconds')}")
    return "\n".join(lines)


def _aligned(rows: list[tuple[str, str]]) -> list[str]:
    label_width = max(len(label) for label, _ in rows)
    value_width = max(len(value) for _, value in rows)
    return [f"  {label:<{label_width}}  {value:>{value_width}}" for label, value in rows]


def _database_problem(exc: Exception) -> str:
    # SQLite reports a missing table as an OperationalError, which the store takes for an
    # outage; PostgreSQL's is a ProgrammingError. Either way the cure is a migration.
    cause = exc.__cause__ if isinstance(exc, ServiceUnavailable) else exc
    if not isinstance(exc, ServiceUnavailable) or "no such table" in str(cause):
        return "cannot read the tasks table; has `taskwire migrate` run on this database?"
    return "cannot reach the database at DATABASE_URL"


def _missing_sqlite_file(database_url: str) -> str | None:
    # SQLite would create an empty file and then find no table: say what is wrong instead.
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    path = url.database or ""
    if path in ("", ":memory:") or not Path(path).is_file():
        return f"no SQLite database at {path or '(none)'}; run `taskwire migrate` or `taskwire dev`"
    return None


async def _read(settings: Settings) -> QueueStats:
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            open_store(
                settings.database_url,
                dispatch_grace_seconds=settings.dispatch_grace_seconds,
                pool_size=1,
            )
        )
        queue: TaskQueue | None = None
        # An embedded queue lives in the `taskwire dev` process: a new one here would be empty.
        if not is_memory(settings.rabbitmq_url):
            try:
                queue = await stack.enter_async_context(
                    open_queue(settings.rabbitmq_url, name=settings.queue_name)
                )
            except ServiceUnavailable:
                queue = None  # the database counts are still worth printing
        return await read_stats(store, queue)
