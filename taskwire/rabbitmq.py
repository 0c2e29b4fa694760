"""The RabbitMQ TaskQueue: a durable quorum queue with a dead-letter queue, a ladder of delay
queues for retries, one robust connection per process, publisher confirms, and bounded waits
everywhere.

A delayed message is published, confirmed and persistent like any other, to the delay queue of
its bucket (taskwire.queue.DELAY_BUCKETS_MS) with its exact delay as per-message TTL. Delay
queues have no consumers: on expiry the broker dead-letters the message through the default
exchange into the main queue, and drops its `expiration` on the way. They are quorum queues
with at-least-once dead-lettering (RabbitMQ 3.10 accepts it only with reject-publish), which
keeps a message until the main queue has confirmed it: classic queues would drop it if the
broker failed in between. Measured on 3.10: a consumer gets it 5-20 ms after its delay.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq import spec
from yarl import URL

from taskwire.amqp_batch import Confirmation, Message, publish_batch
from taskwire.batching import Batcher
from taskwire.errors import ServiceUnavailable
from taskwire.ports import Delivery, QueueCounts
from taskwire.queue import (
    CONTENT_TYPE,
    DELAY_BUCKETS_MS,
    DELIVERY_LIMIT,
    TIMEOUT_SECONDS,
    delay_bucket_ms,
    delay_milliseconds,
    encode_task_id,
)

log = logging.getLogger(__name__)

# Defaults added to the URL unless it sets them (aiormq's heartbeat default is 60 s).
URL_DEFAULTS = {"heartbeat": "30", "reconnect_interval": "2"}
_SETTLE_ERRORS = (*CONNECTION_EXCEPTIONS, TimeoutError)
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


def queue_arguments(name: str, *, delivery_limit: int) -> dict[str, Any]:
    """Arguments of the main queue; every declaration must use exactly these."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": f"{name}.dlx",
        "x-dead-letter-routing-key": f"{name}.dead",
        # at-least-once dead-lettering keeps a message until the dead queue confirmed it;
        # RabbitMQ 3.10 accepts that strategy only together with reject-publish.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": delivery_limit,
    }


def delay_queue_name(name: str, bucket_ms: int) -> str:
    return f"{name}.delay.{bucket_ms}"


def delay_queue_names(name: str) -> list[str]:
    """Every delay queue of the main queue `name`, shortest delay first."""
    return [delay_queue_name(name, bucket) for bucket in DELAY_BUCKETS_MS]


def delay_queue_arguments(name: str, *, bucket_ms: int) -> dict[str, Any]:
    """Arguments of the delay queue of one bucket; every declaration must use exactly these."""
    return {
        "x-queue-type": "quorum",
        # A cap: each message carries its own, shorter or equal, TTL.
        "x-message-ttl": bucket_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def connection_url(url: str) -> URL:
    parsed = URL(url)
    missing = {key: value for key, value in URL_DEFAULTS.items() if key not in parsed.query}
    return parsed.update_query(missing)


@dataclass(frozen=True, slots=True)
class _Outgoing:
    message: Message
    deadline: float  # the caller's, on the loop's clock


class RabbitTaskQueue:
    """One robust connection per process: a confirming publish channel that also holds the
    topology (re-declared after a reconnect) and one channel per consume() context."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        delivery_limit: int = DELIVERY_LIMIT,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.name = name
        self._url = connection_url(url)
        self._delivery_limit = delivery_limit
        self._timeout = timeout
        self._connection: aio_pika.RobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._buffers: set[asyncio.Queue[AbstractIncomingMessage | None]] = set()
        self._sequence = itertools.count()
        # Publishes that arrive while the previous batch is being queued leave together.
        self._batcher: Batcher[_Outgoing, Confirmation | None] = Batcher(self._send)

    async def start(self) -> None:
        """Connect and declare the topology; ServiceUnavailable if the broker cannot be reached."""
        # Built by hand rather than by connect_robust() so that a connect that times out can
        # be closed: otherwise its reconnect task would go on retrying in the background.
        connection = aio_pika.RobustConnection(
            self._url, client_properties={"connection_name": f"taskwire {self.name}"}
        )
        self._connection = connection
        try:
            async with asyncio.timeout(self._timeout):
                await connection.connect(timeout=self._timeout)
                self._publisher = await self._declare_topology(connection)
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            await self.close()
            log.warning("cannot open the task queue %r: %r", self.name, exc)
            raise ServiceUnavailable from exc

    async def close(self) -> None:
        for buffer in self._buffers:
            buffer.put_nowait(None)
        connection, self._connection, self._publisher = self._connection, None, None
        if connection is not None:
            with suppress(*_SETTLE_ERRORS):
                async with asyncio.timeout(self._timeout):
                    await connection.close()

    async def _declare_topology(
        self, connection: aio_pika.RobustConnection
    ) -> AbstractRobustChannel:
        channel = connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel
        dlx = await channel.declare_exchange(
            f"{self.name}.dlx", aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead = await channel.declare_queue(
            f"{self.name}.dead", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead.bind(dlx, routing_key=f"{self.name}.dead")
        await self._declare_main(channel)
        # Declared through the robust channel, so a reconnect declares them again.
        for bucket in DELAY_BUCKETS_MS:
            await channel.declare_queue(
                delay_queue_name(self.name, bucket),
                durable=True,
                arguments=delay_queue_arguments(self.name, bucket_ms=bucket),
            )
        return channel

    async def _declare_main(self, channel: AbstractRobustChannel) -> aio_pika.abc.AbstractQueue:
        arguments = queue_arguments(self.name, delivery_limit=self._delivery_limit)
        return await channel.declare_queue(self.name, durable=True, arguments=arguments)

    async def publish(
        self,
        task_id: UUID,
        *,
        delay_seconds: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        delay_ms = delay_milliseconds(delay_seconds)
        routing_key = self.name
        if delay_ms:
            routing_key = delay_queue_name(self.name, delay_bucket_ms(delay_ms))
        properties = spec.Basic.Properties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            expiration=str(delay_ms) if delay_ms else None,
            # The trace context; a delay queue's dead-lettering keeps them (and adds x-death).
            # Copied: the frame is encoded on a later turn of the loop.
            headers=dict(headers) if headers else None,
            # A return finds its message by this id, so it must be unique among the
            # unconfirmed ones (one task may be published twice at once); set here, it also
            # spares aiormq's random UUID.
            message_id=f"{task_id.hex}.{next(self._sequence)}",
        )
        if self._publisher is None:
            raise ServiceUnavailable("the task queue is closed")
        deadline = asyncio.get_running_loop().time() + self._timeout
        message = Message(routing_key, encode_task_id(task_id), properties)
        try:
            async with asyncio.timeout_at(deadline):
                # Concurrent publishes leave together, as one frame and one socket write;
                # each still waits for its own confirm. mandatory: with the queue gone the
                # broker returns the message, which fails its confirmation with PublishError.
                confirmation = await self._batcher.submit(_Outgoing(message, deadline))
                if confirmation is None:
                    raise TimeoutError("the publish was not sent before its deadline")
                await confirmation
        except (*CONNECTION_EXCEPTIONS, TimeoutError, ServiceUnavailable) as exc:
            # Broker error texts can name hosts; the caller only needs to know it failed.
            log.warning("publish of task %s failed: %r", task_id, exc)
            if isinstance(exc, ServiceUnavailable):
                raise
            raise ServiceUnavailable from exc

    async def _send(self, batch: Sequence[_Outgoing]) -> list[Confirmation | None]:
        """Publish a batch on the publisher channel: each message's confirmation future, or
        None for one whose caller's deadline passed before it could be sent."""
        channel = self._publisher
        if channel is None:
            raise ServiceUnavailable("the task queue is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                await channel.ready()  # waits out a reconnect, within the same bound
                underlay = cast("aiormq.Channel", await channel.get_underlay_channel())
                # After a wait for a reconnect, callers that gave up are not published.
                now = loop.time()
                live = [outgoing.message for outgoing in batch if outgoing.deadline > now]
                sent = iter(await publish_batch(underlay, live))
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            raise ServiceUnavailable(f"publish failed: {type(exc).__name__}") from exc
        return [next(sent) if outgoing.deadline > now else None for outgoing in batch]

    @asynccontextmanager
    async def consume(self, *, prefetch: int) -> AsyncIterator[AsyncIterator[Delivery]]:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        connection = self._connection
        if connection is None:
            raise ServiceUnavailable("the task queue is closed")
        buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            buffer.put_nowait(message)

        channel = connection.channel(publisher_confirms=False)
        try:
            async with asyncio.timeout(self._timeout):
                await channel
                await channel.set_qos(prefetch_count=prefetch)
                # Declared (not passively) so the robust channel can re-create the queue
                # after a broker restart that lost it.
                queue = await self._declare_main(channel)
                tag = await queue.consume(on_message)
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            await _quietly(channel.close, self._timeout)
            log.warning("cannot consume from %r: %r", self.name, exc)
            raise ServiceUnavailable from exc
        self._buffers.add(buffer)
        try:
            yield _RabbitConsumer(buffer, self._timeout)
        finally:
            self._buffers.discard(buffer)
            buffer.put_nowait(None)
            # After close() the connection is gone and took the channel with it.
            if not connection.is_closed:
                await _quietly(lambda: queue.cancel(tag), self._timeout)
                # Closing the channel hands every unsettled delivery back to the queue.
                await _quietly(channel.close, self._timeout)

    async def ping(self) -> None:
        connection = self._connection
        transport = connection.transport if connection is not None else None
        if (
            connection is None
            or transport is None
            or transport.connection.is_closed
            or not connection.connected.is_set()
        ):
            raise ServiceUnavailable("RabbitMQ is not connected")

    async def depth(self) -> tuple[int, int]:
        """Ready messages in the main queue and in the dead-letter queue (passive declares)."""
        main, dead = await self._message_counts([self.name, f"{self.name}.dead"])
        return main, dead

    async def delayed(self) -> int:
        """How many delayed messages wait in the delay queues."""
        return sum(await self._message_counts(delay_queue_names(self.name)))

    async def stats(self) -> QueueCounts:
        """One passive declare per queue, on one short-lived channel (the dead-letter queue and
        the 41 delay queues included): a few milliseconds, for an operator's query."""
        main, dead, *delays = await self._declare_passively(
            [self.name, f"{self.name}.dead", *delay_queue_names(self.name)]
        )
        return QueueCounts(
            queued=main.message_count or 0,
            delayed=sum(delay.message_count or 0 for delay in delays),
            dead_lettered=dead.message_count or 0,
            consumers=main.consumer_count or 0,
        )

    async def _message_counts(self, queues: list[str]) -> list[int]:
        return [result.message_count or 0 for result in await self._declare_passively(queues)]

    async def _declare_passively(self, queues: list[str]) -> list[spec.Queue.DeclareOk]:
        await self.ping()
        transport = self._connection.transport if self._connection is not None else None
        assert transport is not None  # ping() checked it
        try:
            async with asyncio.timeout(self._timeout):
                channel = await transport.connection.channel(publisher_confirms=False)
                try:
                    declared = [await channel.queue_declare(q, passive=True) for q in queues]
                finally:
                    await channel.close()
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            log.warning("cannot read the depth of %r: %r", self.name, exc)
            raise ServiceUnavailable from exc
        answers = [result for result in declared if result is not None]
        if len(answers) != len(queues):  # only a nowait declare goes unanswered
            raise RuntimeError("a passive queue declare got no answer")
        return answers


class _RabbitConsumer:
    def __init__(
        self, buffer: asyncio.Queue[AbstractIncomingMessage | None], timeout: float
    ) -> None:
        self._buffer = buffer
        self._timeout = timeout

    def __aiter__(self) -> _RabbitConsumer:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            message = await self._buffer.get()
            if message is None:
                self._buffer.put_nowait(None)  # stay exhausted for later calls
                raise StopAsyncIteration
            try:
                message.channel  # noqa: B018 - raises once the channel is gone
            except CONNECTION_EXCEPTIONS:
                # Buffered before a reconnect: the broker redelivers it on the new channel.
                continue
            return _RabbitDelivery(message, self._timeout)


class _RabbitDelivery:
    __slots__ = ("_message", "_settled", "_timeout")

    def __init__(self, message: AbstractIncomingMessage, timeout: float) -> None:
        self._message = message
        self._timeout = timeout
        self._settled = False

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def redelivered(self) -> bool:
        return bool(self._message.redelivered)

    @property
    def headers(self) -> Mapping[str, str]:
        # Only the string ones: the broker adds its own (x-death, a table) to dead-lettered
        # messages, and a long string header may arrive as bytes.
        found: dict[str, str] = {}
        for name, value in (self._message.headers or {}).items():
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str):
                found[name] = value
        return found

    async def ack(self) -> None:
        await self._settle("ack", self._message.ack)

    async def requeue(self) -> None:
        await self._settle("requeue", lambda: self._message.nack(requeue=True))

    async def dead_letter(self) -> None:
        await self._settle("dead_letter", lambda: self._message.reject(requeue=False))

    async def _settle(self, outcome: str, settle: Callable[[], Awaitable[None]]) -> None:
        if self._settled:
            log.warning("ignored %s of a delivery that is already settled", outcome)
            return
        self._settled = True
        # After a lost channel the broker has already taken the message back and will
        # redeliver it; raising here would only crash a caller that did its job.
        try:
            async with asyncio.timeout(self._timeout):
                await settle()
        except _SETTLE_ERRORS as exc:
            log.warning("could not %s a delivery, it will be redelivered: %r", outcome, exc)


async def _quietly(close: Callable[[], Awaitable[Any]], seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await close()
    except _SETTLE_ERRORS as exc:
        log.debug("ignored while closing: %r", exc)
