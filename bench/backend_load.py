"""Load module: the bare parts Taskwire is built on, driven the way Taskwire drives them, so
that a scenario can be read as a fraction of what its parts allow on this machine.

Params (JSON on stdin): kind, url, concurrency, seconds, warmup, and per kind:
  asyncpg-insert / asyncpg-update  pool_size; a scratch copy of the tasks table (same columns,
                                   constraints and indexes), INSERT ... RETURNING / UPDATE by key
  amqp-publish                     a scratch quorum queue; persistent publishes with confirms
  redis-get / redis-publish        the product's Redis client settings; a task-sized value
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import sqlalchemy as sa

from bench.load import Operation, closed_loop, serve_load
from taskwire.cache import redis_client

# About the size of a cached task snapshot or an event (a short input, all timestamps set).
PAYLOAD = json.dumps({"id": str(uuid.UUID(int=0)), "status": "COMPLETED", "x": "y" * 360})
# UPDATE targets: each client cycles through rows of its own, so no two clients wait on one
# row lock (the processor never updates one task from two places at once either).
UPDATE_ROWS_PER_CLIENT = 20


async def load(params: dict[str, Any]) -> dict[str, Any]:
    kind = str(params["kind"])
    opener = KINDS.get(kind)
    if opener is None:
        raise SystemExit(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    async with opener(params) as operation:
        result = await closed_loop(
            operation,
            concurrency=int(params["concurrency"]),
            seconds=float(params["seconds"]),
            warmup=float(params.get("warmup", 1.0)),
        )
    return result.as_json()


def asyncpg_dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy postgresql+asyncpg:// URL."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def _postgres(params: dict[str, Any], *, update: bool) -> AsyncIterator[Operation]:
    size = int(params.get("pool_size", 10))
    table = f"bench_scratch_{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(
        asyncpg_dsn(str(params["url"])),
        min_size=size,
        max_size=size,
        server_settings={"jit": "off"},
    )
    try:
        await pool.execute(f"CREATE TABLE {table} (LIKE tasks INCLUDING ALL)")
        insert = (
            f"INSERT INTO {table} (id, status, input_data, attempts, attempt_limit, version, "
            "created_at, updated_at, dispatch_after, owner) "
            "VALUES ($1, 'PENDING', 'bench', 0, 3, 1, $2, $2, $3, 'bench') RETURNING id"
        )
        if not update:

            async def insert_one(client: int, done: int) -> None:
                now = datetime.now(UTC)
                await pool.fetchrow(insert, uuid.uuid4(), now, now + timedelta(seconds=10))

            yield insert_one
            return
        concurrency = int(params["concurrency"])
        ids = [uuid.uuid4() for _ in range(concurrency * UPDATE_ROWS_PER_CLIENT)]
        now = datetime.now(UTC)
        await pool.executemany(insert, [(row, now, now) for row in ids])
        statement = (
            f"UPDATE {table} SET version = version + 1, updated_at = $2 "
            "WHERE id = $1 RETURNING id, version"
        )

        async def update_one(client: int, done: int) -> None:
            row = ids[client + (done % UPDATE_ROWS_PER_CLIENT) * concurrency]
            await pool.fetchrow(statement, row, datetime.now(UTC))

        yield update_one
    finally:
        try:
            await pool.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            await pool.close()


@asynccontextmanager
async def _amqp_publish(params: dict[str, Any]) -> AsyncIterator[Operation]:
    name = f"bench.scratch.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(str(params["url"]))
    try:
        # One confirming channel per process, as the API publishes.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        body = json.dumps({"task_id": str(uuid.uuid4())}).encode()

        async def publish(client: int, done: int) -> None:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, name, mandatory=True)

        try:
            yield publish
        finally:
            await channel.queue_delete(name)
    finally:
        await connection.close()


@asynccontextmanager
async def _redis(params: dict[str, Any], *, publish: bool) -> AsyncIterator[Operation]:
    client = redis_client(str(params["url"]))
    key = f"bench-scratch:{uuid.uuid4().hex[:8]}"
    try:
        await client.set(key, PAYLOAD)

        async def get(client_index: int, done: int) -> None:
            if await client.get(key) is None:
                raise RuntimeError("the scratch key is gone")

        async def send(client_index: int, done: int) -> None:
            await client.publish(key, PAYLOAD)

        yield send if publish else get
    finally:
        try:
            await client.delete(key)
        finally:
            await client.aclose()


Opener = Callable[[dict[str, Any]], AbstractAsyncContextManager[Operation]]
KINDS: dict[str, Opener] = {
    "asyncpg-insert": lambda params: _postgres(params, update=False),
    "asyncpg-update": lambda params: _postgres(params, update=True),
    "amqp-publish": lambda params: _amqp_publish(params),
    "redis-get": lambda params: _redis(params, publish=False),
    "redis-publish": lambda params: _redis(params, publish=True),
}


def main() -> None:
    serve_load(load)


if __name__ == "__main__":
    main()
