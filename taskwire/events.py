"""EventBus: the per-subscriber inbox, the in-process bus, and the factory picking an adapter
by URL (the Redis adapter is in taskwire.redis_events).

A subscription is a bounded inbox filled by whoever receives the snapshot: no task per
subscriber. Thousands of them sit idle for minutes, so an idle one holds as little as it can: no
queue until an event arrives, and the inbox is its own context manager.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from uuid import UUID

from taskwire.models import Task
from taskwire.ports import RESYNC, EventBus, Resync, Subscription
from taskwire.settings import is_memory

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
# Timeouts at least this long are served by the bus's Timeouts, to the second (see Timeouts).
COARSE_TIMEOUT_SECONDS = 10.0
TIMEOUT_RESOLUTION_SECONDS = 1.0


# What a Timeouts entry is: a future it resolves, or a callback it calls, once due.
Due = asyncio.Future[None] | Callable[[], None]


class Timeouts:
    """Wakes the waiters whose timeout has passed (resolves their future, or calls them), from
    one loop timer for all of them, to the second (late by at most TIMEOUT_RESOLUTION_SECONDS,
    never early).

    A loop timer per waiting inbox (with uvloop a handle, a libuv timer and the callback's
    arguments) is half a KiB on every idle subscription; the timeouts waited on here are the
    subscriptions' re-checks, minutes long and spread on purpose, where a second is nothing.
    Waiters are bucketed by the second they are due in: a waiter costs a set entry. (The
    websocket connections' token deadlines can share one too: graphql_api.frames.Alarm.)"""

    __slots__ = ("_due", "_loop", "_seconds", "_timer")

    def __init__(self) -> None:
        self._due: dict[int, set[Due]] = {}
        # The seconds in _due, earliest first (a second whose bucket emptied may linger).
        self._seconds: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return sum(len(waiters) for waiters in self._due.values())

    def add(self, waiter: Due, delay: float) -> int | None:
        """Resolve `waiter` once `delay` seconds have passed; returns the key to `discard` it
        with, or None when this loop is not the one the pending timeouts run on."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._due:
                return None
            self._loop = loop
        second = math.ceil((loop.time() + delay) / TIMEOUT_RESOLUTION_SECONDS)
        waiters = self._due.get(second)
        if waiters is None:
            waiters = self._due[second] = set()
            heapq.heappush(self._seconds, second)
            if self._seconds[0] == second:
                self._arm(loop)
        waiters.add(waiter)
        return second

    def discard(self, key: int, waiter: Due) -> None:
        waiters = self._due.get(key)
        if waiters is None:
            return
        waiters.discard(waiter)
        if not waiters:
            del self._due[key]
            if not self._due and self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._seconds.clear()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(self._seconds[0] * TIMEOUT_RESOLUTION_SECONDS, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        # A timer may fire a hair early: what is due within a millisecond is due.
        now = loop.time() + 0.001
        seconds = self._seconds
        while seconds and seconds[0] * TIMEOUT_RESOLUTION_SECONDS <= now:
            for waiter in self._due.pop(heapq.heappop(seconds), ()):
                if not isinstance(waiter, asyncio.Future):
                    try:
                        waiter()
                    except Exception:
                        log.exception("a timeout's callback failed")
                elif not waiter.done():
                    waiter.set_result(None)
        while seconds and seconds[0] not in self._due:
            heapq.heappop(seconds)
        if seconds:
            self._arm(loop)


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
            timer = None
            timeouts = None if timeout is None else self._timeouts()
            key = None
            if timeout is not None and timeouts is not None and timeout >= COARSE_TIMEOUT_SECONDS:
                key = timeouts.add(waiter, timeout)
            if timeout is not None and key is None:
                timer = loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
                if key is not None and timeouts is not None:
                    timeouts.discard(key, waiter)
        items = self._items
        if not items:
            return RESYNC
        event = items.popleft()
        if not items:
            self._items = None
        return event

    def _timeouts(self) -> Timeouts | None:
        """The shared Timeouts of the bus this inbox belongs to, if any (else a timer each)."""
        return None


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

    def _timeouts(self) -> Timeouts:
        return self._bus.timeouts


class MemoryEventBus:
    """In-process fan-out, for `taskwire dev` (one process, so no transport)."""

    def __init__(self, *, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self.timeouts = Timeouts()
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
