"""The EventBus contract: the Redis and the memory adapter behave the same.

Where Redis has more to show (the server-side subscription, one connection per process), the
harness carries a separate admin client; it is None for the memory bus.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from uuid import UUID, uuid4

import pytest
from redis.asyncio import Redis

from taskwire.cache import redis_client
from taskwire.events import open_events
from taskwire.models import Task
from taskwire.ports import RESYNC, EventBus, Subscription
from taskwire.redis_events import RedisEventBus
from tests.support.tasks import make_task

QUEUE_SIZE = 8
WAIT = 5.0  # generous bound for an event that must arrive


@dataclass
class Harness:
    bus: EventBus
    prefix: str
    admin: Redis | None

    async def numsub(self, task_id: UUID) -> int:
        assert self.admin is not None
        channel = f"{self.prefix}:task:{task_id}"
        [(_, count)] = await self.admin.pubsub_numsub(channel)
        return count

    async def wait_numsub(self, task_id: UUID, expected: int) -> None:
        """Poll: an UNSUBSCRIBE goes out after the subscriber has left."""
        async with asyncio.timeout(WAIT):
            while await self.numsub(task_id) != expected:
                await asyncio.sleep(0.02)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    prefix = f"test-{uuid4().hex}"
    if request.param == "memory":
        async with open_events("memory://", prefix=prefix, queue_size=QUEUE_SIZE) as bus:
            yield Harness(bus, prefix, None)
        return
    url = request.getfixturevalue("redis_url")
    admin = redis_client(url)
    try:
        async with open_events(url, prefix=prefix, queue_size=QUEUE_SIZE) as bus:
            yield Harness(bus, prefix, admin)
    finally:
        await admin.aclose()


async def test_a_subscriber_receives_what_is_published(harness: Harness) -> None:
    task = make_task()
    async with harness.bus.subscribe(task.id) as subscription:
        await harness.bus.publish(task)

        assert await subscription.get(WAIT) == task


async def test_every_subscriber_of_a_task_receives_it(harness: Harness) -> None:
    task = make_task()
    bus = harness.bus
    async with bus.subscribe(task.id) as first, bus.subscribe(task.id) as second:
        await bus.publish(task)

        assert await first.get(WAIT) == task
        assert await second.get(WAIT) == task


async def test_events_arrive_in_publish_order(harness: Harness) -> None:
    task_id = uuid4()
    versions = [make_task(version, task_id) for version in range(1, 6)]
    async with harness.bus.subscribe(task_id) as subscription:
        for task in versions:
            await harness.bus.publish(task)

        assert [await subscription.get(WAIT) for _ in versions] == versions


async def test_other_tasks_events_are_not_delivered(harness: Harness) -> None:
    mine, other = make_task(), make_task()
    async with harness.bus.subscribe(mine.id) as subscription:
        # Published first: if it leaked, it would come out first.
        await harness.bus.publish(other)
        await harness.bus.publish(mine)

        assert await subscription.get(WAIT) == mine
        assert await subscription.get(0.1) is RESYNC


async def test_get_returns_resync_when_nothing_arrives_in_time(harness: Harness) -> None:
    async with harness.bus.subscribe(uuid4()) as subscription:
        loop = asyncio.get_running_loop()
        started = loop.time()

        assert await subscription.get(0.1) is RESYNC

        assert loop.time() - started >= 0.09


async def test_nothing_is_delivered_after_leaving(harness: Harness) -> None:
    task = make_task()
    async with harness.bus.subscribe(task.id) as subscription:
        if harness.admin is not None:
            assert await harness.numsub(task.id) == 1

    if harness.admin is not None:
        await harness.wait_numsub(task.id, 0)
    await harness.bus.publish(task)
    assert await subscription.get(0.2) is RESYNC


async def test_one_subscriber_leaving_does_not_affect_another(harness: Harness) -> None:
    task = make_task()
    async with harness.bus.subscribe(task.id) as staying:
        async with harness.bus.subscribe(task.id):
            pass
        await harness.bus.publish(task)

        assert await staying.get(WAIT) == task
        if harness.admin is not None:
            assert await harness.numsub(task.id) == 1


async def test_subscribing_again_after_leaving_works(harness: Harness) -> None:
    task = make_task()
    for _ in range(3):
        async with harness.bus.subscribe(task.id) as subscription:
            await harness.bus.publish(task)
            assert await subscription.get(WAIT) == task


async def test_a_subscriber_cancelled_while_subscribing_leaves_nothing_behind(
    harness: Harness,
) -> None:
    task = make_task()
    entered = asyncio.Event()

    async def subscribe_forever() -> None:
        async with harness.bus.subscribe(task.id):
            entered.set()
            await asyncio.Event().wait()

    for delay in (0, 0.001, None):
        runner = asyncio.create_task(subscribe_forever())
        if delay is None:
            await entered.wait()
        else:
            await asyncio.sleep(delay)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    if harness.admin is not None:
        await harness.wait_numsub(task.id, 0)
    async with harness.bus.subscribe(task.id) as subscription:
        await harness.bus.publish(task)
        assert await subscription.get(WAIT) == task


async def test_a_reader_that_falls_behind_gets_resync_instead_of_a_backlog(
    harness: Harness,
) -> None:
    task_id, marker = uuid4(), make_task()
    published = [make_task(version, task_id) for version in range(1, QUEUE_SIZE * 3)]
    bus = harness.bus
    async with bus.subscribe(task_id) as slow, bus.subscribe(marker.id) as probe:
        for task in published:
            await bus.publish(task)
        # One connection delivers in order: once the marker is in, so is everything before it.
        await bus.publish(marker)
        assert await probe.get(WAIT) == marker

        assert await slow.get(0) is RESYNC
        rest = await drain(slow)

    assert len(rest) < QUEUE_SIZE
    assert rest == sorted(rest, key=lambda task: task.version)
    assert all(task in published for task in rest)


async def drain(subscription: Subscription) -> list[Task]:
    received = []
    while isinstance(event := await subscription.get(0), Task):
        received.append(event)
    return received


async def test_publishing_with_no_subscriber_is_fine(harness: Harness) -> None:
    await harness.bus.publish(make_task())


async def test_ping_succeeds_when_reachable(harness: Harness) -> None:
    await harness.bus.ping()


async def test_many_subscribers_share_one_connection_and_all_receive(harness: Harness) -> None:
    tasks = [make_task() for _ in range(100)]
    bus = harness.bus
    async with AsyncExitStack() as stack:
        subscriptions = [
            (task, await stack.enter_async_context(bus.subscribe(task.id)))
            for task in tasks
            for _ in range(10)
        ]
        for task in tasks:
            await bus.publish(task)

        for task, subscription in subscriptions:
            assert await subscription.get(WAIT) == task

        if harness.admin is not None:
            assert isinstance(bus, RedisEventBus)
            for task in tasks:
                assert await harness.numsub(task.id) == 1
            listeners = [
                client
                for client in await harness.admin.client_list(_type="pubsub")
                if client["name"] == bus.listener_name
            ]
            assert len(listeners) == 1
            assert listeners[0]["sub"] == str(len(tasks))
