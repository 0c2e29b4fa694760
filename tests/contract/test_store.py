"""TaskStore contract, run against SqlTaskStore on SQLite and on PostgreSQL (same tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from taskwire.db import UtcDateTime, alembic_config, create_engine, metadata, migrate, tasks
from taskwire.errors import ServiceUnavailable
from taskwire.models import Task, TaskStatus
from taskwire.ports import TaskCounts
from taskwire.store import SqlTaskStore, open_store
from tests.support.databases import fresh_postgres_database

GRACE = 10.0
LEASE = 30.0
LIMIT = 3


class ManualClock:
    """The store's clock, moved by the test: leases expire without waiting."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def blank_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty, unmigrated database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    async with fresh_postgres_database(admin_url) as url:
        yield url


@pytest.fixture
async def database_url(blank_database_url: str) -> str:
    """A migrated, empty database of each kind."""
    await migrate(blank_database_url)
    return blank_database_url


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


async def new_task(
    store: SqlTaskStore, input_data: str = "payload", *, attempt_limit: int = LIMIT
) -> Task:
    task, created = await store.create(input_data, attempt_limit=attempt_limit)
    assert created
    return task


async def claimed(
    store: SqlTaskStore, *, lease_seconds: float = LEASE, attempt_limit: int = LIMIT
) -> Task:
    task = await new_task(store, attempt_limit=attempt_limit)
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
    assert head == "0003"


async def test_status_check_constraint_exists(database_url: str, clock: ManualClock) -> None:
    await assert_status_is_checked(database_url, clock)


async def assert_status_is_checked(database_url: str, clock: ManualClock) -> None:
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


async def _alembic(url: str, action: Callable[[Config, str], None], revision: str) -> None:
    """Run an Alembic command (upgrade/downgrade to `revision`) the way taskwire.db does."""

    def run(connection: sa.Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        action(config, revision)

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def test_migration_0002_gives_existing_rows_a_budget(
    blank_database_url: str, clock: ManualClock
) -> None:
    url = blank_database_url
    await _alembic(url, command.upgrade, "0001")
    fresh, handed_back, running, done = uuid4(), uuid4(), uuid4(), uuid4()
    common = {
        "input_data": "x",
        "version": 1,
        "created_at": clock.now,
        "updated_at": clock.now,
        "dispatch_after": clock.now,
        # One executemany: every row needs the same keys.
        "lease_owner": None,
        "lease_expires_at": None,
    }
    lease = {"lease_owner": "w", "lease_expires_at": clock.now + timedelta(seconds=5)}
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            # Only the columns revision 0001 has.
            await connection.execute(
                sa.insert(tasks),
                [
                    {"id": fresh, "status": "PENDING", "attempts": 0, **common},
                    # Takeovers and hand-backs were unbounded before 0002.
                    {"id": handed_back, "status": "PENDING", "attempts": 5, **common},
                    {"id": running, "status": "PROCESSING", "attempts": 5, **common, **lease},
                    {"id": done, "status": "COMPLETED", "attempts": 4, **common},
                ],
            )
    finally:
        await engine.dispose()

    await migrate(url)

    async with open_store(url, dispatch_grace_seconds=GRACE, clock=clock) as store:
        budgets = {
            task_id: (task.attempts, task.attempt_limit)
            for task_id in (fresh, handed_back, running, done)
            if (task := await store.get(task_id)) is not None
        }
        # A PENDING task always has an attempt left; a lost worker's task is given up.
        next_go = await store.claim(handed_back, worker="w", lease_seconds=LEASE)
        clock.advance(6)
        gave_up = await store.claim(running, worker="w", lease_seconds=LEASE)
    assert budgets == {fresh: (0, 3), handed_back: (5, 6), running: (5, 5), done: (4, 4)}
    assert next_go is not None
    assert (next_go.status, next_go.attempts) == (TaskStatus.PROCESSING, 6)
    assert gave_up is not None
    assert gave_up.status is TaskStatus.FAILED


async def test_migration_0002_downgrades(database_url: str, clock: ManualClock) -> None:
    await _alembic(database_url, command.downgrade, "0001")

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda sync: {column["name"] for column in sa.inspect(sync).get_columns("tasks")}
            )
    finally:
        await engine.dispose()
    assert "attempt_limit" not in columns
    assert "idempotency_key" in columns
    # SQLite may copy the table to drop a column: the copy must keep its constraints.
    await assert_status_is_checked(database_url, clock)
    await migrate(database_url)
    await assert_status_is_checked(database_url, clock)
    async with open_store(database_url, dispatch_grace_seconds=GRACE) as store:
        task, _ = await store.create("again", attempt_limit=2)
        assert await store.get(task.id) == task


# --- create / get -------------------------------------------------------------------------


async def test_create_defaults(store: SqlTaskStore, clock: ManualClock) -> None:
    task, created = await store.create("hello", attempt_limit=5)

    assert created is True
    assert task.status is TaskStatus.PENDING
    assert (task.input_data, task.result, task.error) == ("hello", None, None)
    assert (task.attempts, task.version, task.attempt_limit) == (0, 1, 5)
    assert task.created_at == task.updated_at == clock.now
    assert_utc(task.created_at)
    assert (task.started_at, task.finished_at) == (None, None)

    stored = await store.get(task.id)
    assert stored == task
    assert stored is not None
    assert_utc(stored.created_at)
    assert_utc(stored.updated_at)


async def test_create_gives_distinct_ids(store: SqlTaskStore) -> None:
    first, second = await new_task(store, "a"), await new_task(store, "a")
    assert first.id != second.id


async def test_get_unknown_is_none(store: SqlTaskStore) -> None:
    assert await store.get(uuid4()) is None


async def test_unknown_task_transitions_are_none(store: SqlTaskStore) -> None:
    unknown = uuid4()
    assert await store.claim(unknown, worker="w", lease_seconds=LEASE) is None
    assert await store.complete(unknown, attempt=1, result="r") is None
    assert await store.fail(unknown, attempt=1, error="e") is None
    assert await store.release(unknown, attempt=1) is None
    assert await store.retry_later(unknown, attempt=1, error="e", delay_seconds=1) is None
    assert await store.cancel(unknown) is None
    assert await store.retry(unknown, extra_attempts=1) is None
    assert await store.heartbeat(unknown, attempt=1, lease_seconds=LEASE) is False


# --- claim --------------------------------------------------------------------------------


async def test_claim_once(store: SqlTaskStore, clock: ManualClock) -> None:
    task = await new_task(store)
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
    task = await new_task(store)

    claims = await asyncio.gather(
        *(store.claim(task.id, worker=f"w{n}", lease_seconds=LEASE) for n in range(10))
    )

    winners = [claim for claim in claims if claim is not None]
    assert len(winners) == 1
    assert winners[0].attempts == 1
    assert await store.get(task.id) == winners[0]


async def test_concurrent_claims_of_many_tasks_each_win_once(store: SqlTaskStore) -> None:
    """Concurrent calls may share one statement (PostgreSQL batches them): each task is still
    claimed exactly once, and each caller gets its own task back."""
    created = [await new_task(store, f"input {n}") for n in range(40)]

    # Every task twice: the second claim of each must lose, whichever batch it lands in.
    claims = await asyncio.gather(
        *(
            store.claim(task.id, worker=f"w{n}", lease_seconds=LEASE)
            for n, task in enumerate(created + created)
        )
    )

    by_task: dict[UUID, list[Task]] = {}
    for claim in claims:
        if claim is not None:
            by_task.setdefault(claim.id, []).append(claim)
    assert sorted(by_task) == sorted(task.id for task in created)
    for task in created:
        [claim] = by_task[task.id]
        assert (claim.status, claim.attempts, claim.input_data) == (
            TaskStatus.PROCESSING,
            1,
            task.input_data,
        )
        assert await store.get(task.id) == claim


async def test_concurrent_completions_are_fenced_one_by_one(store: SqlTaskStore) -> None:
    claims = [await claimed(store) for _ in range(20)]

    outcomes = await asyncio.gather(
        *(
            store.complete(claim.id, attempt=1 if n % 2 == 0 else 2, result=f"result {n}")
            for n, claim in enumerate(claims)
        )
    )

    for n, (claim, outcome) in enumerate(zip(claims, outcomes, strict=True)):
        if n % 2 == 0:
            assert outcome is not None
            assert (outcome.status, outcome.result, outcome.version) == (
                TaskStatus.COMPLETED,
                f"result {n}",
                3,
            )
            assert await store.get(claim.id) == outcome
        else:
            assert outcome is None
            assert await store.get(claim.id) == claim


async def test_a_completion_racing_its_duplicate_wins_once(store: SqlTaskStore) -> None:
    claim = await claimed(store)

    outcomes = await asyncio.gather(
        *(store.complete(claim.id, attempt=1, result=f"r{n}") for n in range(5))
    )

    winners = [outcome for outcome in outcomes if outcome is not None]
    assert len(winners) == 1
    assert await store.get(claim.id) == winners[0]


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
    task = await new_task(store)
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
    # A handed-back attempt is given back to the budget (attempts, the fence, still grow).
    assert released.attempt_limit == LIMIT + 1
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
    due_pending = await new_task(store, "due")
    expired = await claimed(store, lease_seconds=5)
    alive = await claimed(store, lease_seconds=100)
    completed = await claimed(store)
    assert await store.complete(completed.id, attempt=1, result="r") is not None
    failed = await claimed(store)
    assert await store.fail(failed.id, attempt=1, error="e") is not None
    clock.advance(GRACE + 1)
    fresh_pending = await new_task(store, "not due yet")

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
    created = {(await new_task(store, str(n))).id for n in range(5)}
    clock.advance(GRACE)

    batches = [await store.due_for_dispatch(limit=2, grace_seconds=60) for _ in range(4)]

    assert [len(batch) for batch in batches] == [2, 2, 1, 0]
    returned: list[UUID] = [task_id for batch in batches for task_id in batch]
    assert set(returned) == created
    assert len(returned) == len(created)


async def test_defer_dispatch(store: SqlTaskStore, clock: ManualClock) -> None:
    task = await new_task(store, "published")
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


# --- idempotent create --------------------------------------------------------------------


async def test_create_with_a_taken_key_returns_the_existing_task(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    first, created = await store.create("same", attempt_limit=2, idempotency_key="key-1")
    assert created is True
    claim = await store.claim(first.id, worker="w1", lease_seconds=LEASE)
    clock.advance(1)

    # Another input and budget under the same key: nothing is inserted, the caller compares.
    again, created = await store.create("other", attempt_limit=9, idempotency_key="key-1")

    assert created is False
    # The task as it is now, not as it was created.
    assert again == claim
    assert await store.get(first.id) == claim
    other, created = await store.create("same", attempt_limit=2, idempotency_key="key-2")
    assert created is True
    assert other.id != first.id


async def test_a_task_keeps_its_owner(store: SqlTaskStore) -> None:
    task, _ = await store.create("mine", attempt_limit=LIMIT, owner="alice")

    assert task.owner == "alice"
    stored = await store.get(task.id)
    assert stored is not None
    assert stored.owner == "alice"
    claim = await store.claim(task.id, worker="w1", lease_seconds=LEASE)
    assert claim is not None
    assert claim.owner == "alice"


async def test_idempotency_keys_belong_to_their_owner(store: SqlTaskStore) -> None:
    alices, created = await store.create(
        "a", attempt_limit=LIMIT, idempotency_key="k", owner="alice"
    )
    assert created

    # The same key from another owner is another task: it neither collides nor reveals alice's.
    bobs, created = await store.create("b", attempt_limit=LIMIT, idempotency_key="k", owner="bob")
    assert created
    assert bobs.id != alices.id
    again, created = await store.create(
        "a", attempt_limit=LIMIT, idempotency_key="k", owner="alice"
    )
    assert not created
    assert again.id == alices.id


async def test_migration_0003_keeps_existing_rows_ownerless(database_url: str) -> None:
    await _alembic(database_url, command.downgrade, "0002")
    engine = create_engine(database_url, pool_size=1)
    old_id = uuid4()
    now = datetime(2030, 1, 1, tzinfo=UTC)
    try:
        async with engine.begin() as connection:
            old_tasks = sa.table(
                "tasks",
                sa.column("id", sa.Uuid()),
                *(sa.column(name) for name in ("status", "input_data", "idempotency_key")),
                *(sa.column(name) for name in ("attempts", "version")),
                *(
                    sa.column(name, UtcDateTime())
                    for name in ("created_at", "updated_at", "dispatch_after")
                ),
            )
            await connection.execute(
                old_tasks.insert().values(
                    id=old_id,
                    status="PENDING",
                    input_data="old",
                    attempts=0,
                    version=1,
                    created_at=now,
                    updated_at=now,
                    dispatch_after=now,
                    idempotency_key="k",
                )
            )
    finally:
        await engine.dispose()
    await migrate(database_url)

    async with open_store(database_url, dispatch_grace_seconds=GRACE) as store:
        old = await store.get(old_id)
        assert old is not None
        assert old.owner == ""
        # The old key now belongs to nobody: a user's same key makes a new task.
        mine, created = await store.create(
            "new", attempt_limit=LIMIT, idempotency_key="k", owner="u"
        )
        assert created
        assert mine.id != old_id


async def test_tasks_without_a_key_are_never_merged(store: SqlTaskStore) -> None:
    results = [await store.create("same", attempt_limit=LIMIT) for _ in range(3)]

    assert [created for _, created in results] == [True, True, True]
    assert len({task.id for task, _ in results}) == 3


async def test_concurrent_identical_creates_make_one_task(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    results = await asyncio.gather(
        *(store.create("same", attempt_limit=LIMIT, idempotency_key="k") for _ in range(10))
    )

    assert sum(created for _, created in results) == 1
    assert len({task.id for task, _ in results}) == 1
    # Exactly one row exists: the dispatcher sees one task.
    clock.advance(GRACE)
    assert await store.due_for_dispatch(limit=100, grace_seconds=GRACE) == [results[0][0].id]


async def test_concurrent_creates_each_make_their_own_task(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    """Concurrent creates may share one INSERT (PostgreSQL batches them): keyed and unkeyed,
    per owner, each caller gets the row its call alone would have made."""
    calls = [
        *(store.create(f"plain {n}", attempt_limit=LIMIT, owner="ann") for n in range(20)),
        *(store.create("keyed", attempt_limit=LIMIT, idempotency_key="k", owner=o) for o in "ab"),
        store.create("keyed", attempt_limit=LIMIT, idempotency_key="k", owner="a"),
        store.create("other", attempt_limit=2, idempotency_key="k2", owner="a"),
    ]

    results = await asyncio.gather(*calls)

    created = [task for task, was_created in results if was_created]
    assert len(created) == 23
    assert [task.input_data for task, _ in results[:20]] == [f"plain {n}" for n in range(20)]
    assert results[20][0].owner == "a"
    assert results[21][0].owner == "b"
    # Concurrent calls with one key: either may win the insert, the other gets its row.
    assert results[22][0] == results[20][0]
    assert sorted([results[20][1], results[22][1]]) == [False, True]
    assert results[23][0].attempt_limit == 2
    for task in created:
        assert await store.get(task.id) == task
    clock.advance(GRACE)
    due = await store.due_for_dispatch(limit=100, grace_seconds=GRACE)
    assert sorted(due) == sorted(task.id for task in created)


async def test_concurrent_deferrals_each_apply(store: SqlTaskStore, clock: ManualClock) -> None:
    tasks = [await new_task(store) for _ in range(10)]
    claimed = await store.claim(tasks[0].id, worker="w", lease_seconds=LEASE)
    assert claimed is not None

    await asyncio.gather(
        *(store.defer_dispatch(task.id, seconds=GRACE * (2 + n)) for n, task in enumerate(tasks))
    )

    # Deadlines now: the claimed task its lease expiry (LEASE = 30 s: it was not deferred),
    # task n 20 + 10 n seconds.
    clock.advance(35)
    due = await store.due_for_dispatch(limit=100, grace_seconds=GRACE)
    assert sorted(due) == sorted([tasks[0].id, tasks[1].id])
    clock.advance(40)  # 75 s: tasks 2-5 are due, and 0-1 again (pushed to 45 s)
    due = await store.due_for_dispatch(limit=100, grace_seconds=GRACE)
    assert sorted(due) == sorted(task.id for task in tasks[:6])


async def test_create_refuses_an_empty_budget(store: SqlTaskStore) -> None:
    with pytest.raises(ValueError, match="attempt_limit"):
        await store.create("x", attempt_limit=0)


# --- the attempt budget -------------------------------------------------------------------


async def test_claims_stop_at_the_limit_and_give_up(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    first = await claimed(store, lease_seconds=5, attempt_limit=2)
    clock.advance(6)
    second = await store.claim(first.id, worker="w2", lease_seconds=5)
    assert second is not None
    assert (second.status, second.attempts) == (TaskStatus.PROCESSING, 2)
    clock.advance(6)

    # The second worker died too: its budget is spent, so this claim gives the task up.
    gave_up = await store.claim(first.id, worker="w3", lease_seconds=5)

    assert gave_up is not None
    assert gave_up.status is TaskStatus.FAILED
    assert gave_up.error == "Gave up after 2 attempts: the worker running it was lost."
    assert (gave_up.attempts, gave_up.attempt_limit, gave_up.version) == (2, 2, 4)
    assert gave_up.result is None
    assert gave_up.finished_at == gave_up.updated_at == clock.now
    assert gave_up.started_at == second.started_at
    # The lease is gone with it: the lost attempt can neither renew nor finish.
    assert await store.heartbeat(first.id, attempt=2, lease_seconds=5) is False
    assert await store.complete(first.id, attempt=2, result="late") is None
    assert await store.claim(first.id, worker="w4", lease_seconds=5) is None
    clock.advance(3600)
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == []
    assert await store.get(first.id) == gave_up


async def test_a_live_last_attempt_is_left_alone(store: SqlTaskStore, clock: ManualClock) -> None:
    claim = await claimed(store, lease_seconds=10, attempt_limit=1)
    clock.advance(9)

    assert await store.claim(claim.id, worker="w2", lease_seconds=10) is None
    assert await store.get(claim.id) == claim
    done = await store.complete(claim.id, attempt=1, result="daolyap")
    assert done is not None
    assert done.status is TaskStatus.COMPLETED


async def test_concurrent_claims_give_up_once(store: SqlTaskStore, clock: ManualClock) -> None:
    claim = await claimed(store, lease_seconds=5, attempt_limit=1)
    clock.advance(6)

    claims = await asyncio.gather(
        *(store.claim(claim.id, worker=f"w{n}", lease_seconds=5) for n in range(10))
    )

    winners = [result for result in claims if result is not None]
    assert len(winners) == 1
    assert (winners[0].status, winners[0].version) == (TaskStatus.FAILED, 3)


async def test_retry_later_of_the_last_attempt_fails_the_task(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    claim = await claimed(store, attempt_limit=1)
    clock.advance(1)

    # The caller should have called fail(); the store never leaves a PENDING task that has
    # no attempt left to run.
    failed = await store.retry_later(claim.id, attempt=1, error="boom", delay_seconds=0)

    assert failed is not None
    assert failed.status is TaskStatus.FAILED
    assert (failed.error, failed.attempts, failed.version) == ("boom", 1, 3)
    assert failed.finished_at == failed.updated_at == clock.now
    assert await store.heartbeat(claim.id, attempt=1, lease_seconds=LEASE) is False
    assert await store.claim(claim.id, worker="w2", lease_seconds=LEASE) is None
    clock.advance(3600)
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == []
    assert await store.get(claim.id) == failed


# --- retry later --------------------------------------------------------------------------


async def test_retry_later(store: SqlTaskStore, clock: ManualClock) -> None:
    claim = await claimed(store)
    clock.advance(1)

    waiting = await store.retry_later(claim.id, attempt=1, error="boom", delay_seconds=20)

    assert waiting is not None
    assert waiting.status is TaskStatus.PENDING
    assert (waiting.error, waiting.result, waiting.finished_at) == ("boom", None, None)
    assert (waiting.attempts, waiting.attempt_limit, waiting.version) == (1, LIMIT, 3)
    assert waiting.updated_at == clock.now
    assert waiting.started_at == claim.started_at
    # The lease went with it.
    assert await store.heartbeat(claim.id, attempt=1, lease_seconds=LEASE) is False
    # The delay queue brings it back; the dispatcher only after the delay and the grace.
    clock.advance(20 + GRACE - 0.5)
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == []
    clock.advance(0.5)
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == [claim.id]
    again = await store.claim(claim.id, worker="w2", lease_seconds=LEASE)
    assert again is not None
    assert (again.status, again.attempts, again.version) == (TaskStatus.PROCESSING, 2, 4)


async def test_retry_later_is_fenced(store: SqlTaskStore) -> None:
    pending = await new_task(store)
    assert await store.retry_later(pending.id, attempt=0, error="e", delay_seconds=1) is None
    claim = await claimed(store)

    assert await store.retry_later(claim.id, attempt=2, error="e", delay_seconds=1) is None
    assert await store.get(claim.id) == claim
    assert await store.retry_later(claim.id, attempt=1, error="e", delay_seconds=1) is not None
    assert await store.retry_later(claim.id, attempt=1, error="e", delay_seconds=1) is None
    assert await store.get(pending.id) == pending


# --- cancel -------------------------------------------------------------------------------


async def test_cancel_a_pending_task(store: SqlTaskStore, clock: ManualClock) -> None:
    task = await new_task(store)
    clock.advance(1)

    cancelled = await store.cancel(task.id)

    assert cancelled is not None
    assert cancelled.status is TaskStatus.CANCELLED
    assert (cancelled.attempts, cancelled.version) == (0, 2)
    assert cancelled.finished_at == cancelled.updated_at == clock.now
    assert (cancelled.result, cancelled.error, cancelled.started_at) == (None, None, None)
    # The processor then skips it, the dispatcher forgets it, and it stays cancelled.
    assert await store.claim(task.id, worker="w", lease_seconds=LEASE) is None
    clock.advance(3600)
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == []
    assert await store.cancel(task.id) is None
    assert await store.retry(task.id, extra_attempts=1) is None
    assert await store.get(task.id) == cancelled


async def test_cancel_refuses_every_other_state(store: SqlTaskStore) -> None:
    processing = await claimed(store)
    completed = await store.complete((await claimed(store)).id, attempt=1, result="r")
    failed = await store.fail((await claimed(store)).id, attempt=1, error="e")

    for task in (processing, completed, failed):
        assert task is not None
        assert await store.cancel(task.id) is None
        assert await store.get(task.id) == task


# --- retry (redrive) ----------------------------------------------------------------------


async def test_retry_a_failed_task(store: SqlTaskStore, clock: ManualClock) -> None:
    claim = await claimed(store)
    failed = await store.fail(claim.id, attempt=1, error="boom")
    assert failed is not None
    clock.advance(5)

    retried = await store.retry(claim.id, extra_attempts=2)

    assert retried is not None
    assert retried.status is TaskStatus.PENDING
    assert (retried.attempts, retried.attempt_limit, retried.version) == (1, 3, 4)
    assert (retried.result, retried.error, retried.finished_at) == (None, None, None)
    # Kept on purpose: when the last attempt began, until the next claim says otherwise.
    assert retried.started_at == claim.started_at
    assert retried.updated_at == clock.now
    assert retried.created_at == claim.created_at
    # Due for dispatch after the grace, like a new task.
    clock.advance(GRACE - 0.5)
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == []
    clock.advance(0.5)
    assert await store.due_for_dispatch(limit=10, grace_seconds=GRACE) == [claim.id]
    assert await store.retry(claim.id, extra_attempts=2) is None


async def test_retry_refuses_every_other_state(store: SqlTaskStore) -> None:
    pending = await new_task(store)
    processing = await claimed(store)
    completed = await store.complete((await claimed(store)).id, attempt=1, result="r")
    cancelled = await store.cancel((await new_task(store)).id)

    for task in (pending, processing, completed, cancelled):
        assert task is not None
        assert await store.retry(task.id, extra_attempts=3) is None
        assert await store.get(task.id) == task
    with pytest.raises(ValueError, match="extra_attempts"):
        await store.retry(pending.id, extra_attempts=0)


async def test_a_retried_task_runs_up_to_its_new_budget(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    claim = await claimed(store, lease_seconds=5, attempt_limit=1)
    clock.advance(6)
    gave_up = await store.claim(claim.id, worker="w", lease_seconds=5)
    assert gave_up is not None
    assert gave_up.status is TaskStatus.FAILED

    retried = await store.retry(claim.id, extra_attempts=2)

    assert retried is not None
    assert (retried.attempts, retried.attempt_limit) == (1, 3)
    for attempt in (2, 3):
        run = await store.claim(claim.id, worker=f"w{attempt}", lease_seconds=5)
        assert run is not None
        assert (run.status, run.attempts) == (TaskStatus.PROCESSING, attempt)
        clock.advance(6)
    again = await store.claim(claim.id, worker="w4", lease_seconds=5)
    assert again is not None
    assert again.status is TaskStatus.FAILED
    assert again.error == "Gave up after 3 attempts: the worker running it was lost."
    assert await store.retry(claim.id, extra_attempts=1) is not None
    last = await store.claim(claim.id, worker="w5", lease_seconds=5)
    assert last is not None
    assert (last.attempts, last.attempt_limit) == (4, 4)
    done = await store.complete(claim.id, attempt=4, result="daolyap")
    assert done is not None
    assert done.status is TaskStatus.COMPLETED


async def test_a_zombie_from_before_a_retry_never_finishes(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    zombie = await claimed(store, lease_seconds=5, attempt_limit=1)
    clock.advance(6)
    assert await store.claim(zombie.id, worker="w2", lease_seconds=5) is not None  # gave up
    retried = await store.retry(zombie.id, extra_attempts=1)
    assert retried is not None

    async def zombie_acts() -> None:
        # Attempt 1 wakes up: it can change nothing, whatever state the task is in.
        assert await store.complete(zombie.id, attempt=1, result="zombie") is None
        assert await store.fail(zombie.id, attempt=1, error="zombie") is None
        assert await store.retry_later(zombie.id, attempt=1, error="z", delay_seconds=0) is None
        assert await store.release(zombie.id, attempt=1) is None
        assert await store.heartbeat(zombie.id, attempt=1, lease_seconds=5) is False

    await zombie_acts()
    assert await store.get(zombie.id) == retried
    current = await store.claim(zombie.id, worker="w3", lease_seconds=5)
    assert current is not None
    assert current.attempts == 2
    await zombie_acts()
    assert await store.get(zombie.id) == current
    done = await store.complete(zombie.id, attempt=2, result="daolyap")
    assert done is not None
    assert (done.result, done.attempts) == ("daolyap", 2)


# --- the whole lifecycle ------------------------------------------------------------------


async def test_versions_strictly_increase(store: SqlTaskStore, clock: ManualClock) -> None:
    created = await new_task(store)
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


# --- stats (queueStats, `taskwire status`) -------------------------------------------------


async def test_stats_of_an_empty_store(store: SqlTaskStore, clock: ManualClock) -> None:
    assert await store.stats() == TaskCounts(
        pending=0,
        processing=0,
        completed=0,
        failed=0,
        cancelled=0,
        oldest_pending_at=None,
        as_of=clock.now,
    )


async def test_stats_count_every_status_of_every_owner(
    store: SqlTaskStore, clock: ManualClock
) -> None:
    oldest, _ = await store.create("a", attempt_limit=LIMIT, owner="alice")
    clock.advance(1)
    younger, _ = await store.create("b", attempt_limit=LIMIT, owner="bob")
    clock.advance(1)
    await claimed(store)  # stays PROCESSING
    done = await claimed(store)
    assert await store.complete(done.id, attempt=done.attempts, result="x") is not None
    for _ in range(2):
        lost = await claimed(store)
        assert await store.fail(lost.id, attempt=lost.attempts, error="boom") is not None
    dropped = await new_task(store)
    assert await store.cancel(dropped.id) is not None
    clock.advance(5)

    counts = await store.stats()
    assert (
        counts.pending,
        counts.processing,
        counts.completed,
        counts.failed,
        counts.cancelled,
    ) == (2, 1, 1, 2, 1)
    assert counts.oldest_pending_at == oldest.created_at
    assert_utc(counts.oldest_pending_at)
    assert counts.as_of == clock.now

    # Once the oldest is no longer PENDING, the next one is the oldest.
    assert await store.claim(oldest.id, worker="w2", lease_seconds=LEASE) is not None
    after = await store.stats()
    assert (after.pending, after.processing) == (1, 2)
    assert after.oldest_pending_at == younger.created_at


async def test_stats_of_an_unreachable_database_is_service_unavailable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'tasks.db'}"
    async with open_store(url, dispatch_grace_seconds=GRACE) as store:
        with pytest.raises(ServiceUnavailable):
            await store.stats()
