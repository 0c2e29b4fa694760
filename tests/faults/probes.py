"""The test's own back doors into the servers of a fault deployment: the tasks table read
directly, the broker's queues inspected and fed directly, and polling with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aio_pika
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

T = TypeVar("T")
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
_COLUMNS = (
    "id, status, input_data, result, error, attempts, version, lease_owner, idempotency_key, "
    # By the database's clock, as the leases are compared.
    "EXTRACT(EPOCH FROM clock_timestamp() - started_at)::float8 AS since_start"
)


@dataclass(frozen=True)
class Row:
    """One row of the tasks table, as the checker reads it."""

    id: str
    status: str
    input_data: str
    result: str | None
    error: str | None
    attempts: int
    version: int
    lease_owner: str | None
    idempotency_key: str | None
    # Seconds since the current (or last) attempt started, when this row was read.
    since_start: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class TaskTable:
    """The tasks table of one database, read behind the application's back."""

    def __init__(self, database_url: str) -> None:
        # NullPool: a connection never outlives one read, so a PostgreSQL restart leaves no
        # dead connection behind for the next one.
        self._engine: AsyncEngine = create_async_engine(
            database_url, poolclass=NullPool, connect_args={"timeout": 2}
        )

    async def close(self) -> None:
        await self._engine.dispose()

    async def rows(self) -> dict[str, Row]:
        """Every row of the tasks table, by id."""
        async with self._engine.connect() as connection:
            result = await connection.execute(sa.text(f"SELECT {_COLUMNS} FROM tasks"))
            return {
                str(r.id): Row(
                    id=str(r.id),
                    status=r.status,
                    input_data=r.input_data,
                    result=r.result,
                    error=r.error,
                    attempts=r.attempts,
                    version=r.version,
                    lease_owner=r.lease_owner,
                    idempotency_key=r.idempotency_key,
                    since_start=r.since_start,
                )
                for r in result
            }

    async def rows_quietly(self) -> dict[str, Row] | None:
        """rows(), or None while PostgreSQL does not answer."""
        try:
            async with asyncio.timeout(5):
                return await self.rows()
        except (OSError, TimeoutError, sa_exc.DBAPIError):
            return None

    async def processing(self, pid: int | None = None, within: float | None = None) -> list[Row]:
        """PROCESSING rows; with `pid` only those whose lease that process holds (lease owners
        read host:pid:random); with `within` only attempts started less than that ago."""
        mark = f":{pid}:"
        return [
            r
            for r in (await self.rows()).values()
            if r.status == "PROCESSING"
            and (pid is None or (r.lease_owner is not None and mark in r.lease_owner))
            and (within is None or (r.since_start is not None and r.since_start < within))
        ]

    async def wait_for_processing(
        self, pid: int | None = None, *, within: float | None = None, timeout: float = 10.0
    ) -> list[Row]:
        """Until a task is in progress (held by `pid`, started less than `within` seconds
        ago, so that it is still in progress when a fault strikes right after)."""
        return await poll_async(
            lambda: self.processing(pid, within),
            bool,
            timeout=timeout,
            what="a task in progress",
        )

    async def settled_processing(self, pid: int) -> list[Row]:
        """After `pid` was killed or frozen: the tasks it still holds, read twice so that a
        statement it sent just before the signal has landed (the intersection of the reads)."""
        first = {r.id for r in await self.processing(pid)}
        return [r for r in await self.processing(pid) if r.id in first]


class Broker:
    """One work queue (and its dead-letter queue) on a RabbitMQ server."""

    def __init__(self, url: str, queue_name: str) -> None:
        self.url = url
        self.queue_name = queue_name

    @contextlib.asynccontextmanager
    async def _channel(self) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
        connection = await aio_pika.connect(self.url, timeout=5)
        try:
            yield await connection.channel()
        finally:
            await connection.close()

    async def consumer_count(self) -> int:
        async with self._channel() as channel:
            queue = await channel.declare_queue(self.queue_name, passive=True)
            declared = queue.declaration_result
            return int(declared.consumer_count or 0)

    async def wait_for_consumers(self, count: int, timeout: float) -> None:
        async def consumers() -> int:
            try:
                return await self.consumer_count()
            except (aio_pika.exceptions.AMQPError, OSError, TimeoutError):
                return -1

        await poll_async(
            consumers, lambda n: n >= count, timeout=timeout, what=f"{count} consumers"
        )

    async def publish_raw(self, body: bytes) -> None:
        """A message straight onto the work queue, bypassing Taskwire (confirmed)."""
        async with self._channel() as channel:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self.queue_name,
            )

    async def dead_letters(self) -> list[bytes]:
        """The bodies in the dead-letter queue, read without removing them (nack + requeue
        after all were read, so that each is seen once)."""
        bodies: list[bytes] = []
        async with self._channel() as channel:
            try:
                queue = await channel.declare_queue(f"{self.queue_name}.dead", passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return []
            held: list[aio_pika.abc.AbstractIncomingMessage] = []
            while (message := await queue.get(no_ack=False, fail=False, timeout=5)) is not None:
                held.append(message)
                bodies.append(message.body)
            for message in held:
                await message.nack(requeue=True)
        return bodies

    async def wait_for_dead_letters(self, count: int, timeout: float = 20.0) -> list[bytes]:
        return await poll_async(
            self.dead_letters,
            lambda found: len(found) >= count,
            timeout=timeout,
            what=f"{count} dead letter(s)",
        )


async def poll(
    probe: Callable[[], T], done: Callable[[T], bool], *, timeout: float, what: str
) -> T:
    """Call `probe` until `done` says yes; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g} s: {what} (last: {value!r})")
        await asyncio.sleep(0.1)


async def poll_async(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, timeout: float, what: str
) -> T:
    """poll() for a coroutine probe."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g} s: {what} (last: {value!r})")
        await asyncio.sleep(0.1)
