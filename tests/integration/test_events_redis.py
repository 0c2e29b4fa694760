"""The Redis event bus against a real server: reconnects, races, a dead server.

The pub/sub connection is killed from Redis' side with CLIENT KILL ID, found by the
listener's client name (unique per test prefix), so that other tests' connections on the
shared server are left alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from taskwire.errors import ServiceUnavailable
from taskwire.models import Task
from taskwire.ports import RESYNC, Subscription
from taskwire.redis_events import RedisEventBus
from tests.integration.conftest import DEAD_REDIS_URL
from tests.support.tasks import make_task

pytestmark = pytest.mark.redis

WAIT = 5.0
# Waits for a RESYNC that a reconnect must cause: long enough that a RESYNC from the timeout
# running out is told apart by the time it took (see expect_resync).
RESYNC_WAIT = 20.0


@pytest.fixture
async def bus(redis_url: str) -> AsyncIterator[RedisEventBus]:
    events = RedisEventBus(redis_url, prefix=f"test-{uuid4().hex}")
    await events.start()
    try:
        yield events
    finally:
        await events.aclose()


async def listener_ids(redis_admin: Redis, bus: RedisEventBus) -> list[str]:
    clients = await redis_admin.client_list(_type="pubsub")
    return [client["id"] for client in clients if client["name"] == bus.listener_name]


async def kill_listener(redis_admin: Redis, bus: RedisEventBus) -> str:
    [client_id] = await listener_ids(redis_admin, bus)
    assert await redis_admin.client_kill_filter(_id=client_id) == 1
    return client_id


async def wait_for_new_listener(redis_admin: Redis, bus: RedisEventBus, old_id: str) -> None:
    async with asyncio.timeout(WAIT):
        while (await listener_ids(redis_admin, bus)) in ([], [old_id]):
            await asyncio.sleep(0.02)


async def expect_resync(subscription: Subscription) -> None:
    """A RESYNC that some event caused, not the get() timeout running out."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await subscription.get(RESYNC_WAIT) is RESYNC
    assert loop.time() - started < RESYNC_WAIT / 2


async def test_after_the_connection_is_killed_subscribers_resync_then_receive(
    bus: RedisEventBus, redis_admin: Redis
) -> None:
    first, second = make_task(), make_task()
    async with bus.subscribe(first.id) as one, bus.subscribe(second.id) as other:
        await kill_listener(redis_admin, bus)

        await expect_resync(one)
        await expect_resync(other)

        await bus.publish(first.evolve(version=2))
        await bus.publish(second.evolve(version=2))
        assert await one.get(WAIT) == first.evolve(version=2)
        assert await other.get(WAIT) == second.evolve(version=2)
        [_listener] = await listener_ids(redis_admin, bus)
        [(_, count)] = await redis_admin.pubsub_numsub(bus.channel(first.id))
        assert count == 1


async def test_resync_comes_only_once_the_channel_is_subscribed_again(
    bus: RedisEventBus, redis_admin: Redis
) -> None:
    task = make_task()
    async with bus.subscribe(task.id) as subscription:
        await kill_listener(redis_admin, bus)
        await expect_resync(subscription)

        # What a subscriber does on RESYNC is re-read the state; anything published after
        # that must reach it, with no delay allowed for the resubscription.
        await bus.publish(task.evolve(version=2))

        assert await subscription.get(WAIT) == task.evolve(version=2)


async def test_it_survives_repeated_kills(bus: RedisEventBus, redis_admin: Redis) -> None:
    task = make_task()
    async with bus.subscribe(task.id) as subscription:
        for version in range(2, 6):
            await kill_listener(redis_admin, bus)
            await expect_resync(subscription)
            await bus.publish(task.evolve(version=version))
            assert await subscription.get(WAIT) == task.evolve(version=version)


async def test_subscribing_during_a_reconnect_waits_for_it(
    bus: RedisEventBus, redis_admin: Redis
) -> None:
    task = make_task()
    async with bus.subscribe(uuid4()):
        old_id = await kill_listener(redis_admin, bus)

        async with bus.subscribe(task.id) as subscription:
            await bus.publish(task)

            assert await subscription.get(WAIT) == task
        await wait_for_new_listener(redis_admin, bus, old_id)


async def test_subscribe_then_publish_never_loses_the_first_event(bus: RedisEventBus) -> None:
    for _ in range(200):
        task = make_task()
        async with bus.subscribe(task.id) as subscription:
            await bus.publish(task)
            assert await subscription.get(WAIT) == task


async def test_concurrent_subscribe_then_publish_never_loses_the_first_event(
    bus: RedisEventBus,
) -> None:
    # Shared ids, so that SUBSCRIBE and UNSUBSCRIBE of one channel interleave on the wire.
    task_ids = [uuid4() for _ in range(10)]

    async def round_trip(n: int) -> None:
        task = make_task(n, task_ids[n % len(task_ids)])
        async with bus.subscribe(task.id) as subscription:
            await bus.publish(task)
            while (event := await subscription.get(WAIT)) != task:
                assert isinstance(event, Task), "timed out"

    async with asyncio.TaskGroup() as group:
        for n in range(300):
            group.create_task(round_trip(n))


async def test_a_malformed_message_is_dropped(bus: RedisEventBus, redis_admin: Redis) -> None:
    task = make_task()
    async with bus.subscribe(task.id) as subscription:
        await redis_admin.publish(bus.channel(task.id), b"{not a task")
        await bus.publish(task)

        assert await subscription.get(WAIT) == task


async def test_an_unreachable_redis_fails_subscribe_and_publish_within_bounds() -> None:
    bus = RedisEventBus(DEAD_REDIS_URL, prefix="dead", subscribe_timeout=0.3)
    await bus.start()
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            async with bus.subscribe(uuid4()):
                pass
        with pytest.raises(ServiceUnavailable):
            await bus.publish(make_task())
        with pytest.raises(ServiceUnavailable):
            await bus.ping()
        assert time.monotonic() - started < 5
    finally:
        await bus.aclose()


async def test_closing_ends_the_listener_even_mid_reconnect(
    redis_url: str, redis_admin: Redis
) -> None:
    bus = RedisEventBus(redis_url, prefix=f"test-{uuid4().hex}")
    await bus.start()
    async with bus.subscribe(uuid4()):
        await kill_listener(redis_admin, bus)
        async with asyncio.timeout(WAIT):
            await bus.aclose()

    with pytest.raises(ServiceUnavailable):
        async with bus.subscribe(uuid4()):
            pass


class Proxy:
    """A TCP proxy to Redis that can add latency, and freeze its open connections: the bytes
    stop flowing but the sockets stay open, like a Redis that hangs or a network that drops
    packets."""

    def __init__(self, redis_url: str, *, latency: float = 0.0) -> None:
        target = urlsplit(redis_url)
        self._target = (target.hostname or "127.0.0.1", target.port or 6379)
        self._latency = latency
        self._frozen: set[asyncio.Event] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def freeze(self) -> None:
        """Freeze the connections open now; later ones flow normally."""
        for frozen in self._frozen:
            frozen.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        frozen = asyncio.Event()
        self._frozen.add(frozen)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink, frozen))
            self._pipes.add(pipe)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, frozen: asyncio.Event
    ) -> None:
        try:
            while data := await source.read(65536):
                if self._latency:
                    await asyncio.sleep(self._latency)
                if frozen.is_set():
                    continue  # swallowed, as by a dead link
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


async def test_a_connection_that_stops_answering_is_replaced(redis_url: str) -> None:
    task = make_task()
    async with Proxy(redis_url) as proxy:
        bus = RedisEventBus(proxy.url, prefix=f"test-{uuid4().hex}", ping_interval=0.2)
        await bus.start()
        try:
            async with bus.subscribe(task.id) as subscription:
                proxy.freeze()

                # Only the listener's own PING can tell: the socket is still open.
                await expect_resync(subscription)
                await bus.publish(task)
                assert await subscription.get(WAIT) == task
        finally:
            await bus.aclose()


async def test_subscribe_returns_only_once_redis_confirmed_it(
    redis_url: str, redis_admin: Redis
) -> None:
    # The bus talks to Redis through a slow link while the event is published directly: a
    # subscribe() that returned before Redis had the SUBSCRIBE would miss it.
    async with Proxy(redis_url, latency=0.05) as proxy:
        bus = RedisEventBus(proxy.url, prefix=f"test-{uuid4().hex}")
        await bus.start()
        try:
            for _ in range(3):
                task = make_task()
                async with bus.subscribe(task.id) as subscription:
                    await redis_admin.publish(bus.channel(task.id), task.to_json())

                    assert await subscription.get(WAIT) == task
        finally:
            await bus.aclose()
