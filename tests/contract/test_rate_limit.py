"""The RateLimiter contract: the Redis and the memory adapter behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from uuid import uuid4

import pytest

from taskwire.cache import redis_client
from taskwire.ratelimit import (
    DisabledRateLimiter,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    open_rate_limiter,
)

MakeLimiter = Callable[[float, int], RateLimiter]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """Builds limiters of one adapter and lets time pass for them: the memory adapter runs on
    a fake clock, the Redis one on the server's clock (so passing time is really waiting)."""

    def __init__(self, make: MakeLimiter, clock: FakeClock | None) -> None:
        self.make = make
        self.clock = clock

    async def pass_time(self, seconds: float) -> None:
        if self.clock is None:
            await asyncio.sleep(seconds)
        else:
            self.clock.now += seconds

    async def until_allowed(self, limiter: RateLimiter, key: str) -> None:
        # A poll: each round waits as long as the limiter said, the timeout bounds the whole.
        async with asyncio.timeout(1.5):
            while (wait := await limiter.acquire(key)) > 0:
                await self.pass_time(wait)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()
        yield Harness(lambda per_minute, burst: MemoryRateLimiter(per_minute, burst, clock), clock)
        return
    client = redis_client(request.getfixturevalue("redis_url"))
    prefix = f"test-{uuid4().hex}"
    try:
        yield Harness(
            lambda per_minute, burst: RedisRateLimiter(
                client, prefix=prefix, per_minute=per_minute, burst=burst
            ),
            None,
        )
    finally:
        await client.aclose()


async def exhaust(limiter: RateLimiter, key: str, *, most: int = 1000) -> tuple[int, float]:
    """Acquire until refused: (how many were allowed, the wait of the refusal)."""
    for allowed in range(most):
        wait = await limiter.acquire(key)
        if wait > 0:
            return allowed, wait
    raise AssertionError(f"never refused after {most} requests")


async def test_the_burst_is_allowed_then_refused_with_a_retry_after(harness: Harness) -> None:
    limiter = harness.make(60, 5)  # one a second

    assert [await limiter.acquire("alice") for _ in range(5)] == [0.0] * 5
    wait = await limiter.acquire("alice")

    assert 0.9 < wait <= 1.0 + 1e-9


async def test_a_refusal_counts_nothing(harness: Harness) -> None:
    limiter = harness.make(6, 2)  # one every ten seconds
    await exhaust(limiter, "alice")

    waits = [await limiter.acquire("alice") for _ in range(5)]

    assert all(9.0 < wait <= 10.0 + 1e-9 for wait in waits), waits


async def test_keys_are_independent(harness: Harness) -> None:
    limiter = harness.make(6, 2)
    allowed, _ = await exhaust(limiter, "alice")

    assert allowed == 2
    assert await limiter.acquire("bob") == 0.0
    assert await limiter.acquire("bob") == 0.0
    assert await limiter.acquire("bob") > 0


async def test_the_bucket_refills_over_time(harness: Harness) -> None:
    limiter = harness.make(600, 3)  # one every 100 ms
    allowed, wait = await exhaust(limiter, "alice")
    assert allowed >= 3
    assert 0 < wait <= 0.1 + 1e-9

    await harness.until_allowed(limiter, "alice")


# Exact timing needs a clock the test controls: these two run on the memory adapter only.
async def test_the_sustained_rate_allows_one_per_interval() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(60, 4, clock)
    await exhaust(limiter, "alice")

    for _ in range(3):
        clock.now += 1.0
        assert await limiter.acquire("alice") == 0.0
        assert await limiter.acquire("alice") == pytest.approx(1.0)


async def test_a_full_refill_restores_the_whole_burst_and_no_more() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(60, 4, clock)
    await exhaust(limiter, "alice")

    clock.now += 3600

    allowed, wait = await exhaust(limiter, "alice")

    assert allowed == 4
    assert wait == pytest.approx(1.0)


async def test_concurrent_requests_allow_exactly_the_burst(harness: Harness) -> None:
    limiter = harness.make(6, 10)

    waits = await asyncio.gather(*(limiter.acquire("alice") for _ in range(100)))

    assert waits.count(0.0) == 10
    assert all(wait > 0 for wait in waits if wait != 0.0)


async def test_a_disabled_limiter_allows_everything() -> None:
    async with open_rate_limiter("memory://", prefix="x", per_minute=0, burst=1) as limiter:
        assert isinstance(limiter, DisabledRateLimiter)
        assert [await limiter.acquire("alice") for _ in range(1000)] == [0.0] * 1000


async def test_memory_urls_open_a_memory_limiter() -> None:
    async with open_rate_limiter("memory://", prefix="x", per_minute=60, burst=2) as limiter:
        assert isinstance(limiter, MemoryRateLimiter)
        allowed, wait = await exhaust(limiter, "alice")
        assert allowed == 2
        assert wait == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(("per_minute", "burst"), [(-1, 1), (60, 0), (float("nan"), 1)])
async def test_invalid_settings_are_refused(per_minute: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        open_rate_limiter("memory://", prefix="x", per_minute=per_minute, burst=burst)


async def test_memory_forgets_full_buckets() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(60, 2, clock)
    for i in range(50):
        await limiter.acquire(f"user-{i}")
    clock.now += 10  # every bucket is full again

    for i in range(50):
        await limiter.acquire(f"other-{i}")

    assert len(limiter) == 50  # the old keys went, a few at a time


async def test_memory_caps_the_number_of_keys() -> None:
    limiter = MemoryRateLimiter(60, 2, FakeClock(), max_keys=100)

    for i in range(1000):
        await limiter.acquire(f"user-{i}")

    assert len(limiter) == 100
    # The most recent keys are the ones kept.
    assert await limiter.acquire("user-999") == 0.0
    assert await limiter.acquire("user-999") > 0
