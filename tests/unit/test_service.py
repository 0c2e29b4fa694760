"""The use cases on the embedded adapters, with broken adapters where Redis or RabbitMQ fail."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, cast
from uuid import UUID

import pytest

from taskwire import service
from taskwire.bootstrap import Services, connect
from taskwire.cache import MemoryTaskCache
from taskwire.db import migrate
from taskwire.errors import ServiceUnavailable
from taskwire.models import Task, TaskStatus
from taskwire.ports import Delivery, QueueCounts, TaskStore
from taskwire.queue import MemoryTaskQueue
from taskwire.settings import Settings
from tests.support.auth import TESTER


class DownQueue:
    """A broker that is unreachable."""

    async def publish(
        self,
        task_id: UUID,
        *,
        delay_seconds: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        raise ServiceUnavailable("The broker is unavailable.")

    def consume(self, *, prefetch: int) -> AbstractAsyncContextManager[AsyncIterator[Delivery]]:
        raise ServiceUnavailable("The broker is unavailable.")

    async def ping(self) -> None:
        raise ServiceUnavailable("The broker is unavailable.")

    async def stats(self) -> QueueCounts:
        raise ServiceUnavailable("The broker is unavailable.")


class DownCache:
    """A Redis that is unreachable."""

    async def get(self, task_id: UUID) -> Task | None:
        raise ServiceUnavailable("Redis is unavailable.")

    async def put(self, task: Task, *, ttl_seconds: float) -> bool:
        raise ServiceUnavailable("Redis is unavailable.")

    async def ping(self) -> None:
        raise ServiceUnavailable("Redis is unavailable.")


async def test_create_commits_publishes_and_caches(services: Services) -> None:
    task = await service.create_task(services, TESTER, "hello")
    assert await services.store.get(task.id) == task
    assert await services.cache.get(task.id) == task
    # The publish finishes after the answer.
    assert await services.publishes.settle(timeout=5) == set()
    assert isinstance(services.queue, MemoryTaskQueue)
    assert await services.queue.depth() == (1, 0)
    assert await services.cache.get(task.id) == task
    assert await services.store.get(task.id) == task


@pytest.fixture
async def quick_dispatch(settings: Settings) -> AsyncIterator[Services]:
    """Services whose outbox grace is short enough to watch the dispatcher act."""
    quick = dataclasses.replace(settings, dispatch_grace_seconds=0.2)
    await migrate(quick.database_url)
    async with connect(quick) as opened:
        yield opened


async def test_a_failed_publish_still_accepts_the_task_and_the_dispatcher_sends_it(
    quick_dispatch: Services,
) -> None:
    services = quick_dispatch
    task = await service.create_task(
        dataclasses.replace(services, queue=DownQueue()), TESTER, "outbox"
    )
    assert await services.store.get(task.id) == task
    assert await service.dispatch_due(services) == 0, "not due before the grace"
    async with asyncio.timeout(5):
        while await service.dispatch_due(services) == 0:
            await asyncio.sleep(0.05)
    assert isinstance(services.queue, MemoryTaskQueue)
    assert await services.queue.depth() == (1, 0)
    assert await service.dispatch_due(services) == 0, "once dispatched, it is not due again"


async def test_a_confirmed_publish_is_not_dispatched_again(quick_dispatch: Services) -> None:
    await service.create_task(quick_dispatch, TESTER, "once")
    await asyncio.sleep(0.3)  # past the grace: only the confirmation keeps it from being due
    assert await service.dispatch_due(quick_dispatch) == 0


class GatedQueue(MemoryTaskQueue):
    """A broker whose confirms wait until the test lets them through."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def publish(
        self,
        task_id: UUID,
        *,
        delay_seconds: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.waiting += 1
        await self.gate.wait()
        await super().publish(task_id, delay_seconds=delay_seconds, headers=headers)


async def poll(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_create_answers_before_the_confirm_and_the_publish_follows(
    services: Services,
) -> None:
    queue = GatedQueue()
    gated = dataclasses.replace(services, queue=queue)

    task = await service.create_task(gated, TESTER, "confirm later")

    assert await services.store.get(task.id) == task
    assert await services.cache.get(task.id) == task
    await poll(lambda: queue.waiting == 1)
    assert await queue.depth() == (0, 0)
    queue.gate.set()
    assert await gated.publishes.settle(timeout=5) == set()
    assert await queue.depth() == (1, 0)


async def test_past_the_publish_backlog_create_waits_for_its_own_confirm(
    services: Services,
) -> None:
    queue = GatedQueue()
    gated = dataclasses.replace(
        services, queue=queue, settings=dataclasses.replace(services.settings, publish_backlog=1)
    )
    await service.create_task(gated, TESTER, "in the backlog")

    second = asyncio.create_task(service.create_task(gated, TESTER, "past the backlog"))
    await poll(lambda: queue.waiting == 2)
    assert not second.done(), "answered before its publish was confirmed"
    queue.gate.set()
    await asyncio.wait_for(second, timeout=5)
    assert await gated.publishes.settle(timeout=5) == set()
    assert await queue.depth() == (2, 0)


class RefusedDeferrals:
    """A store whose deferral of the outbox deadline fails (the database went away just then)."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def defer_dispatch(self, task_id: UUID, *, seconds: float) -> None:
        raise ServiceUnavailable("The database is unavailable.")


async def test_a_refused_deferral_still_accepts_the_published_task(services: Services) -> None:
    flaky = dataclasses.replace(services, store=cast("TaskStore", RefusedDeferrals(services.store)))

    task = await service.create_task(flaky, TESTER, "deferral refused")
    assert await flaky.publishes.settle(timeout=5) == set()
    assert await flaky.background.settle(timeout=5) == set()

    assert await services.store.get(task.id) == task
    assert await services.cache.get(task.id) == task
    assert isinstance(services.queue, MemoryTaskQueue)
    assert await services.queue.depth() == (1, 0)


async def test_redis_down_changes_nothing_for_clients(services: Services) -> None:
    broken = dataclasses.replace(services, cache=DownCache())
    task = await service.create_task(broken, TESTER, "no cache")
    assert await service.get_task(broken, TESTER, task.id) == task


async def test_reads_fall_through_to_the_store_and_repopulate(services: Services) -> None:
    task = await service.create_task(services, TESTER, "read through")
    cold = dataclasses.replace(services, cache=MemoryTaskCache())
    assert await cold.cache.get(task.id) is None
    assert await service.get_task(cold, TESTER, task.id) == task
    assert await cold.cache.get(task.id) == task


async def test_watch_yields_only_newer_versions_and_ends_on_a_final_state(
    services: Services,
) -> None:
    task = await service.create_task(services, TESTER, "watch")
    updates = service.watch_task(services, TESTER, task.id)
    assert await anext(updates) == task
    claimed = await service.claim_task(services, task.id, worker="w")
    assert claimed is not None
    assert await anext(updates) == claimed
    # A stale or repeated event (e.g. a duplicate publish) is never passed on.
    await services.events.publish(task)
    await services.events.publish(claimed)
    done = await service.complete_task(services, claimed, "hctaw")
    assert done is not None
    assert await anext(updates) == done
    with pytest.raises(StopAsyncIteration):
        await anext(updates)


async def test_watch_rereads_the_truth_when_events_go_missing(services: Services) -> None:
    quiet = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, watch_recheck_seconds=0.1)
    )
    task = await service.create_task(quiet, TESTER, "missed")
    updates = service.watch_task(quiet, TESTER, task.id)
    assert await anext(updates) == task
    # Transitions straight in the store: no event is published.
    claimed = await services.store.claim(task.id, worker="w", lease_seconds=10)
    assert claimed is not None
    done = await services.store.complete(task.id, attempt=claimed.attempts, result="dessim")
    assert done is not None
    async with asyncio.timeout(5):
        assert await anext(updates) == done
    with pytest.raises(StopAsyncIteration):
        await anext(updates)


async def test_fenced_finish_of_a_lost_attempt_changes_nothing(services: Services) -> None:
    task = await service.create_task(services, TESTER, "fence")
    claimed = await service.claim_task(services, task.id, worker="w")
    assert claimed is not None
    stale = claimed.evolve(attempts=claimed.attempts - 1)
    assert await service.complete_task(services, stale, "nope") is None
    current = await services.store.get(task.id)
    assert current is not None
    assert current.status is TaskStatus.PROCESSING
    assert current.version == claimed.version


class FlakyReads:
    """The real store, except that get() fails while `down` is set (a database outage as the
    subscription sees it)."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self.down = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def get(self, task_id: UUID) -> Task | None:
        if self.down:
            self.refused += 1
            raise ServiceUnavailable("The database is unavailable.")
        return await self.store.get(task_id)


async def test_watch_outlives_a_database_outage(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "RESYNC_RETRY_SECONDS", 0.05)
    flaky = FlakyReads(services.store)
    quiet = dataclasses.replace(
        services,
        store=cast("TaskStore", flaky),
        settings=dataclasses.replace(services.settings, watch_recheck_seconds=0.1),
    )
    task = await service.create_task(quiet, TESTER, "outage")
    updates = service.watch_task(quiet, TESTER, task.id)
    assert await anext(updates) == task
    flaky.down = True
    claimed = await services.store.claim(task.id, worker="w", lease_seconds=10)
    assert claimed is not None
    done = await services.store.complete(task.id, attempt=claimed.attempts, result="egatuo")
    assert done is not None
    following = asyncio.ensure_future(anext(updates))
    async with asyncio.timeout(5):
        while flaky.refused < 2:
            await asyncio.sleep(0.01)
    assert not following.done(), "the subscription waits out the outage instead of failing"
    flaky.down = False
    assert await asyncio.wait_for(following, 5) == done
