"""The TaskQueue contract: the memory and the RabbitMQ adapter must behave alike."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar
from uuid import UUID, uuid4

import aio_pika
import pytest

from taskwire.errors import ServiceUnavailable
from taskwire.ports import Delivery, QueueCounts
from taskwire.queue import MemoryTaskQueue, decode_task_id, encode_task_id, open_queue
from taskwire.rabbitmq import RabbitTaskQueue
from tests.support import rabbitmq as rabbitmq_support

T = TypeVar("T")
AnyQueue = MemoryTaskQueue | RabbitTaskQueue

WAIT = 5.0  # generous bound for something that must happen
QUIET = 0.5  # how long we watch for something that must not happen
LIMIT = 3  # a small delivery limit keeps the crash-loop test short
# A delayed message may arrive this much before its delay (timer and clock granularity; both
# adapters round the delay up, never down) and must arrive within this much after it.
EARLY = 0.02
LATE = 0.5


async def delete_topology(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        await rabbitmq_support.delete_topology(connection, name)


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[AnyQueue]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("rabbitmq_url")
    name = f"test.queue.{uuid4().hex}"
    try:
        async with open_queue(url, name=name, delivery_limit=LIMIT) as opened:
            assert isinstance(opened, MemoryTaskQueue | RabbitTaskQueue)
            yield opened
    finally:
        if request.param == "rabbitmq":
            await delete_topology(url, name)


async def next_delivery(deliveries: AsyncIterator[Delivery]) -> Delivery:
    return await asyncio.wait_for(anext(deliveries), WAIT)


async def assert_nothing_arrives(deliveries: AsyncIterator[Delivery]) -> None:
    try:
        delivery = await asyncio.wait_for(anext(deliveries), QUIET)
    except TimeoutError:
        return
    pytest.fail(f"unexpected delivery {delivery.body!r}")


async def eventually(probe: Callable[[], Awaitable[T]], expected: T) -> None:
    """Poll until probe() returns expected (brokers update counters asynchronously)."""
    last = await probe()
    async with asyncio.timeout(WAIT):
        while last != expected:
            await asyncio.sleep(0.05)
            last = await probe()
    assert last == expected


async def test_publish_then_consume_gets_the_ids_in_order(queue: AnyQueue) -> None:
    ids = [uuid4() for _ in range(3)]
    for task_id in ids:
        await queue.publish(task_id)
    await eventually(queue.depth, (3, 0))

    async with queue.consume(prefetch=10) as deliveries:
        received = [await next_delivery(deliveries) for _ in ids]
        for delivery in received:
            assert delivery.body == encode_task_id(decode_task_id(delivery.body))
            assert not delivery.redelivered
            await delivery.ack()
        await assert_nothing_arrives(deliveries)

    assert [decode_task_id(d.body) for d in received] == ids
    await eventually(queue.depth, (0, 0))


async def test_prefetch_bounds_unsettled_deliveries(queue: AnyQueue) -> None:
    for _ in range(10):
        await queue.publish(uuid4())

    async with queue.consume(prefetch=3) as deliveries:
        held = [await next_delivery(deliveries) for _ in range(3)]
        await assert_nothing_arrives(deliveries)
        await eventually(queue.depth, (7, 0))

        await held[0].ack()
        held.append(await next_delivery(deliveries))
        await assert_nothing_arrives(deliveries)

        for delivery in held[1:]:
            await delivery.ack()
    await eventually(queue.depth, (6, 0))


async def test_requeue_delivers_again_as_redelivered(queue: AnyQueue) -> None:
    task_id = uuid4()
    await queue.publish(task_id)

    async with queue.consume(prefetch=1) as deliveries:
        first = await next_delivery(deliveries)
        assert not first.redelivered
        await first.requeue()

        again = await next_delivery(deliveries)
        assert decode_task_id(again.body) == task_id
        assert again.redelivered
        await again.ack()
        await assert_nothing_arrives(deliveries)
    await eventually(queue.depth, (0, 0))


async def test_dead_letter_goes_to_the_dead_queue_and_is_not_redelivered(
    queue: AnyQueue,
) -> None:
    task_id = uuid4()
    await queue.publish(task_id)

    async with queue.consume(prefetch=1) as deliveries:
        await (await next_delivery(deliveries)).dead_letter()
        await eventually(queue.depth, (0, 1))
        await assert_nothing_arrives(deliveries)

    if isinstance(queue, MemoryTaskQueue):
        assert queue.dead_letters == [encode_task_id(task_id)]


async def test_exiting_consume_returns_unsettled_deliveries(queue: AnyQueue) -> None:
    ids = [uuid4(), uuid4()]
    for task_id in ids:
        await queue.publish(task_id)

    async with queue.consume(prefetch=5) as deliveries:
        held = [await next_delivery(deliveries) for _ in ids]
    await eventually(queue.depth, (2, 0))
    with pytest.raises(StopAsyncIteration):
        await anext(deliveries)

    # Settling a delivery whose consumer is gone is logged, never raised: the broker has
    # already taken the message back.
    await held[0].ack()

    async with queue.consume(prefetch=5) as deliveries:
        again = [await next_delivery(deliveries) for _ in ids]
        assert sorted(decode_task_id(d.body) for d in again) == sorted(ids)
        assert all(d.redelivered for d in again)
        for delivery in again:
            await delivery.ack()
    await eventually(queue.depth, (0, 0))


async def test_settling_twice_is_ignored(queue: AnyQueue) -> None:
    await queue.publish(uuid4())
    async with queue.consume(prefetch=1) as deliveries:
        delivery = await next_delivery(deliveries)
        await delivery.ack()
        await delivery.requeue()
        await assert_nothing_arrives(deliveries)
    await eventually(queue.depth, (0, 0))


async def test_a_stale_handle_cannot_settle_the_next_delivery(queue: AnyQueue) -> None:
    await queue.publish(uuid4())
    async with queue.consume(prefetch=1) as deliveries:
        first = await next_delivery(deliveries)
        await first.requeue()
        second = await next_delivery(deliveries)
        assert second.redelivered
        await first.ack()  # already settled: ignored, must not ack `second`
    # `second` was never settled, so exiting handed it back.
    await eventually(queue.depth, (1, 0))


async def test_delivery_limit_dead_letters_a_crash_loop(queue: AnyQueue) -> None:
    await queue.publish(uuid4())
    deliveries_seen = 0
    async with queue.consume(prefetch=1) as deliveries:
        for _ in range(LIMIT + 1):
            await (await next_delivery(deliveries)).requeue()
            deliveries_seen += 1
        await assert_nothing_arrives(deliveries)
    assert deliveries_seen == LIMIT + 1
    await eventually(queue.depth, (0, 1))


async def test_ping_succeeds_while_open(queue: AnyQueue) -> None:
    await queue.ping()


async def test_consume_rejects_a_prefetch_below_one(queue: AnyQueue) -> None:
    with pytest.raises(ValueError, match="prefetch"):
        async with queue.consume(prefetch=0):
            pass


async def test_closing_the_queue_ends_consumption_and_refuses_work(queue: AnyQueue) -> None:
    started = time.monotonic()
    async with queue.consume(prefetch=1) as deliveries:
        await queue.close()
        with pytest.raises(StopAsyncIteration):
            await next_delivery(deliveries)
    assert time.monotonic() - started < 2  # leaving the context does not wait on a dead link
    with pytest.raises(ServiceUnavailable):
        await queue.publish(uuid4())
    with pytest.raises(ServiceUnavailable):
        await queue.ping()


async def timed_delivery(deliveries: AsyncIterator[Delivery], started: float) -> tuple[UUID, float]:
    """The next task id, acked, and how long after `started` it arrived."""
    delivery = await next_delivery(deliveries)
    arrived = time.monotonic() - started
    await delivery.ack()
    return decode_task_id(delivery.body), arrived


@pytest.mark.parametrize("delay", [0.3, 1.1])
async def test_a_delayed_message_arrives_after_its_delay(queue: AnyQueue, delay: float) -> None:
    task_id = uuid4()
    async with queue.consume(prefetch=1) as deliveries:
        started = time.monotonic()
        await queue.publish(task_id, delay_seconds=delay)
        # Confirmed, but held back: not in the main queue yet.
        assert await queue.delayed() == 1
        assert await queue.depth() == (0, 0)
        received, arrived = await timed_delivery(deliveries, started)
    assert received == task_id
    assert delay - EARLY <= arrived <= delay + LATE
    assert await queue.delayed() == 0


@pytest.mark.parametrize("delay", [0.0, -1.0])
async def test_a_publish_without_a_positive_delay_is_immediate(
    queue: AnyQueue, delay: float
) -> None:
    task_id = uuid4()
    async with queue.consume(prefetch=1) as deliveries:
        started = time.monotonic()
        await queue.publish(task_id, delay_seconds=delay)
        received, arrived = await timed_delivery(deliveries, started)
    assert received == task_id
    assert arrived < 0.2  # well below the smallest delay bucket (0.25 s)
    assert await queue.delayed() == 0


async def test_delayed_messages_arrive_in_delay_order(queue: AnyQueue) -> None:
    # Published longest first; each delay in a different bucket (see test_queue_rabbitmq for
    # two delays sharing one).
    delays = {uuid4(): delay for delay in (1.2, 0.3, 0.7, 0.0)}
    async with queue.consume(prefetch=10) as deliveries:
        started = time.monotonic()
        for task_id, delay in delays.items():
            await queue.publish(task_id, delay_seconds=delay)
        arrivals = [await timed_delivery(deliveries, started) for _ in delays]
        await assert_nothing_arrives(deliveries)

    assert [task_id for task_id, _ in arrivals] == sorted(delays, key=delays.__getitem__)
    for task_id, arrived in arrivals:
        assert delays[task_id] - EARLY <= arrived <= delays[task_id] + LATE


async def test_a_delayed_message_waits_without_a_consumer(queue: AnyQueue) -> None:
    task_id = uuid4()
    started = time.monotonic()
    await queue.publish(task_id, delay_seconds=0.8)
    # A consumer that comes and goes while the message waits neither gets nor loses it.
    async with queue.consume(prefetch=1) as deliveries:
        await assert_nothing_arrives(deliveries)
    await eventually(queue.depth, (1, 0))
    assert time.monotonic() - started >= 0.8 - EARLY

    async with queue.consume(prefetch=1) as deliveries:
        received, _ = await timed_delivery(deliveries, started)
    assert received == task_id
    await eventually(queue.depth, (0, 0))


async def test_a_delayed_message_is_settled_like_any_other(queue: AnyQueue) -> None:
    task_id = uuid4()
    await queue.publish(task_id, delay_seconds=0.3)
    async with queue.consume(prefetch=1) as deliveries:
        first = await next_delivery(deliveries)
        await first.requeue()
        # Back at once: a requeue does not go through the delay again.
        started = time.monotonic()
        again = await next_delivery(deliveries)
        assert time.monotonic() - started < 0.2
        assert decode_task_id(again.body) == task_id
        assert again.redelivered
        await again.dead_letter()
    await eventually(queue.depth, (0, 1))


async def test_a_delay_that_is_not_a_number_is_refused(queue: AnyQueue) -> None:
    with pytest.raises(ValueError, match="delay"):
        await queue.publish(uuid4(), delay_seconds=math.nan)
    assert await queue.delayed() == 0


async def test_a_delayed_publish_on_a_closed_queue_raises(queue: AnyQueue) -> None:
    await queue.close()
    with pytest.raises(ServiceUnavailable):
        await queue.publish(uuid4(), delay_seconds=0.3)


async def test_closing_the_memory_queue_cancels_what_is_not_due() -> None:
    # Nothing in a memory queue outlives it; the broker keeps its delayed messages instead.
    queue = MemoryTaskQueue()
    await queue.publish(uuid4(), delay_seconds=0.1)
    assert await queue.delayed() == 1
    await queue.close()
    assert await queue.delayed() == 0
    await asyncio.sleep(0.2)  # past the delay: the cancelled timer must not have fired
    assert await queue.depth() == (0, 0)


def test_encode_decode_round_trip() -> None:
    task_id = uuid4()
    body = encode_task_id(task_id)
    assert json.loads(body) == {"task_id": str(task_id)}
    assert decode_task_id(body) == task_id
    upper = json.dumps({"task_id": str(task_id).upper()}).encode()
    assert decode_task_id(upper) == task_id


_ID = "0f0e0d0c-0b0a-4909-8807-060504030201"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(f'"{_ID}"'.encode(), id="bare-string"),
        pytest.param(b"{}", id="no-task-id"),
        pytest.param(f'{{"id": "{_ID}"}}'.encode(), id="wrong-key"),
        pytest.param(b'{"task_id": null}', id="null-id"),
        pytest.param(b'{"task_id": 42}', id="number-id"),
        pytest.param(b'{"task_id": "not-a-uuid"}', id="bad-uuid"),
        pytest.param(b'{"task_id": "0f0e0d0c-0b0a-4909-8807-06050403020g"}', id="bad-hex"),
        pytest.param(f'{{"task_id": "{_ID.replace("-", "")}"}}'.encode(), id="no-hyphens"),
        pytest.param(f'{{"task_id": "{{{_ID}}}"}}'.encode(), id="braces"),
        pytest.param(f'{{"task_id": "urn:uuid:{_ID}"}}'.encode(), id="urn"),
        pytest.param(f'{{"task_id": "{_ID}", "pad": "{"x" * 10_000}"}}'.encode(), id="huge"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
        pytest.param(b"[" * 200 + b"]" * 20, id="nested-within-size-bound"),
    ],
)
def test_decode_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is "any ValueError"
        decode_task_id(body)


def test_decode_accepts_extra_keys() -> None:
    # Forward compatible: a newer publisher may add fields.
    body = json.dumps({"task_id": _ID, "attempt": 2}).encode()
    assert decode_task_id(body) == UUID(_ID)


# --- stats (queueStats, `taskwire status`) -------------------------------------------------


async def test_stats_of_a_fresh_queue(queue: AnyQueue) -> None:
    assert await queue.stats() == QueueCounts(queued=0, delayed=0, dead_lettered=0, consumers=0)


async def test_stats_follow_messages_and_consumers(queue: AnyQueue) -> None:
    await queue.publish(uuid4())
    await queue.publish(uuid4())
    await queue.publish(uuid4(), delay_seconds=60)  # still waiting when the test ends
    await eventually(queue.stats, QueueCounts(queued=2, delayed=1, dead_lettered=0, consumers=0))
    async with queue.consume(prefetch=1) as deliveries:
        first = await next_delivery(deliveries)
        # Delivered but not settled: no longer queued, not dead either.
        await eventually(
            queue.stats, QueueCounts(queued=1, delayed=1, dead_lettered=0, consumers=1)
        )
        await first.dead_letter()
        second = await next_delivery(deliveries)
        await second.ack()
        await eventually(
            queue.stats, QueueCounts(queued=0, delayed=1, dead_lettered=1, consumers=1)
        )
    await eventually(queue.stats, QueueCounts(queued=0, delayed=1, dead_lettered=1, consumers=0))


async def test_stats_of_a_closed_queue_are_service_unavailable(queue: AnyQueue) -> None:
    await queue.close()
    with pytest.raises(ServiceUnavailable):
        await queue.stats()
