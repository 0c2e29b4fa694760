"""TaskCache adapters: Redis (versioned compare-and-set in one Lua call) and memory.

The cache is an accelerator: every Redis failure surfaces as ServiceUnavailable, which callers
log and survive, and a corrupt entry is a miss (the store is the truth, reads repopulate).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from itertools import islice
from uuid import UUID

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from taskwire.batching import Batcher
from taskwire.errors import ServiceUnavailable
from taskwire.models import Task
from taskwire.ports import TaskCache
from taskwire.redis_scripts import Call, PipelinedScript
from taskwire.settings import is_memory

log = logging.getLogger(__name__)

# Short timeouts so that a dead or unreachable Redis costs a request about two seconds, not a
# hang: callers then fall back to the store.
CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 2.0
HEALTH_CHECK_SECONDS = 15
MAX_CONNECTIONS = 64

# KEYS[1] = task key; ARGV = version, snapshot json, ttl in ms. An equal version is rewritten
# (that refreshes the TTL); anything that is not our hash is corrupt and replaced.
_PUT_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'hash' then
  local cached = tonumber(redis.call('HGET', KEYS[1], 'v'))
  if cached and cached > tonumber(ARGV[1]) then
    return 0
  end
elseif kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def redis_client(url: str) -> Redis:
    """A client that fails fast: short timeouts and a single quick retry (for a pooled
    connection that died with a Redis restart), not redis-py's default ten. A burst beyond
    the pool waits for a connection (up to the read timeout) instead of failing at once."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=READ_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=READ_TIMEOUT_SECONDS,
        health_check_interval=HEALTH_CHECK_SECONDS,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), 1),
    )
    return Redis.from_pool(pool)


def _decoded(task_id: UUID, reply: object) -> Task | None:
    """The snapshot in a reply, or None when the reply is anything but this task's snapshot."""
    if not isinstance(reply, bytes | str):
        return None
    try:
        task = Task.from_json(reply)
    except (ValueError, KeyError, TypeError):
        return None
    return task if task.id == task_id else None


def _ttl_ms(ttl_seconds: float) -> int:
    return max(1, round(ttl_seconds * 1000))


class RedisTaskCache:
    """Concurrent reads, and concurrent writes, each go out as one pipeline (taskwire.batching):
    under load a round trip carries many tasks instead of one."""

    def __init__(self, client: Redis, *, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._put = PipelinedScript(client, _PUT_SCRIPT)
        self._reads: Batcher[UUID, Task | None] = Batcher(self._get_batch)
        self._writes: Batcher[tuple[Task, float], bool] = Batcher(self._put_batch)

    def key(self, task_id: UUID) -> str:
        return f"{self._prefix}:task:{task_id}"

    async def get(self, task_id: UUID) -> Task | None:
        return await self._reads.submit(task_id)

    async def put(self, task: Task, *, ttl_seconds: float) -> bool:
        return await self._writes.submit((task, ttl_seconds))

    async def _get_batch(self, task_ids: Sequence[UUID]) -> list[Task | None]:
        keys = [self.key(task_id) for task_id in task_ids]
        pipeline = self._client.pipeline(transaction=False)
        for key in keys:
            pipeline.hget(key, "d")
        try:
            # Errors in place: one key of the wrong type must not fail the others' reads.
            replies = await pipeline.execute(raise_on_error=False)
        except RedisError as exc:
            raise ServiceUnavailable(f"Redis cache: {exc}") from exc
        found: list[Task | None] = []
        for task_id, key, reply in zip(task_ids, keys, replies, strict=True):
            task = _decoded(task_id, reply) if reply is not None else None
            if task is None and reply is not None:
                await self._discard_spoiled(key, reply)
            found.append(task)
        return found

    async def _discard_spoiled(self, key: str, reply: object) -> None:
        if isinstance(reply, RedisError) and not isinstance(reply, ResponseError):
            raise ServiceUnavailable(f"Redis cache: {reply}")
        # A ResponseError is WRONGTYPE: something that is not our hash sits at the key.
        if not isinstance(reply, ResponseError):
            log.warning("discarding a corrupt cache entry at %s", key)
        await self._discard(key)

    async def _put_batch(self, writes: Sequence[tuple[Task, float]]) -> list[bool]:
        # In call order: two versions of one task meet the compare-and-set in turn.
        calls: list[Call] = [
            ([self.key(task.id)], [task.version, task.to_json(), _ttl_ms(ttl_seconds)])
            for task, ttl_seconds in writes
        ]
        try:
            replies = await self._put.run_many(calls)
        except RedisError as exc:
            raise ServiceUnavailable(f"Redis cache: {exc}") from exc
        for reply in replies:
            if isinstance(reply, Exception):
                raise ServiceUnavailable(f"Redis cache: {reply}")
        return [bool(reply) for reply in replies]

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except RedisError as exc:
            raise ServiceUnavailable(f"Redis cache: {exc}") from exc

    async def _discard(self, key: str) -> None:
        # Best effort: a concurrent put may be lost with it, which is only a later miss.
        try:
            await self._client.delete(key)
        except RedisError as exc:
            raise ServiceUnavailable(f"Redis cache: {exc}") from exc


class MemoryTaskCache:
    """The same semantics in process, for `taskwire dev`. The clock is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Ordered by last write: with one TTL setting the front expires first, which lets put()
        # drop expired entries in amortized O(1) instead of keeping every task ever seen.
        self._entries: dict[UUID, tuple[Task, float]] = {}

    async def get(self, task_id: UUID) -> Task | None:
        entry = self._entries.get(task_id)
        if entry is None:
            return None
        task, deadline = entry
        if self._clock() >= deadline:
            del self._entries[task_id]
            return None
        return task

    async def put(self, task: Task, *, ttl_seconds: float) -> bool:
        now = self._clock()
        entries = self._entries
        current = entries.get(task.id)
        if current is not None and current[1] > now and current[0].version > task.version:
            return False
        entries.pop(task.id, None)  # re-inserted at the end: the dict keeps the order of writes
        entries[task.id] = (task, now + _ttl_ms(ttl_seconds) / 1000)
        for task_id, (_, deadline) in list(islice(entries.items(), 8)):
            if deadline > now:
                break
            del entries[task_id]
        return True

    async def ping(self) -> None:
        return None


@asynccontextmanager
async def open_cache(url: str, *, prefix: str) -> AsyncIterator[TaskCache]:
    """`memory://` gives the in-process cache; `redis://` a Redis client closed on exit."""
    if is_memory(url):
        yield MemoryTaskCache()
        return
    client = redis_client(url)
    try:
        yield RedisTaskCache(client, prefix=prefix)
    finally:
        await client.aclose()
