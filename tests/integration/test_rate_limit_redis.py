"""What only the Redis rate limiter can show: the key layout, replicas sharing one limit, and
the per-process fallback when Redis is down."""

from __future__ import annotations

import logging
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from taskwire.cache import redis_client
from taskwire.errors import ServiceUnavailable
from taskwire.ratelimit import (
    FallbackRateLimiter,
    MemoryRateLimiter,
    RedisRateLimiter,
    open_rate_limiter,
)
from tests.integration.conftest import DEAD_REDIS_URL

LOGGER = "taskwire.ratelimit"


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid4().hex}"


@pytest.mark.redis
async def test_a_key_holds_the_arrival_time_and_expires_when_the_bucket_is_full(
    redis_admin: Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(redis_admin, prefix=prefix, per_minute=60, burst=5)

    await limiter.acquire("alice")
    await limiter.acquire("alice")

    key = f"{prefix}:rate:alice"
    assert limiter.key("alice") == key
    stored = await redis_admin.get(key)
    assert isinstance(stored, bytes)
    assert stored.isdigit()  # microseconds, written as an integer
    assert 1000 < await redis_admin.pttl(key) <= 2000  # two seconds of debt, then gone


@pytest.mark.redis
async def test_replicas_share_one_limit(redis_url: str, prefix: str) -> None:
    async with (
        open_rate_limiter(redis_url, prefix=prefix, per_minute=6, burst=4) as one,
        open_rate_limiter(redis_url, prefix=prefix, per_minute=6, burst=4) as other,
    ):
        waits = [await limiter.acquire("alice") for limiter in (one, other, one, other, one)]

    assert waits[:4] == [0.0] * 4
    assert waits[4] > 9


@pytest.mark.redis
async def test_garbage_at_the_key_is_replaced(redis_admin: Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_admin, prefix=prefix, per_minute=6, burst=1)
    await redis_admin.hset(limiter.key("alice"), "x", "1")

    assert await limiter.acquire("alice") == 0.0
    assert await limiter.acquire("alice") > 0


async def test_redis_urls_open_redis_with_a_memory_fallback() -> None:
    async with open_rate_limiter(DEAD_REDIS_URL, prefix="x", per_minute=60, burst=1) as opened:
        assert isinstance(opened, FallbackRateLimiter)


async def test_a_dead_redis_raises_service_unavailable() -> None:
    client = redis_client(DEAD_REDIS_URL)
    try:
        limiter = RedisRateLimiter(client, prefix="x", per_minute=60, burst=1)
        with pytest.raises(ServiceUnavailable):
            await limiter.acquire("alice")
    finally:
        await client.aclose()


async def test_without_redis_the_limit_holds_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with open_rate_limiter(DEAD_REDIS_URL, prefix="x", per_minute=60, burst=3) as limiter:
        waits = [await limiter.acquire("alice") for _ in range(4)]
        assert await limiter.acquire("bob") == 0.0

    assert waits[:3] == [0.0] * 3
    assert 0.9 < waits[3] <= 1.0
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


class FlakyLimiter:
    """A primary that is down while `down` is set and allows everything otherwise."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def acquire(self, key: str) -> float:
        self.calls += 1
        if self.down:
            raise ServiceUnavailable("down")
        return 0.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_fallback_warns_once_per_outage_and_goes_back_to_the_primary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock = FakeClock()
    primary = FlakyLimiter()
    limiter = FallbackRateLimiter(
        primary, MemoryRateLimiter(60, 1, clock), retry_seconds=1.0, clock=clock
    )
    primary.down = True

    assert await limiter.acquire("alice") == 0.0  # from memory
    assert await limiter.acquire("alice") > 0
    assert primary.calls == 1  # not asked again before retry_seconds
    clock.now += 1.0
    assert await limiter.acquire("alice") == 0.0
    assert primary.calls == 2
    assert len(caplog.records) == 1  # one warning for the whole outage

    primary.down = False
    clock.now += 1.0
    assert [await limiter.acquire("alice") for _ in range(3)] == [0.0] * 3  # the primary's answer
    assert primary.calls == 5
    assert len(caplog.records) == 2  # and one when it is back

    primary.down = True
    await limiter.acquire("alice")
    assert len(caplog.records) == 3  # a new outage warns again
