"""The Redis EventBus: ONE pub/sub connection per process and one listener task that reads it
and fans each message out to the local inboxes of its channel; a reconnect resubscribes and then
tells every subscriber to re-read (RESYNC)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any
from uuid import UUID

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from taskwire.batching import Batcher
from taskwire.cache import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS, redis_client
from taskwire.errors import ServiceUnavailable
from taskwire.events import QUEUE_SIZE, Inbox, Timeouts
from taskwire.models import Task
from taskwire.ports import RESYNC, Subscription

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_SECONDS = 5.0
# The listener PINGs after this much silence and gives the connection up after as much again:
# a half-open connection or a frozen Redis is noticed in seconds, not at the TCP timeout.
PING_INTERVAL_SECONDS = 5.0
BACKOFF_MIN_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 2.0
SUBSCRIBE_BATCH = 500
WRITE_TIMEOUT_SECONDS = READ_TIMEOUT_SECONDS


class _Channel:
    """The local subscribers of one Redis channel, from the SUBSCRIBE that created the entry to
    the UNSUBSCRIBE sent when its last subscriber left."""

    __slots__ = ("inboxes", "name", "ready")

    def __init__(self, name: bytes, ready: asyncio.Future[None]) -> None:
        self.name = name
        self.inboxes: set[Inbox] = set()
        # Resolved once Redis confirmed a SUBSCRIBE for this entry; joiners wait on it too.
        self.ready = ready


class _Link:
    """One pub/sub connection and, per channel, the entries whose SUBSCRIBE replies are still
    due, in the order the commands went out (replies come in that order)."""

    __slots__ = ("confirmed", "connection", "lock", "pending")

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        # One writer at a time, so that the wire order is the order of `pending`.
        self.lock = asyncio.Lock()
        self.pending: dict[bytes, deque[_Channel]] = {}
        self.confirmed = 0


class _RedisSubscription(Inbox):
    """An inbox that is also the context manager `RedisEventBus.subscribe` returns (a class
    rather than an @asynccontextmanager: no generator and wrapper held per subscription)."""

    __slots__ = ("_bus", "_channel", "_name")

    def __init__(self, bus: RedisEventBus, name: bytes) -> None:
        super().__init__(bus.queue_size)
        self._bus = bus
        self._name = name
        self._channel: _Channel | None = None

    async def __aenter__(self) -> Subscription:
        self._channel = await self._bus.join(self._name, self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Synchronous, so it also runs to the end when the subscriber is cancelled.
        channel, self._channel = self._channel, None
        if channel is not None:
            self._bus.leave(channel, self)

    def _timeouts(self) -> Timeouts:
        return self._bus.timeouts


class RedisEventBus:
    """Redis pub/sub fan-out: PUBLISH on a pooled client, one listener connection. Does no I/O
    before `start()`; `aclose()` closes everything (or use `open_events`)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        queue_size: int = QUEUE_SIZE,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT_SECONDS,
        ping_interval: float = PING_INTERVAL_SECONDS,
    ) -> None:
        self._prefix = prefix
        self._client = redis_client(url)
        # Concurrent publishes share one pipeline; Redis runs it in order.
        self._publishes: Batcher[Task, None] = Batcher(self._publish_batch)
        # A bare connection rather than redis-py's PubSub: PubSub reconnects and resubscribes
        # behind our back (and after longer outages does not), while subscribers must learn of
        # every reconnect to re-read their snapshot. RESP2, where messages are plain replies in
        # order (RESP3 routes them through redis-py's push handler, which formats every message
        # for a debug log), undecoded; the pool only serves as a factory of such connections.
        self._factory = ConnectionPool.from_url(
            url,
            protocol=2,
            decode_responses=False,
            health_check_interval=0,  # the listener PINGs itself, see _pump
            client_name=self.listener_name,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            # No socket timeout: redis-py would enforce it on writes with asyncio.wait_for,
            # which on Python 3.11 can swallow a cancellation. Every read here passes its own
            # timeout, writes run under WRITE_TIMEOUT_SECONDS and connecting under the
            # subscribe timeout.
            socket_timeout=None,
        )
        self.queue_size = queue_size
        self.timeouts = Timeouts()
        self._subscribe_timeout = subscribe_timeout
        self._ping_interval = ping_interval
        self._channels: dict[bytes, _Channel] = {}
        self._link: _Link | None = None
        # Set while `_link` is connected and subscribed to every channel in `_channels`.
        self._online = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._closed = False

    def channel(self, task_id: UUID) -> bytes:
        return f"{self._prefix}:task:{task_id}".encode()

    @property
    def listener_name(self) -> str:
        """CLIENT SETNAME of the pub/sub connection (printable ASCII without spaces)."""
        return "".join(c if "!" <= c <= "~" else "_" for c in f"{self._prefix}:events")

    async def start(self) -> None:
        """Start the listener. Does not wait for Redis: subscribe() waits (bounded) instead."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="taskwire-events")

    async def aclose(self) -> None:
        self._closed = True
        tasks = [*self._sends, *([self._listener] if self._listener else [])]
        while tasks:
            # Again until done: a cancellation can still be swallowed inside a library.
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=0.5)
            tasks = list(pending)
        self._listener = None
        self._online.clear()
        if self._link is not None:
            await self._link.connection.disconnect(nowait=True)
            self._link = None
        await self._factory.aclose()
        await self._client.aclose()

    async def publish(self, task: Task) -> None:
        await self._publishes.submit(task)

    async def _publish_batch(self, tasks: Sequence[Task]) -> list[None]:
        pipeline = self._client.pipeline(transaction=False)
        for task in tasks:
            pipeline.publish(self.channel(task.id), task.to_json())
        try:
            await pipeline.execute()
        except RedisError as exc:
            raise ServiceUnavailable(f"Redis events: {exc}") from exc
        return [None] * len(tasks)

    def subscribe(self, task_id: UUID) -> AbstractAsyncContextManager[Subscription]:
        return _RedisSubscription(self, self.channel(task_id))

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await self._online.wait()
            await self._client.ping()
        except TimeoutError:
            raise ServiceUnavailable("Redis events: the pub/sub connection is down") from None
        except RedisError as exc:
            raise ServiceUnavailable(f"Redis events: {exc}") from exc

    async def join(self, name: bytes, inbox: Inbox) -> _Channel:
        if self._closed:
            raise ServiceUnavailable("Redis events: the event bus is closed")
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                link = self._link
                while link is None or not self._online.is_set():
                    await self._online.wait()
                    link = self._link
                channel = self._channels.get(name)
                if channel is None:
                    ready = asyncio.get_running_loop().create_future()
                    channel = self._channels[name] = _Channel(name, ready)
                    self._send_later(link, b"SUBSCRIBE", channel)
                channel.inboxes.add(inbox)
                try:
                    # Shielded: the entry's confirmation is shared with the other joiners.
                    await asyncio.shield(channel.ready)
                except BaseException:
                    self.leave(channel, inbox)
                    raise
        except TimeoutError:
            raise ServiceUnavailable("Redis events: the subscription was not confirmed") from None
        return channel

    def _live(self, channel: _Channel) -> bool:
        return self._channels.get(channel.name) is channel

    def leave(self, channel: _Channel, inbox: Inbox) -> None:
        channel.inboxes.discard(inbox)
        if channel.inboxes or not self._live(channel):
            return
        del self._channels[channel.name]
        if self._link is not None:
            self._send_later(self._link, b"UNSUBSCRIBE", channel)

    def _send_later(self, link: _Link, command: bytes, channel: _Channel) -> None:
        # A task of its own: a subscriber cancelled mid-write must not make redis-py drop the
        # connection every other subscriber shares, and `finally` blocks must not wait.
        task = asyncio.create_task(self._send_quietly(link, command, channel))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_quietly(self, link: _Link, command: bytes, channel: _Channel) -> None:
        confirm = (channel,) if command == b"SUBSCRIBE" else ()
        try:
            await self._send(link, command, channel.name, confirm=confirm)
        except Exception as exc:
            # The listener notices the dead connection and resubscribes from `_channels`.
            log.debug("Redis events: %s %r failed: %r", command.decode(), channel.name, exc)
            await link.connection.disconnect(nowait=True)

    async def _send(self, link: _Link, *args: bytes, confirm: Sequence[_Channel] = ()) -> None:
        """Send one command on `link` unless it was replaced or lost (then the next connection
        subscribes from `_channels`); `confirm` are the entries a SUBSCRIBE will confirm."""
        async with link.lock:
            # Checked right before writing: redis-py would silently reconnect a closed
            # connection, and a fresh connection is subscribed to nothing.
            if link is not self._link or not link.connection.is_connected:
                return
            for channel in confirm:
                link.pending.setdefault(channel.name, deque()).append(channel)
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                await link.connection.send_command(*args, check_health=False)

    async def _listen(self) -> None:
        delay = BACKOFF_MIN_SECONDS
        failures = 0
        while not self._closed:
            link: _Link | None = None
            try:
                link = _Link(self._factory.make_connection())  # type: ignore[no-untyped-call]
                await self._connect(link)
                if failures:
                    log.info("Redis events: reconnected after %d attempts", failures)
                failures = 0
                delay = BACKOFF_MIN_SECONDS
                await self._pump(link)
            except Exception as exc:
                # Never let the listener die: every subscriber of this process depends on it.
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "Redis events: pub/sub connection lost: %r", exc)
            finally:
                self._online.clear()
                if link is not None:
                    if self._link is link:
                        self._link = None
                    await link.connection.disconnect(nowait=True)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    async def _connect(self, link: _Link) -> None:
        """Connect, resubscribe every channel with local subscribers, wait for Redis to confirm,
        and only then tell the subscribers that were live before to re-read their snapshot."""
        async with asyncio.timeout(self._subscribe_timeout):
            await link.connection.connect()  # type: ignore[no-untyped-call]
            self._link = link
            channels = list(self._channels.values())
            was_live = [channel for channel in channels if channel.ready.done()]
            expected = 0
            for start in range(0, len(channels), SUBSCRIBE_BATCH):
                # Filtered right before queueing on the lock: an entry whose last subscriber
                # left meanwhile has its UNSUBSCRIBE queued after this SUBSCRIBE, never before.
                batch = [c for c in channels[start : start + SUBSCRIBE_BATCH] if self._live(c)]
                if batch:
                    names = [channel.name for channel in batch]
                    await self._send(link, b"SUBSCRIBE", *names, confirm=batch)
                    expected += len(batch)
            # `_online` is clear, so no other SUBSCRIBE goes out on this link meanwhile.
            while link.confirmed < expected:
                self._dispatch(link, await link.connection.read_response(timeout=None))
        for channel in was_live:
            for inbox in channel.inboxes:
                inbox.put(RESYNC)
        self._online.set()

    async def _pump(self, link: _Link) -> None:
        unanswered_ping = False
        read = link.connection.read_response
        while True:
            reply = await read(timeout=self._ping_interval, disconnect_on_error=False)
            if reply is not None:
                unanswered_ping = False
                self._dispatch(link, reply)
            elif unanswered_ping:
                raise RedisConnectionError("no reply to PING")
            else:
                await self._send(link, b"PING")
                unanswered_ping = True

    def _dispatch(self, link: _Link, reply: Any) -> None:
        # The hot path: one decode per message, the same Task object into every inbox.
        if type(reply) is not list or len(reply) != 3:
            return  # a PONG
        kind, name, data = reply
        if kind == b"message":
            channel = self._channels.get(name)
            if channel is None:
                return
            try:
                task = Task.from_json(data)
            except (ValueError, KeyError, TypeError):
                log.warning("Redis events: dropping a malformed event on %r", name)
                return
            for inbox in channel.inboxes:
                inbox.put(task)
        elif kind == b"subscribe":
            link.confirmed += 1
            waiting = link.pending.get(name)
            if waiting:
                channel = waiting.popleft()
                if not waiting:
                    del link.pending[name]
                if not channel.ready.done():
                    channel.ready.set_result(None)
