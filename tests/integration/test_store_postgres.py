"""SqlTaskStore on a real PostgreSQL under real concurrency (separate connections, row locks)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from taskwire.db import create_engine, migrate, tasks
from taskwire.errors import ServiceUnavailable
from taskwire.models import TaskStatus
from taskwire.store import SqlTaskStore, open_store
from tests.support.databases import fresh_postgres_database

pytestmark = pytest.mark.postgres

CONCURRENCY = 20


@pytest.fixture
async def database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    async with fresh_postgres_database(postgres_admin_url) as url:
        await migrate(url)
        yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlTaskStore]:
    # No grace: every new task is due at once, which is what the dispatch tests need.
    async with open_store(database_url, dispatch_grace_seconds=0, pool_size=CONCURRENCY) as store:
        yield store


async def test_concurrent_claims_have_exactly_one_winner(store: SqlTaskStore) -> None:
    for _ in range(5):
        task, _ = await store.create("payload", attempt_limit=3)

        claims = await asyncio.gather(
            *(store.claim(task.id, worker=f"w{n}", lease_seconds=30) for n in range(CONCURRENCY))
        )

        winners = [claim for claim in claims if claim is not None]
        assert len(winners) == 1
        assert (winners[0].attempts, winners[0].version) == (1, 2)
        assert await store.get(task.id) == winners[0]


async def test_concurrent_identical_creates_make_one_task(
    store: SqlTaskStore, database_url: str
) -> None:
    keys = [f"key-{n}" for n in range(5)]
    for key in keys:
        results = await asyncio.gather(
            *(
                store.create("payload", attempt_limit=3, idempotency_key=key)
                for _ in range(CONCURRENCY)
            )
        )

        assert sum(created for _, created in results) == 1
        assert len({task.id for task, _ in results}) == 1
        assert {task.version for task, _ in results} == {1}

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(tasks.c.idempotency_key, sa.func.count()).group_by(
                        tasks.c.idempotency_key
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    assert sorted((key, count) for key, count in rows) == [(key, 1) for key in keys]


async def test_concurrent_claims_of_a_spent_task_give_it_up_once(store: SqlTaskStore) -> None:
    for _ in range(5):
        task, _ = await store.create("payload", attempt_limit=1)
        # A lease of no length: expired at once, as if its worker had died.
        assert await store.claim(task.id, worker="w", lease_seconds=0) is not None

        claims = await asyncio.gather(
            *(store.claim(task.id, worker=f"w{n}", lease_seconds=30) for n in range(CONCURRENCY))
        )

        winners = [claim for claim in claims if claim is not None]
        assert len(winners) == 1
        assert winners[0].status is TaskStatus.FAILED
        assert (winners[0].attempts, winners[0].version) == (1, 3)
        assert await store.get(task.id) == winners[0]


async def test_concurrent_dispatchers_never_return_the_same_id(store: SqlTaskStore) -> None:
    for _ in range(3):
        due: set[UUID] = {(await store.create(str(n), attempt_limit=3))[0].id for n in range(150)}
        for _ in range(50):
            # Leases of no length: expired at once, so these are due as takeovers.
            expired, _ = await store.create("expired", attempt_limit=3)
            assert await store.claim(expired.id, worker="w", lease_seconds=0) is not None
            due.add(expired.id)

        batches = await asyncio.gather(
            *(store.due_for_dispatch(limit=60, grace_seconds=3600) for _ in range(4))
        )

        returned = [task_id for batch in batches for task_id in batch]
        assert len(returned) == len(set(returned)), "an id was dispatched twice"
        assert set(returned) == due
        assert await store.due_for_dispatch(limit=1000, grace_seconds=3600) == []


async def test_concurrent_migrations_are_serialised(postgres_admin_url: str) -> None:
    async with fresh_postgres_database(postgres_admin_url) as url:
        await asyncio.gather(*(migrate(url) for _ in range(3)))

        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as connection:
                head = await connection.scalar(sa.text("SELECT version_num FROM alembic_version"))
        finally:
            await engine.dispose()
        assert head == "0003"


async def test_closed_port_is_service_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe socket is closed.
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/taskwire"

    async with open_store(url, dispatch_grace_seconds=10) as store:
        with pytest.raises(ServiceUnavailable, match=r"^The database is unavailable\.$"):
            await store.ping()
        with pytest.raises(ServiceUnavailable):
            await store.get(uuid4())
        with pytest.raises(ServiceUnavailable):
            await store.create("payload", attempt_limit=3)


async def test_store_recovers_when_its_connections_are_killed(
    store: SqlTaskStore, database_url: str, postgres_admin_url: str
) -> None:
    await store.ping()  # a pooled connection now exists
    database = sa.make_url(database_url).database
    admin = create_engine(postgres_admin_url, pool_size=1)
    try:
        async with admin.begin() as connection:
            await connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": database},
            )
    finally:
        await admin.dispose()

    # pool_pre_ping replaces the dead connection: the store carries on.
    task, _ = await store.create("after the drop", attempt_limit=3)
    assert await store.get(task.id) == task
