"""TaskStore contract, run against SqlTaskStore on SQLite and on PostgreSQL (same tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from taskwire.db import create_engine, metadata, migrate, tasks
from taskwire.errors import ServiceUnavailable
from taskwire.models import Task, TaskStatus
from taskwire.store import SqlTaskStore, open_store
from tests.support.databases import fresh_postgres_database

GRACE = 10.0
LEASE = 30.0


class ManualClock:
    """The store's clock, moved by the test: leases expire without waiting."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}"
        await migrate(url)
        yield url
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    async with fresh_postgres_database(admin_url) as url:
        await migrate(url)
        yield url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def store(database_url: str, clock: ManualClock) -> AsyncIterator[SqlTaskStore]:
    engine = create_engine(database_url, pool_size=10)
    try:
        yield SqlTaskStore(engine, dispatch_grace_seconds=GRACE, clock=clock)
    finally:
        await engine.dispose()


async def claimed(store: SqlTaskStore, *, lease_seconds: float = LEASE) -> Task:
    task = await store.create("payload")
    claim = await store.claim(task.id, worker="w1", lease_seconds=lease_seconds)
    assert claim is not None
    return claim


def assert_utc(moment: datetime | None) -> None:
    assert moment is not None
    assert moment.utcoffset() == timedelta(0)


# --- schema -------------------------------------------------------------------------------


async def test_migrated_schema_matches_metadata(database_url: str) -> None:
    await migrate(database_url)  # a second run is a no-op
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            diffs = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
            head = await connection.scalar(sa.text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert diffs == []
    assert head == "0001"


async def test_status_check_constraint_exists(database_url: str, clock: ManualClock) -> None:
    engine = create_engine(database_url, pool_size=1)
    row = {
        "id": uuid4(),
        "status": "BOGUS",
        "input_data": "x",
        "attempts": 0,
        "version": 1,
        "created_at": clock.now,
        "updated_at": clock.now,
        "dispatch_after": clock.now,
    }
    try:
        with pytest.raises(sa.exc.IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(sa.insert(tasks), row)
    finally:
        await engine.dispose()


# --- create / get -------------------------------------------------------------------------


async def test_create_defaults(store: SqlTaskStore, clock: ManualClock) -> None:
    task = await store.create("hello")

    assert task.status is TaskStatus.PENDING
    assert (task.input_data, task.result, task.error) == ("hello", None, None)
    assert (task.attempts, task.version) == (0, 1)
    assert task.created_at == task.updated_at == clock.now
    assert_utc(task.created_at)
    assert (task.started_at, task.finished_at) == (None, None)

    stored = await store.get(task.id)
    assert stored == task
    assert stored is not None
    assert_utc(stored.created_at)
    assert_utc(stored.updated_at)


async def test_create_gives_distinct_ids(store: SqlTaskStore) -> None:
    first, second = await store.create("a"), await store.create("a")
    assert first.id != second.id


async def test_get_unknown_is_none(store: SqlTaskStore) -> None:
    assert await store.get(uuid4()) is None


async def test_unknown_task_transitions_are_none(store: SqlTaskStore) -> None:
    unknown = uuid4()
    assert await store.claim(unknown, worker="w", lease_seconds=LEASE) is None
    assert await store.complete(unknown, attempt=1, result="r") is None
    assert await store.fail(unknown, attempt=1, error="e") is None
    assert await store.release(unknown, attempt=1) is None
    assert await store.heartbeat(unknown, attempt=1, lease_seconds=LEASE) is False


# --- claim --------------------------------------------------------------------------------


async def test_claim_once(store: SqlTaskStore, clock: ManualClock) -> None:
    task = await store.create("payload")
    clock.advance(1)

    claim = await store.claim(task.id, worker="w1", lease_seconds=LEASE)

    assert claim is not None
    assert claim.status is TaskStatus.PROCESSING
    assert (claim.attempts, claim.version) == (1, 2)
    assert claim.started_at == claim.updated_at == clock.now
    assert claim.created_at == task.created_at
    assert_utc(claim.started_at)
    assert await store.claim(task.id, worker="w2", lease_seconds=LEASE) is None
    assert await store.get(task.id) == claim


async def test_concurrent_claims_have_one_winner(store: SqlTaskStore) -> None:
    task = await store.create("payload")

    claims = await asyncio.gather(
        *(store.claim(task.id, worker=f"w{n}", lease_seconds=LEASE) for n in range(10))
    )

    winners = [claim for claim in claims if claim is not None]
    assert len(winners) == 1
    assert winners[0].attempts == 1
    assert await store.get(task.id) == winners[0]


# --- finishing, fenced by the attempt ------------------------------------------------------


async def test_complete(store: SqlTaskStore, clock: ManualClock) -> None:
    claim = await claimed(store)
    clock.advance(2)

    done = await store.complete(claim.id, attempt=1, result="daolyap")

    assert done is not None
    assert done.status is TaskStatus.COMPLETED
    assert (done.result, done.error, done.attempts, done.version) == ("daolyap", None, 1, 3)
    assert done.finished_at == done.updated_at == clock.now
    assert done.started_at == claim.started_at
    assert_utc(done.finished_at)
    assert await store.get(claim.id) == done


async def test_complete_with_wrong_attempt_changes_nothing(store: SqlTaskStore) -> None:
    claim = await claimed(store)

    assert await store.complete(claim.id, attempt=2, result="r") is None
    assert await store.complete(claim.id, attempt=0, result="r") is None
    assert await store.fail(claim.id, attempt=2, error="e") is None
    assert await store.release(claim.id, attempt=2) is None
    assert await store.get(claim.id) == claim


async def test_duplicate_complete_is_refused(store: SqlTaskStore) -> None:
    claim = await claimed(store)
    done = await store.complete(claim.id, attempt=1, result="first")
    assert done is not None

    assert await store.complete(claim.id, attempt=1, result="second") is None
    assert await store.fail(claim.id, attempt=1, error="late") is None
    assert await store.release(claim.id, attempt=1) is None
    assert await store.claim(claim.id, worker="w2", lease_seconds=LEASE) is None
    assert await store.get(claim.id) == done


async def test_complete_of_pending_task_is_refused(store: SqlTaskStore) -> None:
    task = await store.create("payload")
    assert await store.complete(task.id, attempt=0, result="r") is None
    assert await store.get(task.id) == task


async def test_fail(store: SqlTaskStore, clock: ManualClock) -> None:
    claim = await claimed(store)
    clock.advance(2)

    failed = await store.fail(claim.id, attempt=1, error="boom")

    assert failed is not None
    assert failed.status is TaskStatus.FAILED
    assert (failed.error, failed.result, failed.version) == ("boom", None, 3)
    assert failed.finished_at == clock.now
    assert await store.complete(claim.id, attempt=1, result="r") is None
    assert await store.get(claim.id) == failed


async def test_release_hands_the_task_back(store: SqlTaskStore, clock: ManualClock) -> None:
    claim = await claimed(store)
    clock.advance(2)

    released = await store.release(claim.id, attempt=1)

    assert released is not None
    assert released.status is TaskStatus.PENDING
    assert (released.attempts, released.version) == (1, 3)
    assert released.updated_at == clock.now
    assert released.finished_at is None
    # Due at once, so the dispatcher republishes it.
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == [claim.id]
    assert await store.release(claim.id, attempt=1) is None
    again = await store.claim(claim.id, worker="w2", lease_seconds=LEASE)
    assert again is not None
    assert (again.attempts, again.version) == (2, 4)
    assert await store.complete(claim.id, attempt=1, result="stale") is None


# --- leases -------------------------------------------------------------------------------


async def test_heartbeat_extends_the_lease(store: SqlTaskStore, clock: ManualClock) -> None:
    claim = await claimed(store, lease_seconds=10)
    clock.advance(8)

    assert await store.heartbeat(claim.id, attempt=1, lease_seconds=10) is True

    # 13 s after the claim: the original lease is gone, the renewed one holds.
    clock.advance(5)
    assert await store.claim(claim.id, worker="w2", lease_seconds=LEASE) is None
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == []
    # Not a state change: the snapshot is untouched.
    assert await store.get(claim.id) == claim
    clock.advance(6)
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == [claim.id]


async def test_heartbeat_of_a_lost_attempt_is_false(store: SqlTaskStore) -> None:
    claim = await claimed(store)

    assert await store.heartbeat(claim.id, attempt=2, lease_seconds=LEASE) is False
    assert await store.complete(claim.id, attempt=1, result="r") is not None
    assert await store.heartbeat(claim.id, attempt=1, lease_seconds=LEASE) is False


async def test_takeover_of_an_expired_lease_fences_the_zombie(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    claim = await claimed(store, lease_seconds=10)
    clock.advance(9)
    assert await store.claim(claim.id, worker="w2", lease_seconds=10) is None

    clock.advance(2)
    takeover = await store.claim(claim.id, worker="w2", lease_seconds=10)

    assert takeover is not None
    assert takeover.status is TaskStatus.PROCESSING
    assert (takeover.attempts, takeover.version) == (2, 3)
    assert takeover.started_at == clock.now
    # The first worker wakes up: everything it tries is refused and changes nothing.
    assert await store.heartbeat(claim.id, attempt=1, lease_seconds=10) is False
    assert await store.complete(claim.id, attempt=1, result="zombie") is None
    assert await store.fail(claim.id, attempt=1, error="zombie") is None
    assert await store.release(claim.id, attempt=1) is None
    assert await store.get(claim.id) == takeover
    done = await store.complete(claim.id, attempt=2, result="ok")
    assert done is not None
    assert (done.result, done.attempts) == ("ok", 2)


# --- dispatch -----------------------------------------------------------------------------


async def test_due_for_dispatch_picks_due_and_expired(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    due_pending = await store.create("due")
    expired = await claimed(store, lease_seconds=5)
    alive = await claimed(store, lease_seconds=100)
    completed = await claimed(store)
    assert await store.complete(completed.id, attempt=1, result="r") is not None
    failed = await claimed(store)
    assert await store.fail(failed.id, attempt=1, error="e") is not None
    clock.advance(GRACE + 1)
    fresh_pending = await store.create("not due yet")

    due = await store.due_for_dispatch(limit=100, grace_seconds=5)

    assert sorted(due) == sorted([due_pending.id, expired.id])
    # Their deadlines moved 5 s ahead: nothing is due again until then.
    assert await store.due_for_dispatch(limit=100, grace_seconds=5) == []
    clock.advance(4)
    assert await store.due_for_dispatch(limit=100, grace_seconds=5) == []
    clock.advance(2)
    assert sorted(await store.due_for_dispatch(limit=100, grace_seconds=5)) == sorted(due)
    clock.advance(GRACE)
    assert fresh_pending.id in await store.due_for_dispatch(limit=100, grace_seconds=5)
    # Dispatching is not a state change.
    assert await store.get(due_pending.id) == due_pending
    assert await store.get(alive.id) == alive


async def test_due_for_dispatch_respects_the_limit(store: SqlTaskStore, clock: ManualClock) -> None:
    created = {(await store.create(str(n))).id for n in range(5)}
    clock.advance(GRACE)

    batches = [await store.due_for_dispatch(limit=2, grace_seconds=60) for _ in range(4)]

    assert [len(batch) for batch in batches] == [2, 2, 1, 0]
    returned: list[UUID] = [task_id for batch in batches for task_id in batch]
    assert set(returned) == created
    assert len(returned) == len(created)


async def test_defer_dispatch(store: SqlTaskStore, clock: ManualClock) -> None:
    task = await store.create("published")
    await store.defer_dispatch(task.id, seconds=300)

    clock.advance(GRACE + 1)
    assert await store.due_for_dispatch(limit=10, grace_seconds=5) == []
    assert await store.get(task.id) == task  # no version bump
    clock.advance(300)
    assert await store.due_for_dispatch(limit=10, grace_seconds=5) == [task.id]


async def test_defer_dispatch_leaves_a_claimed_task_alone(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    # The processor may claim a task before its publish is even confirmed.
    claim = await claimed(store, lease_seconds=5)
    await store.defer_dispatch(claim.id, seconds=300)

    clock.advance(6)
    assert await store.due_for_dispatch(limit=10, grace_seconds=300) == [claim.id]
    # Once the lease lapsed the task waits for dispatch again, and can be deferred (say after
    # a failed republish) to a sooner deadline.
    await store.defer_dispatch(claim.id, seconds=5)
    clock.advance(5)
    assert await store.due_for_dispatch(limit=10, grace_seconds=5) == [claim.id]
    assert await store.get(claim.id) == claim


# --- the whole lifecycle ------------------------------------------------------------------


async def test_versions_strictly_increase(store: SqlTaskStore, clock: ManualClock) -> None:
    created = await store.create("payload")
    task_id = created.id
    snapshots = [created]

    async def step(snapshot: Task | None) -> None:
        assert snapshot is not None
        snapshots.append(snapshot)
        clock.advance(1)

    await step(await store.claim(task_id, worker="w1", lease_seconds=5))
    await step(await store.release(task_id, attempt=1))
    await step(await store.claim(task_id, worker="w2", lease_seconds=5))
    assert await store.heartbeat(task_id, attempt=2, lease_seconds=5)
    clock.advance(10)
    await step(await store.claim(task_id, worker="w3", lease_seconds=5))
    await step(await store.complete(task_id, attempt=3, result="done"))

    versions = [snapshot.version for snapshot in snapshots]
    assert versions == [1, 2, 3, 4, 5, 6]
    times = [snapshot.updated_at for snapshot in snapshots]
    assert times == sorted(times)
    assert await store.get(task_id) == snapshots[-1]


# --- failures -----------------------------------------------------------------------------


async def test_unreachable_sqlite_is_service_unavailable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'tasks.db'}"
    async with open_store(url, dispatch_grace_seconds=GRACE) as store:
        with pytest.raises(ServiceUnavailable, match=r"^The database is unavailable\.$"):
            await store.ping()
        with pytest.raises(ServiceUnavailable):
            await store.get(uuid4())
