"""Per-owner rate limits for createTask: GCRA with a sustained rate and a burst.

`acquire(key)` returns 0.0 when the request is allowed (and counts it), else the seconds until
one would be (and counts nothing). With a `redis://` URL the limit is kept in Redis, atomically
and on the server's clock, so it holds across API replicas. When Redis is unavailable the
limiter logs one warning per outage and limits with a per-process memory limiter instead:
during a Redis outage the limit holds per replica, not across replicas (a client spread over
N replicas may get up to N times the limit). Requests are never refused because Redis is down.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from itertools import islice
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskwire.batching import Batcher
from taskwire.cache import redis_client
from taskwire.errors import ServiceUnavailable
from taskwire.redis_scripts import PipelinedScript
from taskwire.settings import is_memory

log = logging.getLogger(__name__)

MAX_MEMORY_KEYS = 100_000
# While Redis is down, ask it again at most this often: each attempt can cost up to the
# connect timeout, which every createTask would otherwise pay.
PRIMARY_RETRY_SECONDS = 1.0

# KEYS[1] = the owner's key; ARGV = emission interval and burst. Times are integer microseconds
# of the server's clock (exact in a Lua double). The stored value is the theoretical arrival
# time (TAT); a key whose TAT has passed is a full bucket, so it expires then. Anything that
# is not a number at the key is replaced (SET ignores the old type). Returns the wait in us.
_ACQUIRE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local raw = redis.pcall('GET', KEYS[1])
local tat = type(raw) == 'string' and tonumber(raw) or nil
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tonumber(ARGV[2]) * interval
if allow_at > now then
  return math.ceil(allow_at - now)
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return 0
"""


class RateLimiter(Protocol):
    async def acquire(self, key: str) -> float:
        """0.0 if allowed (and counted), else the seconds until a request would be allowed."""


def _check(per_minute: float, burst: int) -> None:
    if not per_minute > 0 or not math.isfinite(per_minute) or burst < 1:
        raise ValueError(f"rate limit needs per_minute > 0 and burst >= 1: {per_minute}, {burst}")


class DisabledRateLimiter:
    async def acquire(self, key: str) -> float:
        return 0.0


class MemoryRateLimiter:
    """GCRA in process. Bounded: keys whose bucket is full again are forgotten as later
    requests come, and beyond `max_keys` the least recently counted key is dropped (it may
    then burst again, a small price for a fixed memory ceiling)."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int = MAX_MEMORY_KEYS,
    ) -> None:
        _check(per_minute, burst)
        # Integer nanoseconds: float sums of an interval like 0.1 s drift and would cost a
        # request of the burst.
        self._interval_ns = max(1, round(60e9 / per_minute))
        self._burst = burst
        self._clock = clock
        self._max_keys = max_keys
        # key -> TAT, ordered by last count: the front holds the keys most likely to be full.
        self._tats: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._tats)

    async def acquire(self, key: str) -> float:
        now = round(self._clock() * 1e9)
        tats = self._tats
        new_tat = max(tats.get(key, now), now) + self._interval_ns
        allow_at = new_tat - self._burst * self._interval_ns
        if allow_at > now:
            return (allow_at - now) / 1e9
        tats.pop(key, None)  # re-inserted at the end: the dict keeps the order of counts
        tats[key] = new_tat
        # Amortized O(1): look at a few of the oldest, not every key.
        for old, tat in list(islice(tats.items(), 8)):
            if tat <= now or len(tats) > self._max_keys:
                del tats[old]
        return 0.0


class RedisRateLimiter:
    """GCRA in Redis: one atomic script call per acquire, on the server's clock, so replicas
    with skewed clocks agree. Any Redis failure raises ServiceUnavailable."""

    def __init__(self, client: Redis, *, prefix: str, per_minute: float, burst: int) -> None:
        _check(per_minute, burst)
        self._client = client
        self._prefix = prefix
        self._interval_us = max(1, round(60_000_000 / per_minute))
        self._burst = burst
        self._script = PipelinedScript(client, _ACQUIRE_SCRIPT)
        # Concurrent createTasks share one round trip; Redis runs the calls in order.
        self._acquires: Batcher[str, float] = Batcher(self._acquire_batch)

    def key(self, key: str) -> str:
        return f"{self._prefix}:rate:{key}"

    async def acquire(self, key: str) -> float:
        return await self._acquires.submit(key)

    async def _acquire_batch(self, keys: Sequence[str]) -> list[float]:
        calls = [([self.key(key)], [self._interval_us, self._burst]) for key in keys]
        try:
            replies = await self._script.run_many(calls)
        except RedisError as exc:
            raise ServiceUnavailable(f"Redis rate limiter: {exc}") from exc
        waits: list[float] = []
        for reply in replies:
            if not isinstance(reply, int):
                raise ServiceUnavailable(f"Redis rate limiter: {reply!r}")
            waits.append(reply / 1_000_000)
        return waits


class FallbackRateLimiter:
    """The primary (Redis) while it answers; the fallback (memory) while it does not."""

    def __init__(
        self,
        primary: RateLimiter,
        fallback: RateLimiter,
        *,
        retry_seconds: float = PRIMARY_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._down = False
        self._next_try = 0.0

    async def acquire(self, key: str) -> float:
        if self._down:
            now = self._clock()
            if now < self._next_try:
                return await self._fallback.acquire(key)
            # One request probes the primary; the others meanwhile stay on the fallback.
            self._next_try = now + self._retry_seconds
        try:
            wait = await self._primary.acquire(key)
        except ServiceUnavailable as exc:
            if not self._down:
                log.warning("rate limits are per process until Redis is back: %s", exc)
            self._down = True
            self._next_try = self._clock() + self._retry_seconds
            return await self._fallback.acquire(key)
        if self._down:
            log.warning("Redis is back: rate limits hold across processes again")
            self._down = False
        return wait


def open_rate_limiter(
    url: str, *, prefix: str, per_minute: float, burst: int
) -> AbstractAsyncContextManager[RateLimiter]:
    """Memory for `memory://`, Redis with a memory fallback for `redis://`; off at 0 per minute."""
    if per_minute == 0:
        return _opened(DisabledRateLimiter())
    _check(per_minute, burst)
    if is_memory(url):
        return _opened(MemoryRateLimiter(per_minute, burst))
    return _open_redis(url, prefix=prefix, per_minute=per_minute, burst=burst)


@asynccontextmanager
async def _opened(limiter: RateLimiter) -> AsyncIterator[RateLimiter]:
    yield limiter


@asynccontextmanager
async def _open_redis(
    url: str, *, prefix: str, per_minute: float, burst: int
) -> AsyncIterator[RateLimiter]:
    client = redis_client(url)
    try:
        yield FallbackRateLimiter(
            RedisRateLimiter(client, prefix=prefix, per_minute=per_minute, burst=burst),
            MemoryRateLimiter(per_minute, burst),
        )
    finally:
        await client.aclose()
