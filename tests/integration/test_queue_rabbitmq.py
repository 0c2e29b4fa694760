"""RabbitTaskQueue against a real broker: topology, durability, failure and recovery.

Broker outages are simulated with a TCP proxy in front of the shared server, which is never
restarted: stopping the proxy is a broker that vanished, starting it again is a broker back.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed
from yarl import URL

import taskwire.rabbitmq
from taskwire.amqp_batch import Confirmation, Message, publish_batch
from taskwire.errors import ServiceUnavailable
from taskwire.ports import Delivery, TaskQueue
from taskwire.queue import (
    CONTENT_TYPE,
    DELAY_BUCKETS_MS,
    DELAY_STEPS_PER_OCTAVE,
    DELIVERY_LIMIT,
    MAX_DELAY_SECONDS,
    decode_task_id,
    delay_bucket_ms,
    delay_milliseconds,
    open_queue,
)
from taskwire.rabbitmq import (
    RabbitTaskQueue,
    connection_url,
    delay_queue_arguments,
    delay_queue_name,
    delay_queue_names,
    queue_arguments,
)
from tests.support.rabbitmq import delete_topology

pytestmark = pytest.mark.rabbitmq

WAIT = 5.0
# Fast reconnects keep the outage tests short; heartbeat stays at its default.
FAST = {"reconnect_interval": "0.2"}


class Proxy:
    """A TCP relay that can drop every connection and refuse new ones, then come back."""

    def __init__(self, target: URL) -> None:
        self._host = target.host or "127.0.0.1"
        self._port = target.port or 5672
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop(self) -> None:
        """Cut every open connection at once, without a turn of the loop: nothing written after
        this reaches the broker. New connections are still accepted."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self._host, self._port)
        self._writers |= {writer, upstream_writer}
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(_pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.transport.abort()


@pytest.fixture
def name() -> str:
    return f"test.queue.{uuid4().hex}"


@pytest.fixture
async def admin(rabbitmq_url: str, name: str) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A plain connection for inspecting the broker; it deletes the test topology at the end."""
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        yield connection
        await delete_topology(connection, name)


@pytest.fixture
async def proxy(rabbitmq_url: str) -> AsyncIterator[Proxy]:
    relay = Proxy(URL(rabbitmq_url))
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[Message]]:
    """Every batch the publisher channel is given, as it is given."""
    seen: list[list[Message]] = []
    real = publish_batch

    async def spy(channel: Any, messages: Sequence[Message]) -> list[Confirmation]:
        seen.append(list(messages))
        return await real(channel, messages)

    monkeypatch.setattr(taskwire.rabbitmq, "publish_batch", spy)
    return seen


def rabbit(queue: TaskQueue) -> RabbitTaskQueue:
    assert isinstance(queue, RabbitTaskQueue)
    return queue


def via(proxy: Proxy, rabbitmq_url: str) -> str:
    return str(URL(rabbitmq_url).with_host("127.0.0.1").with_port(proxy.port).update_query(FAST))


async def declare(
    admin: aio_pika.abc.AbstractConnection, queue: str, arguments: dict[str, Any]
) -> None:
    # A fresh channel each time: a failed declaration closes the channel it was made on.
    channel = await admin.channel()
    await channel.declare_queue(queue, durable=True, arguments=arguments)
    await channel.close()


async def next_delivery(deliveries: AsyncIterator[Delivery], seconds: float = WAIT) -> Delivery:
    return await asyncio.wait_for(anext(deliveries), seconds)


async def declared(
    admin: aio_pika.abc.AbstractConnection, queue: str
) -> aio_pika.abc.AbstractQueue:
    """The queue as the broker sees it now (a passive declare on a fresh channel)."""
    channel = await admin.channel()
    try:
        return await channel.declare_queue(queue, passive=True)
    finally:
        await channel.close()


async def test_topology_is_durable_quorum_with_dead_lettering(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection
) -> None:
    arguments = queue_arguments(name, delivery_limit=DELIVERY_LIMIT)
    assert arguments["x-delivery-limit"] == DELIVERY_LIMIT
    # Two processes starting together declare the same topology without conflict.
    async with open_queue(rabbitmq_url, name=name), open_queue(rabbitmq_url, name=name):
        pass

    # The broker refuses a declaration that differs in any argument, so one that matches
    # proves the queue has exactly these arguments.
    await declare(admin, name, arguments)
    await declare(admin, f"{name}.dead", {"x-queue-type": "quorum"})
    for key, other in [
        ("x-queue-type", "classic"),
        ("x-dead-letter-exchange", "elsewhere"),
        ("x-dead-letter-strategy", "at-most-once"),
        ("x-overflow", "drop-head"),
        ("x-delivery-limit", DELIVERY_LIMIT + 1),
    ]:
        with pytest.raises(ChannelPreconditionFailed):
            await declare(admin, name, {**arguments, key: other})
    with pytest.raises(ChannelPreconditionFailed):
        await declare(admin, f"{name}.dead", {"x-queue-type": "classic"})

    channel = await admin.channel()
    await channel.declare_exchange(f"{name}.dlx", aio_pika.ExchangeType.DIRECT, durable=True)
    with pytest.raises(ChannelPreconditionFailed):
        await channel.declare_exchange(f"{name}.dlx", aio_pika.ExchangeType.FANOUT, durable=True)


async def test_dead_letters_route_through_the_dlx_to_the_dead_queue(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection
) -> None:
    task_id = uuid4()
    async with open_queue(rabbitmq_url, name=name) as queue:
        await queue.publish(task_id)
        async with queue.consume(prefetch=1) as deliveries:
            await (await next_delivery(deliveries)).dead_letter()

    channel = await admin.channel()
    dead = await channel.declare_queue(f"{name}.dead", passive=True)
    message = await dead.get(timeout=WAIT)
    await message.ack()
    assert decode_task_id(message.body) == task_id
    assert message.exchange == f"{name}.dlx"


async def test_open_against_a_closed_port_raises_quickly(rabbitmq_url: str) -> None:
    url = str(URL(rabbitmq_url).with_port(_closed_port()))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        async with open_queue(url, name="never.declared"):
            pass
    assert time.monotonic() - started < 6


async def test_publish_while_the_broker_is_unreachable_raises_quickly(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection, proxy: Proxy
) -> None:
    async with open_queue(via(proxy, rabbitmq_url), name=name) as queue:
        await proxy.stop()
        # Right after the loss a publish fails at once; once the client knows it is
        # reconnecting, a publish waits for the connection, but only up to the bound.
        waited = False
        async with asyncio.timeout(4 * WAIT):
            while not waited:
                started = time.monotonic()
                with pytest.raises(ServiceUnavailable):
                    await queue.publish(uuid4())
                elapsed = time.monotonic() - started
                assert elapsed < 6
                waited = elapsed > 1
                await asyncio.sleep(0.05)  # poll interval; lets the client notice the loss
        with pytest.raises(ServiceUnavailable):
            await queue.ping()


async def test_recovers_after_the_broker_comes_back(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection, proxy: Proxy
) -> None:
    held_id, later_id = uuid4(), uuid4()
    async with open_queue(via(proxy, rabbitmq_url), name=name) as queue:
        await queue.publish(held_id)
        async with queue.consume(prefetch=1) as deliveries:
            held = await next_delivery(deliveries)
            await proxy.stop()
            # While the broker is gone the topology is lost too; recovery must re-declare it.
            channel = await admin.channel()
            await channel.queue_delete(name)
            await channel.close()
            # Settling on the lost channel is logged, not raised.
            await held.ack()
            await proxy.start()

            await _publish_when_back(queue, later_id)
            # The first message went with the deleted queue; the new one arrives.
            again = await next_delivery(deliveries, seconds=2 * WAIT)
            assert decode_task_id(again.body) == later_id
            await again.ack()
        await queue.ping()
        assert await rabbit(queue).depth() == (0, 0)


async def test_an_unsettled_delivery_is_redelivered_after_a_connection_loss(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection, proxy: Proxy
) -> None:
    task_id = uuid4()
    async with open_queue(via(proxy, rabbitmq_url), name=name) as queue:
        await queue.publish(task_id)
        async with queue.consume(prefetch=1) as deliveries:
            held = await next_delivery(deliveries)
            assert not held.redelivered
            await proxy.stop()
            await held.ack()  # too late: the broker took it back when the connection died
            await proxy.start()

            again = await next_delivery(deliveries, seconds=2 * WAIT)
            assert decode_task_id(again.body) == task_id
            assert again.redelivered
            await again.ack()


async def test_publish_to_a_deleted_queue_is_an_error_not_a_silent_drop(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection
) -> None:
    async with open_queue(rabbitmq_url, name=name) as queue:
        channel = await admin.channel()
        await channel.queue_delete(name)
        with pytest.raises(ServiceUnavailable):
            await queue.publish(uuid4())


async def test_a_message_survives_closing_and_reopening(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection
) -> None:
    task_id = uuid4()
    async with open_queue(rabbitmq_url, name=name) as queue:
        await queue.publish(task_id)

    channel = await admin.channel()
    raw = await (await channel.declare_queue(name, passive=True)).get(timeout=WAIT)
    assert raw.content_type == CONTENT_TYPE
    assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    await raw.nack(requeue=True)
    await channel.close()

    async with (
        open_queue(rabbitmq_url, name=name) as queue,
        queue.consume(prefetch=1) as deliveries,
    ):
        delivery = await next_delivery(deliveries)
        assert decode_task_id(delivery.body) == task_id
        await delivery.ack()


async def test_two_consumers_split_the_work_without_duplicates(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection
) -> None:
    ids = {uuid4() for _ in range(40)}
    received: list[tuple[int, UUID]] = []
    all_received = asyncio.Event()

    async def work(worker: int, deliveries: AsyncIterator[Delivery]) -> None:
        async for delivery in deliveries:
            received.append((worker, decode_task_id(delivery.body)))
            await asyncio.sleep(0.01)  # long enough for the other consumer to get its share
            await delivery.ack()
            if len(received) >= len(ids):
                all_received.set()

    # Two connections, as two processor processes would have.
    async with (
        open_queue(rabbitmq_url, name=name) as first,
        open_queue(rabbitmq_url, name=name) as second,
        first.consume(prefetch=5) as first_deliveries,
        second.consume(prefetch=5) as second_deliveries,
    ):
        workers = [
            asyncio.create_task(work(1, first_deliveries)),
            asyncio.create_task(work(2, second_deliveries)),
        ]
        for task_id in ids:
            await first.publish(task_id)
        await asyncio.wait_for(all_received.wait(), WAIT)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        assert await rabbit(first).depth() == (0, 0)

    assert len(received) == len(ids)
    assert {task_id for _, task_id in received} == ids
    assert {worker for worker, _ in received} == {1, 2}


def test_the_delay_ladder_is_a_quarter_octave_from_250_ms_to_256_s() -> None:
    assert DELAY_BUCKETS_MS[0] == 250
    assert DELAY_BUCKETS_MS[-1] == 256_000 == MAX_DELAY_SECONDS * 1000
    steps = [later / earlier for earlier, later in itertools.pairwise(DELAY_BUCKETS_MS)]
    # 2^(1/4) = 1.189, give or take the rounding to whole milliseconds
    assert all(1.18 < step < 1.2 for step in steps)
    assert DELAY_BUCKETS_MS[::DELAY_STEPS_PER_OCTAVE] == tuple(250 * 2**k for k in range(11))


@pytest.mark.parametrize(
    ("delay", "delay_ms", "bucket"),
    [
        (0.0001, 1, 250),
        (0.25, 250, 250),
        (0.2501, 251, 297),
        (0.7, 700, 707),
        (1.0, 1000, 1000),
        (1.0001, 1001, 1189),
        (3.3, 3300, 3364),
        (256.0, 256_000, 256_000),
        (3600.0, 256_000, 256_000),  # capped
        (float("inf"), 256_000, 256_000),
    ],
)
def test_a_delay_is_rounded_up_to_whole_milliseconds_and_put_in_the_bucket_above(
    delay: float, delay_ms: int, bucket: int
) -> None:
    assert delay_milliseconds(delay) == delay_ms
    assert delay_bucket_ms(delay_ms) == bucket


async def test_delay_queues_are_quorum_queues_that_dead_letter_into_the_main_queue(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection
) -> None:
    # Two processes starting together declare the same ladder without conflict.
    async with open_queue(rabbitmq_url, name=name), open_queue(rabbitmq_url, name=name):
        pass
    for bucket in DELAY_BUCKETS_MS:
        await declare(
            admin, delay_queue_name(name, bucket), delay_queue_arguments(name, bucket_ms=bucket)
        )
    queue = delay_queue_name(name, 1000)
    arguments = delay_queue_arguments(name, bucket_ms=1000)
    assert arguments["x-message-ttl"] == 1000
    for key, other in [
        ("x-queue-type", "classic"),
        ("x-message-ttl", 2000),
        ("x-dead-letter-exchange", f"{name}.dlx"),
        ("x-dead-letter-routing-key", f"{name}.dead"),
        ("x-dead-letter-strategy", "at-most-once"),
    ]:
        with pytest.raises(ChannelPreconditionFailed):
            await declare(admin, queue, {**arguments, key: other})


async def test_delay_queues_have_no_consumers(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection
) -> None:
    async with open_queue(rabbitmq_url, name=name) as queue, queue.consume(prefetch=1):
        await queue.publish(uuid4(), delay_seconds=1.0)
        assert (await declared(admin, name)).declaration_result.consumer_count == 1
        for delay_queue in delay_queue_names(name):
            result = (await declared(admin, delay_queue)).declaration_result
            assert result.consumer_count == 0, delay_queue
        assert await rabbit(queue).delayed() == 1


async def test_a_delayed_message_survives_closing_and_reopening(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection
) -> None:
    task_id = uuid4()
    async with open_queue(rabbitmq_url, name=name) as queue:
        started = time.monotonic()
        await queue.publish(task_id, delay_seconds=1.5)
    # Confirmed before publish() returned: it waits in its bucket while nobody is connected.
    bucket = delay_queue_name(name, delay_bucket_ms(1500))
    assert (await declared(admin, bucket)).declaration_result.message_count == 1
    assert (await declared(admin, name)).declaration_result.message_count == 0

    async with open_queue(rabbitmq_url, name=name) as queue:
        assert time.monotonic() - started < 1.5  # reopened while it still waits
        async with asyncio.timeout(WAIT):
            while await rabbit(queue).depth() != (1, 0):
                await asyncio.sleep(0.02)
        arrived = time.monotonic() - started
        assert await rabbit(queue).delayed() == 0
    # Only a lower bound: how soon we look again depends on how fast the reopen was.
    assert arrived >= 1.5

    # Through the delay queue into the main queue it stayed the same persistent message, and
    # lost its TTL on the way (or the main queue would dead-letter it as expired).
    channel = await admin.channel()
    raw = await (await channel.declare_queue(name, passive=True)).get(timeout=WAIT)
    await raw.ack()
    assert decode_task_id(raw.body) == task_id
    assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert raw.content_type == CONTENT_TYPE
    assert raw.expiration is None
    assert not raw.redelivered
    deaths = raw.headers["x-death"]
    assert isinstance(deaths, list)
    assert [(death["queue"], death["reason"]) for death in deaths if isinstance(death, dict)] == [
        (bucket, "expired")
    ]


async def test_delays_sharing_a_bucket_leave_in_the_order_they_came(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection
) -> None:
    # RabbitMQ expires messages only at the head of a queue: the shorter delay, published
    # second into the same bucket, waits for the longer one. Never early, at most a step late.
    longer, shorter = uuid4(), uuid4()
    assert delay_bucket_ms(950) == delay_bucket_ms(850) == 1000
    async with (
        open_queue(rabbitmq_url, name=name) as queue,
        queue.consume(prefetch=2) as deliveries,
    ):
        started = time.monotonic()
        await queue.publish(longer, delay_seconds=0.95)
        await queue.publish(shorter, delay_seconds=0.85)
        arrivals = []
        for _ in range(2):
            delivery = await next_delivery(deliveries)
            arrivals.append((decode_task_id(delivery.body), time.monotonic() - started))
            await delivery.ack()
    assert [task_id for task_id, _ in arrivals] == [longer, shorter]
    assert 0.95 <= arrivals[0][1] < 1.2
    assert 0.95 <= arrivals[1][1] < 1.2


async def test_a_reconnect_declares_the_delay_queues_again(
    rabbitmq_url: str, name: str, admin: aio_pika.abc.AbstractConnection, proxy: Proxy
) -> None:
    task_id = uuid4()
    async with open_queue(via(proxy, rabbitmq_url), name=name) as queue:
        await proxy.stop()
        channel = await admin.channel()
        await channel.queue_delete(delay_queue_name(name, 500))
        await channel.close()
        await proxy.start()

        # mandatory publishing: were the bucket still missing, this would keep failing.
        await _publish_when_back(queue, task_id, delay_seconds=0.5)
        async with queue.consume(prefetch=1) as deliveries:
            delivery = await next_delivery(deliveries)
            assert decode_task_id(delivery.body) == task_id
            await delivery.ack()


async def test_concurrent_publishes_share_frames_and_each_arrives_once_as_it_was_sent(
    rabbitmq_url: str,
    name: str,
    admin: aio_pika.abc.AbstractConnection,
    batches: list[list[Message]],
) -> None:
    now, later = [uuid4() for _ in range(400)], [uuid4() for _ in range(40)]
    bucket = delay_queue_name(name, delay_bucket_ms(30_000))
    async with open_queue(rabbitmq_url, name=name) as queue:
        # Interleaved, all at once: immediate and delayed messages share batches.
        await asyncio.gather(
            *(queue.publish(task_id, headers={"x-request-id": task_id.hex}) for task_id in now),
            *(
                queue.publish(task_id, delay_seconds=30, headers={"x-request-id": task_id.hex})
                for task_id in later
            ),
        )
        # Every publish confirmed, in a few frames rather than one each.
        assert sum(len(batch) for batch in batches) == len(now) + len(later)
        assert len(batches) <= 3
        assert any({m.routing_key for m in batch} == {name, bucket} for batch in batches)
        assert await rabbit(queue).depth() == (len(now), 0)
        assert await rabbit(queue).delayed() == len(later)

        # Each message kept its own properties.
        channel = await admin.channel()
        for queue_name, expiration in ((name, None), (bucket, 30.0)):
            raw = await (await channel.declare_queue(queue_name, passive=True)).get(timeout=WAIT)
            assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert raw.content_type == CONTENT_TYPE
            assert raw.expiration == expiration  # aio-pika gives the TTL in seconds
            assert raw.headers["x-request-id"] == decode_task_id(raw.body).hex
            assert raw.message_id is not None
            assert raw.message_id.startswith(decode_task_id(raw.body).hex)
            await raw.nack(requeue=True)
        await channel.close()

        received: Counter[UUID] = Counter()
        async with queue.consume(prefetch=100) as deliveries:
            for _ in now:
                delivery = await next_delivery(deliveries)
                task_id = decode_task_id(delivery.body)
                assert delivery.headers["x-request-id"] == task_id.hex
                received[task_id] += 1
                await delivery.ack()
        assert received == Counter(now)
        assert await rabbit(queue).depth() == (0, 0)


async def test_a_return_fails_exactly_the_publishes_it_returned(
    rabbitmq_url: str,
    name: str,
    admin: aio_pika.abc.AbstractConnection,
    batches: list[list[Message]],
) -> None:
    routed = [uuid4() for _ in range(200)]
    unroutable = [uuid4() for _ in range(20)]
    async with open_queue(rabbitmq_url, name=name) as queue:
        channel = await admin.channel()
        await channel.queue_delete(delay_queue_name(name, delay_bucket_ms(30_000)))
        await channel.close()

        def publish(task_id: UUID) -> Any:
            if task_id in unroutable:
                return queue.publish(task_id, delay_seconds=30)
            return queue.publish(task_id)

        mixed = [*routed[:100], *unroutable, *routed[100:]]
        results = await asyncio.gather(*map(publish, mixed), return_exceptions=True)
        # One frame carried all of them; the broker returned only the unroutable ones.
        assert [len(batch) for batch in batches] == [len(mixed)]
        failed = {task_id for task_id, result in zip(mixed, results, strict=True) if result}
        assert failed == set(unroutable)
        assert all(isinstance(result, ServiceUnavailable) for result in results if result)
        assert await rabbit(queue).depth() == (len(routed), 0)
        # The returns left the channel open and its bookkeeping clean.
        await queue.publish(uuid4())
        assert await rabbit(queue).depth() == (len(routed) + 1, 0)


async def test_a_connection_lost_mid_batch_fails_its_unconfirmed_callers_in_bounded_time(
    rabbitmq_url: str,
    name: str,
    admin: aio_pika.abc.AbstractConnection,
    proxy: Proxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = publish_batch
    first: list[Message] = []

    async def queue_then_drop(channel: Any, messages: Sequence[Message]) -> list[Confirmation]:
        confirmations = await real(channel, messages)
        if not first:
            # Queued for the writer but not written yet: the broker never sees this batch.
            first.extend(messages)
            proxy.drop()
        return confirmations

    monkeypatch.setattr(taskwire.rabbitmq, "publish_batch", queue_then_drop)
    timeout = 2.0
    queue = RabbitTaskQueue(via(proxy, rabbitmq_url), name=name, timeout=timeout)
    await queue.start()
    try:
        ids = [uuid4() for _ in range(300)]
        started = time.monotonic()
        results = await asyncio.gather(*map(queue.publish, ids), return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        await queue.close()

    assert elapsed < timeout + 1
    assert all(result is None or isinstance(result, ServiceUnavailable) for result in results)
    outcome = dict(zip(ids, results, strict=True))
    lost = {UUID(hex=str(message.properties.message_id).split(".")[0]) for message in first}
    assert len(lost) == len(first) > 1
    assert all(isinstance(outcome[task_id], ServiceUnavailable) for task_id in lost)
    # Every confirmed publish is at the broker (some after the client reconnected).
    confirmed = sum(result is None for result in results)
    stored = (await declared(admin, name)).declaration_result.message_count
    assert stored is not None
    assert stored >= confirmed


def test_connection_url_adds_defaults_without_overriding() -> None:
    defaults = connection_url("amqp://guest:guest@rabbit:5672/vhost")
    assert defaults.query["heartbeat"] == "30"
    assert defaults.path == "/vhost"
    assert connection_url("amqp://rabbit/?heartbeat=5").query["heartbeat"] == "5"


async def _publish_when_back(
    queue: TaskQueue, task_id: UUID, *, delay_seconds: float = 0.0
) -> None:
    """Publish once the connection has recovered (each failed try is itself bounded)."""
    async with asyncio.timeout(3 * WAIT):
        while True:
            try:
                await queue.publish(task_id, delay_seconds=delay_seconds)
            except ServiceUnavailable:
                await asyncio.sleep(0.1)
            else:
                return


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
