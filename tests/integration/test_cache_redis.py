"""What only the Redis cache can show: the stored layout, corrupt entries, a dead server."""

from __future__ import annotations

import asyncio
import time
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from taskwire.cache import RedisTaskCache, open_cache
from taskwire.errors import ServiceUnavailable
from tests.integration.conftest import DEAD_REDIS_URL
from tests.support.tasks import make_task

pytestmark = pytest.mark.redis


@pytest.fixture
def cache(redis_admin: Redis) -> RedisTaskCache:
    return RedisTaskCache(redis_admin, prefix=f"test-{uuid4().hex}")


async def test_an_entry_is_a_hash_of_version_and_snapshot_with_a_ttl(
    cache: RedisTaskCache, redis_admin: Redis
) -> None:
    task = make_task(4)
    await cache.put(task, ttl_seconds=30)

    key = cache.key(task.id)
    assert await redis_admin.hgetall(key) == {b"v": b"4", b"d": task.to_json().encode()}
    assert 0 < await redis_admin.pttl(key) <= 30_000


async def test_rewriting_the_same_version_refreshes_the_ttl(
    cache: RedisTaskCache, redis_admin: Redis
) -> None:
    task = make_task(2)
    await cache.put(task, ttl_seconds=1)

    await cache.put(task, ttl_seconds=60)

    assert await redis_admin.pttl(cache.key(task.id)) > 50_000


async def test_a_refused_put_leaves_the_ttl_alone(
    cache: RedisTaskCache, redis_admin: Redis
) -> None:
    task = make_task(2)
    await cache.put(task, ttl_seconds=1)

    assert await cache.put(make_task(1, task.id), ttl_seconds=60) is False

    assert await redis_admin.pttl(cache.key(task.id)) <= 1000


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
    cache: RedisTaskCache, redis_admin: Redis, corrupt: dict[str, str | bytes]
) -> None:
    task_id = uuid4()
    key = cache.key(task_id)
    await redis_admin.hset(key, mapping=corrupt)  # type: ignore[arg-type]

    assert await cache.get(task_id) is None

    assert await redis_admin.exists(key) == 0


async def test_another_tasks_snapshot_under_the_key_is_a_miss(
    cache: RedisTaskCache, redis_admin: Redis
) -> None:
    task_id = uuid4()
    key = cache.key(task_id)
    await redis_admin.hset(key, mapping={"v": "1", "d": make_task().to_json()})

    assert await cache.get(task_id) is None

    assert await redis_admin.exists(key) == 0


async def test_a_key_of_another_type_is_a_miss_and_is_deleted(
    cache: RedisTaskCache, redis_admin: Redis
) -> None:
    task_id = uuid4()
    key = cache.key(task_id)
    await redis_admin.set(key, "garbage")

    assert await cache.get(task_id) is None

    assert await redis_admin.exists(key) == 0


async def test_a_key_of_another_type_spoils_no_other_read_in_its_batch(
    cache: RedisTaskCache, redis_admin: Redis
) -> None:
    good = [make_task(1) for _ in range(5)]
    for task in good:
        await cache.put(task, ttl_seconds=30)
    bad_id = uuid4()
    await redis_admin.set(cache.key(bad_id), "garbage")

    found = await asyncio.gather(
        *(cache.get(task_id) for task_id in [bad_id, *(t.id for t in good)])
    )

    assert found == [None, *good]
    assert await redis_admin.exists(cache.key(bad_id)) == 0


async def test_writes_survive_a_flushed_script_cache(
    cache: RedisTaskCache, redis_admin: Redis
) -> None:
    await cache.put(make_task(1), ttl_seconds=30)  # the script is loaded now
    await redis_admin.script_flush()
    tasks = [make_task(1) for _ in range(3)]

    stored = await asyncio.gather(*(cache.put(task, ttl_seconds=30) for task in tasks))

    assert stored == [True, True, True]
    assert [await cache.get(task.id) for task in tasks] == tasks


@pytest.mark.parametrize("kind", ["string", "bad-version"])
async def test_put_replaces_a_corrupt_entry(
    cache: RedisTaskCache, redis_admin: Redis, kind: str
) -> None:
    task = make_task(1)
    key = cache.key(task.id)
    if kind == "string":
        await redis_admin.set(key, "garbage")
    else:
        await redis_admin.hset(key, mapping={"v": "not a number", "d": "{"})

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
