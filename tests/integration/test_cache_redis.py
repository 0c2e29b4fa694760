"""What only the Redis cache can show: the stored layout, corrupt entries, a dead server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from redis.asyncio import Redis

from taskwire.cache import RedisTaskCache, open_cache, redis_client
from taskwire.errors import ServiceUnavailable
from taskwire.models import Task, TaskStatus

pytestmark = pytest.mark.redis

# Nothing listens on port 1: connections are refused at once.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


def make_task(version: int = 1, task_id: UUID | None = None) -> Task:
    now = datetime.now(UTC)
    return Task(
        id=task_id or uuid4(),
        status=TaskStatus.PENDING,
        input_data="hello",
        result=None,
        error=None,
        attempts=0,
        version=version,
        created_at=now,
        updated_at=now,
    )


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Redis]:
    client = redis_client(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def cache(admin: Redis) -> RedisTaskCache:
    return RedisTaskCache(admin, prefix=f"test-{uuid4().hex}")


async def test_an_entry_is_a_hash_of_version_and_snapshot_with_a_ttl(
    cache: RedisTaskCache, admin: Redis
) -> None:
    task = make_task(4)
    await cache.put(task, ttl_seconds=30)

    key = cache.key(task.id)
    assert await admin.hgetall(key) == {b"v": b"4", b"d": task.to_json().encode()}
    assert 0 < await admin.pttl(key) <= 30_000


async def test_rewriting_the_same_version_refreshes_the_ttl(
    cache: RedisTaskCache, admin: Redis
) -> None:
    task = make_task(2)
    await cache.put(task, ttl_seconds=1)

    await cache.put(task, ttl_seconds=60)

    assert await admin.pttl(cache.key(task.id)) > 50_000


async def test_a_refused_put_leaves_the_ttl_alone(cache: RedisTaskCache, admin: Redis) -> None:
    task = make_task(2)
    await cache.put(task, ttl_seconds=1)

    assert await cache.put(make_task(1, task.id), ttl_seconds=60) is False

    assert await admin.pttl(cache.key(task.id)) <= 1000


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param({"v": "1", "d": "{not json"}, id="not-json"),
        pytest.param({"v": "1", "d": "[1, 2]"}, id="not-an-object"),
        pytest.param({"v": "1", "d": '{"id": "x"}'}, id="missing-fields"),
        pytest.param({"v": "1", "d": b"\xff\xfe"}, id="not-utf8"),
    ],
)
async def test_a_corrupt_snapshot_is_a_miss_and_is_deleted(
    cache: RedisTaskCache, admin: Redis, corrupt: dict[str, str | bytes]
) -> None:
    task_id = uuid4()
    key = cache.key(task_id)
    await admin.hset(key, mapping=corrupt)  # type: ignore[arg-type]

    assert await cache.get(task_id) is None

    assert await admin.exists(key) == 0


async def test_another_tasks_snapshot_under_the_key_is_a_miss(
    cache: RedisTaskCache, admin: Redis
) -> None:
    task_id = uuid4()
    key = cache.key(task_id)
    await admin.hset(key, mapping={"v": "1", "d": make_task().to_json()})

    assert await cache.get(task_id) is None

    assert await admin.exists(key) == 0


async def test_a_key_of_another_type_is_a_miss_and_is_deleted(
    cache: RedisTaskCache, admin: Redis
) -> None:
    task_id = uuid4()
    key = cache.key(task_id)
    await admin.set(key, "garbage")

    assert await cache.get(task_id) is None

    assert await admin.exists(key) == 0


@pytest.mark.parametrize("kind", ["string", "bad-version"])
async def test_put_replaces_a_corrupt_entry(cache: RedisTaskCache, admin: Redis, kind: str) -> None:
    task = make_task(1)
    key = cache.key(task.id)
    if kind == "string":
        await admin.set(key, "garbage")
    else:
        await admin.hset(key, mapping={"v": "not a number", "d": "{"})

    assert await cache.put(task, ttl_seconds=30) is True

    assert await cache.get(task.id) == task


async def test_a_dead_redis_fails_fast_with_service_unavailable() -> None:
    async with open_cache(DEAD_REDIS_URL, prefix="dead") as cache:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await cache.get(uuid4())
        with pytest.raises(ServiceUnavailable):
            await cache.put(make_task(), ttl_seconds=30)
        with pytest.raises(ServiceUnavailable):
            await cache.ping()
        assert time.monotonic() - started < 5
