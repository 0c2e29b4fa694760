"""EventBus: the per-subscriber inbox, the in-process bus, and the factory picking an adapter
by URL (the Redis adapter is in taskwire.redis_events).

A subscription is a bounded inbox filled by whoever receives the snapshot: no task per
subscriber. Thousands of them sit idle for minutes, so an idle one holds as little as it can: no
queue until an event arrives, and the inbox is its own context manager.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from uuid import UUID

from taskwire.models import Task
from taskwire.ports import RESYNC, EventBus, Resync, Subscription
from taskwire.settings import is_memory

log = logging.getLogger(__name__)

QUEUE_SIZE = 256


class Inbox:
    """One subscription: a bounded queue with a single consumer."""

    __slots__ = ("_items", "_limit", "_waiter")

    def __init__(self, limit: int) -> None:
        # None while empty: a deque is a 64-slot block (over 600 bytes) even when empty.
        self._items: deque[Task | Resync] | None = None
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None

    def put(self, event: Task | Resync) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        if event is RESYNC or len(items) >= self._limit:
            # Snapshots are whole states, so one re-read replaces everything queued before it: a
            # slow reader costs a RESYNC, never unbounded memory or a blocked listener.
            items.clear()
            event = RESYNC
        items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The port's signature: a timeout is part of the answer (RESYNC), not a cancellation.
    async def get(self, timeout: float | None = None) -> Task | Resync:
        if not self._items:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter
            timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        items = self._items
        if not items:
            return RESYNC
        event = items.popleft()
        if not items:
            self._items = None
        return event


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _MemorySubscription(Inbox):
    """An inbox that is also the context manager `MemoryEventBus.subscribe` returns."""

    __slots__ = ("_bus", "_task_id")

    def __init__(self, bus: MemoryEventBus, task_id: UUID) -> None:
        super().__init__(bus.queue_size)
        self._bus = bus
        self._task_id = task_id

    async def __aenter__(self) -> Subscription:
        self._bus.join(self._task_id, self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bus.leave(self._task_id, self)


class MemoryEventBus:
    """In-process fan-out, for `taskwire dev` (one process, so no transport)."""

    def __init__(self, *, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._inboxes: dict[UUID, set[Inbox]] = {}

    async def publish(self, task: Task) -> None:
        for inbox in self._inboxes.get(task.id, ()):
            inbox.put(task)

    def subscribe(self, task_id: UUID) -> AbstractAsyncContextManager[Subscription]:
        return _MemorySubscription(self, task_id)

    def join(self, task_id: UUID, inbox: Inbox) -> None:
        self._inboxes.setdefault(task_id, set()).add(inbox)

    def leave(self, task_id: UUID, inbox: Inbox) -> None:
        inboxes = self._inboxes.get(task_id)
        if inboxes is None:
            return
        inboxes.discard(inbox)
        if not inboxes:
            del self._inboxes[task_id]

    async def ping(self) -> None:
        return None


@asynccontextmanager
async def open_events(
    url: str, *, prefix: str, queue_size: int = QUEUE_SIZE
) -> AsyncIterator[EventBus]:
    """`memory://` gives the in-process bus; `redis://` a Redis bus whose listener runs (and
    whose connections stay open) until exit."""
    if is_memory(url):
        yield MemoryEventBus(queue_size=queue_size)
        return
    # Imported here: taskwire.redis_events builds on this module's inbox.
    from taskwire.redis_events import RedisEventBus

    bus = RedisEventBus(url, prefix=prefix, queue_size=queue_size)
    try:
        await bus.start()
        yield bus
    finally:
        await bus.aclose()
