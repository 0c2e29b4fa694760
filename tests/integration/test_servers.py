"""The test servers are real and usable: a round trip through each, and restarts that keep
(PostgreSQL) or lose (Redis, no persistence) data as documented in tests/servers.py."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
import redis.asyncio as redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from tests.servers import PostgresServer, RabbitMQServer, ServerPool


@pytest.fixture
async def pg(postgres_admin_url: str) -> AsyncIterator[AsyncConnection]:
    engine = create_async_engine(postgres_admin_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


async def test_postgres_round_trip(pg: AsyncConnection) -> None:
    assert pg.dialect.driver == "asyncpg"
    # A temporary table is private to this connection: nothing to clean up, no clash.
    await pg.execute(text("CREATE TEMPORARY TABLE probe (id int PRIMARY KEY, label text)"))
    rows = [{"id": 1, "label": "one"}, {"id": 2, "label": "två"}]
    await pg.execute(text("INSERT INTO probe VALUES (:id, :label)"), rows)
    result = await pg.execute(text("SELECT id, label FROM probe ORDER BY id"))
    assert [tuple(row) for row in result] == [(1, "one"), (2, "två")]
    assert await pg.scalar(text("SELECT current_user")) == "postgres"


async def test_postgres_superuser_can_create_a_database(postgres_admin_url: str) -> None:
    name = f"probe_{uuid.uuid4().hex}"
    engine = create_async_engine(postgres_admin_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text(f'CREATE DATABASE "{name}"'))
            query = text("SELECT count(*) FROM pg_database WHERE datname = :name")
            assert await autocommit.scalar(query, {"name": name}) == 1
            await autocommit.execute(text(f'DROP DATABASE "{name}"'))
    finally:
        await engine.dispose()


async def test_redis_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"test-servers:{uuid.uuid4().hex}"
    try:
        assert await client.set(key, b"value", px=60_000)
        assert await client.get(key) == b"value"
        assert await client.delete(key) == 1
        assert await client.get(key) is None
    finally:
        await client.aclose()


async def test_amqp_publish_and_get(rabbitmq_url: str) -> None:
    connection = await aio_pika.connect(rabbitmq_url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(exclusive=True)  # server-named, gone on close
        await channel.default_exchange.publish(
            aio_pika.Message(b"ping"), routing_key=queue.name, mandatory=True
        )
        message = await queue.get(timeout=10, fail=True)
        assert message is not None
        assert message.body == b"ping"
        await message.ack()
    finally:
        await connection.close()


async def _execute(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(sql))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


async def test_postgres_restart_and_crash_keep_committed_data(servers: ServerPool) -> None:
    server = await asyncio.to_thread(servers.spawn, "postgres")
    assert isinstance(server, PostgresServer)
    port, url = server.port, server.url
    await _execute(url, "CREATE TABLE kept (id int PRIMARY KEY)")
    await _execute(url, "INSERT INTO kept VALUES (1)")

    await asyncio.to_thread(server.restart)
    assert (server.port, server.url) == (port, url)
    assert await _execute(url, "SELECT id FROM kept ORDER BY id") == [(1,)]

    # A commit acknowledged just before a SIGKILL survives it (synchronous_commit is on).
    await _execute(url, "INSERT INTO kept VALUES (2)")
    server.kill()
    assert server.pid is None
    with pytest.raises((OSError, DBAPIError)):
        await _execute(url, "SELECT 1")
    await asyncio.to_thread(server.restart)
    assert await _execute(url, "SELECT id FROM kept ORDER BY id") == [(1,), (2,)]

    await asyncio.to_thread(server.stop)
    assert server.pid is None


async def test_redis_restart_keeps_the_port_and_empties_it(servers: ServerPool) -> None:
    server = await asyncio.to_thread(servers.spawn, "redis")
    port = server.port
    client = redis.Redis.from_url(server.url)
    try:
        assert await client.set("kept", b"1")
    finally:
        await client.aclose()
    await asyncio.to_thread(server.restart)
    assert server.port == port
    client = redis.Redis.from_url(server.url)
    try:
        assert await client.get("kept") is None  # no persistence, by design
    finally:
        await client.aclose()
        await asyncio.to_thread(server.stop)


async def test_rabbitmq_restart_keeps_durable_queues(servers: ServerPool) -> None:
    server = await asyncio.to_thread(servers.spawn, "rabbitmq")
    assert isinstance(server, RabbitMQServer)
    connection = await aio_pika.connect(server.url, timeout=10)
    channel = await connection.channel(publisher_confirms=True)
    queue = await channel.declare_queue("kept", durable=True)
    message = aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await channel.default_exchange.publish(message, routing_key=queue.name)
    await connection.close()

    await asyncio.to_thread(server.restart)

    connection = await aio_pika.connect(server.url, timeout=10)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue("kept", durable=True, passive=True)
        got = await queue.get(timeout=10, fail=True)
        assert got is not None
        assert got.body == b"kept"
    finally:
        await connection.close()
    await asyncio.to_thread(server.stop)
    assert not _epmd_listening(server.epmd_port)


def _epmd_listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True
