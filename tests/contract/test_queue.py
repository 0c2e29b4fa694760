"""The TaskQueue contract: the memory and the RabbitMQ adapter must behave alike."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar
from uuid import UUID, uuid4

import aio_pika
import pytest

from taskwire.errors import ServiceUnavailable
from taskwire.ports import Delivery
from taskwire.queue import MemoryTaskQueue, decode_task_id, encode_task_id, open_queue
from taskwire.rabbitmq import RabbitTaskQueue

T = TypeVar("T")
AnyQueue = MemoryTaskQueue | RabbitTaskQueue

WAIT = 5.0  # generous bound for something that must happen
QUIET = 0.5  # how long we watch for something that must not happen
LIMIT = 3  # a small delivery limit keeps the crash-loop test short


async def delete_topology(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)
        await channel.queue_delete(f"{name}.dead")
        await channel.exchange_delete(f"{name}.dlx")


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
