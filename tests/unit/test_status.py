"""The queueStats query and `taskwire status` on the embedded adapters (SQLite, memory queue)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from strawberry.types import ExecutionResult

from graphql_api.auth import Authenticator
from graphql_api.context import Context
from graphql_api.schema import build_schema
from taskwire import service
from taskwire.bootstrap import Services
from taskwire.cli import main
from taskwire.identity import Principal
from taskwire.ports import QueueCounts, TaskCounts
from taskwire.queue import MemoryTaskQueue
from taskwire.settings import Settings
from taskwire.stats import EMBEDDED_QUEUE_NOTE, EXIT_NO_DATABASE, QueueStats, render_table
from taskwire.store import open_store
from tests.support.auth import TESTER, auth_settings

SCHEMA = build_schema()
FIELDS = (
    "pending processing completed failed cancelled oldestPendingAge brokerReachable "
    "queued delayed deadLettered consumers asOf"
)
QUERY = f"{{ queueStats {{ {FIELDS} }} }}"
WAIT = 10.0
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


async def stats_of(services: Services, principal: Principal | None = TESTER) -> ExecutionResult:
    context = Context(services, auth=Authenticator(auth_settings()), principal=principal)
    return await SCHEMA.execute(QUERY, context_value=context)


async def stats_data(services: Services, principal: Principal = TESTER) -> dict[str, Any]:
    result = await stats_of(services, principal)
    assert result.errors is None, result.errors
    assert result.data is not None
    data: dict[str, Any] = result.data["queueStats"]
    return data


def error_code(result: ExecutionResult) -> str:
    assert result.errors, "expected an error"
    assert result.data is None
    code: str = (result.errors[0].extensions or {}).get("code", "")
    return code


async def until(probe: Callable[[], Awaitable[dict[str, Any]]], **expected: Any) -> dict[str, Any]:
    """Poll until the stats have the expected values (the processor works in the background)."""
    async with asyncio.timeout(WAIT):
        while True:
            seen = await probe()
            if all(seen[key] == value for key, value in expected.items()):
                return seen
            await asyncio.sleep(0.02)


# --- the query --------------------------------------------------------------------------------


async def test_an_empty_deployment(services: Services) -> None:
    data = await stats_data(services)
    as_of = datetime.fromisoformat(data.pop("asOf"))
    assert abs(datetime.now(UTC) - as_of) < timedelta(seconds=5)
    assert data == {
        "pending": 0,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "oldestPendingAge": None,
        "brokerReachable": True,
        "queued": 0,
        "delayed": 0,
        "deadLettered": 0,
        "consumers": 0,
    }


async def test_counts_cover_every_owner_and_follow_the_tasks(services: Services) -> None:
    mine = await service.create_task(services, TESTER, "mine")
    await service.create_task(services, Principal(subject="someone-else"), "theirs")
    data = await stats_data(services)
    assert (data["pending"], data["queued"], data["cancelled"]) == (2, 2, 0)
    assert data["oldestPendingAge"] >= 0

    await service.cancel_task(services, TESTER, mine.id)
    data = await stats_data(services)
    assert (data["pending"], data["cancelled"]) == (1, 1)
    # The cancelled task's message is still queued: the processor skips it when it comes.
    assert data["queued"] == 2


@pytest.mark.usefixtures("processor")
async def test_a_processor_drains_the_queue(services: Services) -> None:
    for n in range(3):
        await service.create_task(services, TESTER, f"task {n}")
    data = await until(lambda: stats_data(services), completed=3)
    assert (data["pending"], data["processing"], data["queued"]) == (0, 0, 0)
    assert data["oldestPendingAge"] is None
    assert data["consumers"] == 1


async def test_the_local_user_may_ask(services: Services) -> None:
    await service.create_task(services, Principal.local(), "local")
    assert (await stats_data(services, Principal.local()))["pending"] == 1


async def test_a_watch_token_is_forbidden(services: Services) -> None:
    task = await service.create_task(services, TESTER, "watched")
    watcher = Principal.watcher(TESTER.subject, task.id, datetime.now(UTC) + timedelta(minutes=5))
    assert error_code(await stats_of(services, watcher)) == "FORBIDDEN"


async def test_no_token_is_unauthenticated(services: Services) -> None:
    assert error_code(await stats_of(services, None)) == "UNAUTHENTICATED"


async def test_a_broker_that_is_down_leaves_the_counts(services: Services) -> None:
    await service.create_task(services, TESTER, "queued before the outage")
    assert isinstance(services.queue, MemoryTaskQueue)
    await services.queue.close()  # the memory queue's outage: it cannot say any more
    data = await stats_data(services)
    assert data["pending"] == 1
    assert data["brokerReachable"] is False
    assert [data[key] for key in ("queued", "delayed", "deadLettered", "consumers")] == [None] * 4


async def test_a_database_that_is_down_fails_the_query(services: Services, tmp_path: Path) -> None:
    missing = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'tasks.db'}"
    async with open_store(missing, dispatch_grace_seconds=1.0) as store:
        result = await stats_of(dataclasses.replace(services, store=store))
    assert error_code(result) == "SERVICE_UNAVAILABLE"


# --- the numbers ------------------------------------------------------------------------------


def counts(**overrides: Any) -> TaskCounts:
    values: dict[str, Any] = {
        "pending": 0,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "oldest_pending_at": None,
        "as_of": T0,
    }
    return TaskCounts(**{**values, **overrides})


def test_the_oldest_pending_age_is_seconds_before_the_read() -> None:
    stats = QueueStats(counts(oldest_pending_at=T0 - timedelta(seconds=90.25)), queue=None)
    assert stats.oldest_pending_age == 90.25
    # Another process's clock may run ahead of this one: never a negative age.
    ahead = QueueStats(counts(oldest_pending_at=T0 + timedelta(seconds=2)), queue=None)
    assert ahead.oldest_pending_age == 0.0


def test_the_table_is_aligned() -> None:
    stats = QueueStats(
        counts(pending=3, completed=12345, oldest_pending_at=T0 - timedelta(seconds=4)),
        queue=QueueCounts(queued=2, delayed=0, dead_lettered=1, consumers=4),
    )
    table = render_table(stats, queue_name="taskwire.tasks", embedded=False)
    assert table.splitlines() == [
        "tasks (database, every owner)",
        "  pending             3",
        "  processing          0",
        "  completed       12345",
        "  failed              0",
        "  cancelled           0",
        "  oldest pending  4.0 s",
        "queue taskwire.tasks",
        "  queued         2",
        "  delayed        0",
        "  dead-lettered  1",
        "  consumers      4",
        "as of 2030-01-01T12:00:00+00:00",
    ]


def test_the_table_says_why_queue_numbers_are_missing() -> None:
    stats = QueueStats(counts(), queue=None)
    assert f"queue: {EMBEDDED_QUEUE_NOTE}" in render_table(stats, queue_name="q", embedded=True)
    assert "queue q: the broker at RABBITMQ_URL cannot be reached" in render_table(
        stats, queue_name="q", embedded=False
    )


# --- `taskwire status` ------------------------------------------------------------------------


@pytest.fixture
def status_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RABBITMQ_URL", "memory://")
    return settings


async def run_status(*args: str) -> int:
    # main() runs its own event loop: off this test's loop, in a thread.
    return await asyncio.to_thread(main, ["status", *args])


async def test_status_json_agrees_with_the_query(
    services: Services, status_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await service.create_task(services, TESTER, "one")
    await service.create_task(services, TESTER, "two")
    assert await run_status("--json") == 0
    printed = json.loads(capsys.readouterr().out)
    queried = await stats_data(services)
    database_keys = ("pending", "processing", "completed", "failed", "cancelled")
    assert [printed[key] for key in database_keys] == [queried[key] for key in database_keys]
    assert printed["pending"] == 2
    assert 0 <= printed["oldestPendingAge"] < 60
    # The embedded queue lives in the process that opened it, never in `taskwire status`.
    assert printed["brokerReachable"] is False
    assert printed["queued"] is None
    assert set(printed) == set(queried)


async def test_status_prints_a_table(
    services: Services, status_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await service.create_task(services, TESTER, "one")
    assert await run_status() == 0
    out = capsys.readouterr().out
    assert re.search(r"^  pending +1$", out, re.MULTILINE), out
    assert EMBEDDED_QUEUE_NOTE in out


async def test_status_without_a_database_file_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{missing}")
    assert await run_status() == EXIT_NO_DATABASE == 3
    err = capsys.readouterr().err.strip()
    assert err == (
        f"taskwire status: no SQLite database at {missing}; "
        "run `taskwire migrate` or `taskwire dev`"
    )
    assert not missing.exists(), "status must not create a database"


async def test_status_of_an_unmigrated_database_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{empty}")
    assert await run_status("--json") == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "taskwire status: cannot read the tasks table; has `taskwire migrate` run on this database?"
    )


async def test_status_of_an_unreachable_database_exits_3_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql+asyncpg://nobody:secret@127.0.0.1:1/{uuid4()}")
    assert await run_status() == 3
    err = capsys.readouterr().err
    assert err.strip() == "taskwire status: cannot reach the database at DATABASE_URL"
    assert "secret" not in err
