"""The TaskCache contract: the Redis and the memory adapter behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from taskwire.cache import MemoryTaskCache, open_cache
from taskwire.models import TaskStatus
from taskwire.ports import TaskCache
from tests.support.tasks import make_task

TTL = 60.0


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[TaskCache]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    async with open_cache(url, prefix=f"test-{uuid4().hex}") as opened:
        yield opened


async def wait_for_miss(cache: TaskCache, task_id: UUID) -> None:
    # Polling is the point: expiry is the server's clock, nothing to wait on.
    async with asyncio.timeout(5):
        while await cache.get(task_id) is not None:
            await asyncio.sleep(0.02)


async def test_unknown_task_is_a_miss(cache: TaskCache) -> None:
    assert await cache.get(uuid4()) is None


async def test_put_then_get_round_trips_the_snapshot(cache: TaskCache) -> None:
    started = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    task = make_task(3, status=TaskStatus.COMPLETED, result="olleh", started_at=started)

    assert await cache.put(task, ttl_seconds=TTL) is True

    assert await cache.get(task.id) == task


async def test_an_older_version_never_replaces_a_newer_one(cache: TaskCache) -> None:
    newer = make_task(2, status=TaskStatus.PROCESSING)
    await cache.put(newer, ttl_seconds=TTL)

    assert await cache.put(make_task(1, newer.id), ttl_seconds=TTL) is False

    assert await cache.get(newer.id) == newer


async def test_a_newer_version_replaces_an_older_one(cache: TaskCache) -> None:
    older = make_task(1)
    await cache.put(older, ttl_seconds=TTL)
    newer = make_task(2, older.id, status=TaskStatus.PROCESSING, attempts=1)

    assert await cache.put(newer, ttl_seconds=TTL) is True

    assert await cache.get(older.id) == newer


async def test_the_same_version_may_be_written_again(cache: TaskCache) -> None:
    first = make_task(2)
    await cache.put(first, ttl_seconds=TTL)
    again = first.evolve(input_data="rewritten")

    assert await cache.put(again, ttl_seconds=TTL) is True

    assert await cache.get(first.id) == again


async def test_entries_are_per_task(cache: TaskCache) -> None:
    one, other = make_task(5), make_task(1)
    await cache.put(one, ttl_seconds=TTL)

    assert await cache.put(other, ttl_seconds=TTL) is True

    assert await cache.get(one.id) == one
    assert await cache.get(other.id) == other


async def test_an_entry_expires_after_its_ttl(cache: TaskCache) -> None:
    task = make_task()
    await cache.put(task, ttl_seconds=0.2)
    assert await cache.get(task.id) == task

    await wait_for_miss(cache, task.id)


async def test_an_expired_newer_version_no_longer_blocks_an_older_one(cache: TaskCache) -> None:
    newer = make_task(3)
    await cache.put(newer, ttl_seconds=0.2)
    await wait_for_miss(cache, newer.id)
    older = make_task(1, newer.id)

    assert await cache.put(older, ttl_seconds=TTL) is True

    assert await cache.get(newer.id) == older


async def test_concurrent_writes_of_one_task_keep_the_newest(cache: TaskCache) -> None:
    """Concurrent calls may share one round trip (Redis batches them): each write still meets
    the compare-and-set on its own, in the order the calls were made."""
    first = make_task(1)
    versions = [make_task(v, first.id, status=TaskStatus.PROCESSING) for v in (3, 1, 5, 2, 4)]

    stored = await asyncio.gather(*(cache.put(task, ttl_seconds=TTL) for task in versions))

    assert stored == [True, False, True, False, False]
    assert await cache.get(first.id) == versions[2]


async def test_concurrent_reads_each_get_their_own_task(cache: TaskCache) -> None:
    tasks = [make_task(n + 1, result=f"result {n}") for n in range(30)]
    await asyncio.gather(*(cache.put(task, ttl_seconds=TTL) for task in tasks[:20]))

    found = await asyncio.gather(*(cache.get(task.id) for task in tasks))

    assert found == tasks[:20] + [None] * 10


async def test_ping_succeeds_when_reachable(cache: TaskCache) -> None:
    await cache.ping()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_cache_expires_on_its_clock() -> None:
    clock = FakeClock()
    cache = MemoryTaskCache(clock=clock)
    task = make_task()
    await cache.put(task, ttl_seconds=10)

    clock.now += 9.99
    assert await cache.get(task.id) == task
    clock.now += 0.01
    assert await cache.get(task.id) is None


async def test_memory_cache_rewriting_a_version_refreshes_its_ttl() -> None:
    clock = FakeClock()
    cache = MemoryTaskCache(clock=clock)
    task = make_task(2)
    await cache.put(task, ttl_seconds=10)
    clock.now += 8

    assert await cache.put(task, ttl_seconds=10) is True
    clock.now += 8

    assert await cache.get(task.id) == task


async def test_memory_cache_forgets_expired_entries_nobody_reads() -> None:
    clock = FakeClock()
    cache = MemoryTaskCache(clock=clock)
    for _ in range(100):
        await cache.put(make_task(), ttl_seconds=1)
    clock.now += 2

    for _ in range(20):
        await cache.put(make_task(), ttl_seconds=1)

    # Each write drops up to 8 expired entries from the front, so nothing old is left.
    assert len(cache._entries) == 20


async def test_memory_cache_an_expired_newer_version_does_not_block_an_older_one() -> None:
    clock = FakeClock()
    cache = MemoryTaskCache(clock=clock)
    newer = make_task(3)
    await cache.put(newer, ttl_seconds=10)
    clock.now += 10

    # No get() in between, which would drop the expired entry on its own.
    assert await cache.put(make_task(1, newer.id), ttl_seconds=10) is True
