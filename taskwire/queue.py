"""The TaskQueue message codec, the memory adapter, and the factory picking an adapter by URL
(the RabbitMQ adapter is in taskwire.rabbitmq).

The message is the task id only; the database holds the task. Redelivery is normal, so nothing
here tries to deliver exactly once: the store's conditional transitions make duplicates harmless.

A delayed publish (a retry's backoff) waits on the broker, in one of a fixed ladder of delay
buckets (see DELAY_BUCKETS_MS), never in a sleeping consumer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from uuid import UUID

from taskwire.errors import ServiceUnavailable, SettingsError
from taskwire.ports import Delivery, QueueCounts, TaskQueue
from taskwire.settings import is_memory

if TYPE_CHECKING:
    from taskwire.rabbitmq import RabbitTaskQueue

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
# A bound for crash loops: RabbitMQ 3.10 has no default delivery limit on quorum queues.
DELIVERY_LIMIT = 20
# Every broker round trip is bounded: a caller gets ServiceUnavailable, never a hang.
TIMEOUT_SECONDS = 5.0
# {"task_id": "<36 characters>"} is ~50 bytes; the bound also keeps json's recursion shallow.
MAX_BODY_BYTES = 256

# The delay buckets, in milliseconds: 250 ms * 2^(k/4) up to 256 s (41 buckets, a quarter
# octave apart). A delayed message waits in the smallest bucket that is not shorter than its
# delay, with its exact delay as its own TTL. RabbitMQ expires messages only at the head of a
# queue, so a message can wait behind a longer one published before it into the same bucket:
# never early, but up to one step (19%) late. Whole octaves would need only 11 queues, but the
# caller's jitter spreads a retry over the upper half of a power of two, which is then one
# bucket: measured with a burst of 100 retries, they came back 30% late at the median and 95%
# at worst, bunched at the end of the window (quarter octaves: 6% and 18%).
DELAY_STEPS_PER_OCTAVE = 4
DELAY_BUCKETS_MS: tuple[int, ...] = tuple(
    round(250 * 2 ** (step / DELAY_STEPS_PER_OCTAVE))
    for step in range(10 * DELAY_STEPS_PER_OCTAVE + 1)
)
# Longer delays are cut to this (the retry policy caps its backoff well below it).
MAX_DELAY_SECONDS = DELAY_BUCKETS_MS[-1] / 1000


def delay_milliseconds(delay_seconds: float) -> int:
    """The delay a publish will wait, in whole milliseconds: 0 for none (<= 0), otherwise
    rounded up (never early) and capped at MAX_DELAY_SECONDS. ValueError for NaN."""
    if math.isnan(delay_seconds):
        raise ValueError("delay_seconds must be a number")
    if delay_seconds <= 0:
        return 0
    # Rounded to a nanosecond first: 0.007 * 1000 is 7.000000000000001, which is 7 ms.
    return max(1, math.ceil(round(min(delay_seconds, MAX_DELAY_SECONDS) * 1000, 6)))


def delay_bucket_ms(delay_ms: int) -> int:
    """The smallest delay bucket that holds a delay of `delay_ms` (> 0, at most the cap)."""
    for bucket in DELAY_BUCKETS_MS:
        if bucket >= delay_ms:
            return bucket
    raise ValueError(f"a delay of {delay_ms} ms is above the largest bucket")


def encode_task_id(task_id: UUID) -> bytes:
    return json.dumps({"task_id": str(task_id)}, separators=(",", ":")).encode()


def decode_task_id(body: bytes) -> UUID:
    """The task id in a message body; ValueError on anything malformed."""
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"message body is {len(body)} bytes, more than {MAX_BODY_BYTES}")
    try:
        data = json.loads(body)
    except RecursionError:
        raise ValueError("message body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("message body must be a JSON object")
    raw = data.get("task_id")
    if not isinstance(raw, str) or len(raw) != 36:
        raise ValueError("task_id must be a UUID string")
    task_id = UUID(raw)
    if str(task_id) != raw.lower():
        raise ValueError("task_id must be a UUID in its canonical form")
    return task_id


# ---------------------------------------------------------------- memory


@dataclass(slots=True)
class _Message:
    body: bytes
    headers: Mapping[str, str]
    redelivered: bool = False
    returns: int = 0


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class MemoryTaskQueue:
    """In-process queue for `taskwire dev`: same contract, nothing survives the process."""

    def __init__(self, *, delivery_limit: int = DELIVERY_LIMIT) -> None:
        self.dead_letters: list[bytes] = []
        # How many deliveries were settled each way ("ack", "requeue", "dead_letter"): lets a
        # test wait for a message to be done with rather than for the queue to look empty.
        self.settled: Counter[str] = Counter()
        self._ready: deque[_Message] = deque()
        self._delivery_limit = delivery_limit
        self._changed = asyncio.Event()
        self._closed = False
        # Delayed publishes not due yet; close() cancels them (nothing here outlives the process).
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_keys = itertools.count()
        # Open consume() contexts, for stats().
        self._consumers = 0

    async def publish(
        self,
        task_id: UUID,
        *,
        delay_seconds: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        await self.publish_body(
            encode_task_id(task_id), delay_seconds=delay_seconds, headers=headers
        )

    async def publish_body(
        self,
        body: bytes,
        *,
        delay_seconds: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Enqueue raw bytes, e.g. a malformed message a test wants the processor to meet."""
        delay_ms = delay_milliseconds(delay_seconds)
        if self._closed:
            raise ServiceUnavailable("the task queue is closed")
        # A copy: a broker keeps what was sent, not what the caller's dict becomes.
        message = _Message(body, MappingProxyType(dict(headers)) if headers else _NO_HEADERS)
        if delay_ms == 0:
            self._enqueue(message)
            return
        key = next(self._timer_keys)
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay_ms / 1000, self._due, key, message)

    async def delayed(self) -> int:
        """How many delayed messages are not due yet."""
        return len(self._timers)

    @asynccontextmanager
    async def consume(self, *, prefetch: int) -> AsyncIterator[AsyncIterator[Delivery]]:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        consumer = _MemoryConsumer(self, prefetch)
        self._consumers += 1
        try:
            yield consumer
        finally:
            self._consumers -= 1
            consumer.close()

    async def ping(self) -> None:
        if self._closed:
            raise ServiceUnavailable("the task queue is closed")

    async def depth(self) -> tuple[int, int]:
        return len(self._ready), len(self.dead_letters)

    async def stats(self) -> QueueCounts:
        await self.ping()  # a closed queue cannot say, as a broker that is gone
        return QueueCounts(
            queued=len(self._ready),
            delayed=len(self._timers),
            dead_lettered=len(self.dead_letters),
            consumers=self._consumers,
        )

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._notify()

    @property
    def closed(self) -> bool:
        return self._closed

    def _enqueue(self, message: _Message) -> None:
        self._ready.append(message)
        self._notify()

    def _due(self, key: int, message: _Message) -> None:
        del self._timers[key]
        self._enqueue(message)

    def _notify(self) -> None:
        # Wake every waiter once; each re-checks its own condition against the new state.
        self._changed.set()
        self._changed = asyncio.Event()

    def _give_back(self, messages: list[_Message]) -> None:
        """Return messages to the head of the queue in their order, as a broker does."""
        for message in reversed(messages):
            message.redelivered = True
            message.returns += 1
            if message.returns > self._delivery_limit:
                self.dead_letters.append(message.body)
            else:
                self._ready.appendleft(message)
        self._notify()


class _MemoryConsumer:
    def __init__(self, queue: MemoryTaskQueue, prefetch: int) -> None:
        self._queue = queue
        self._prefetch = prefetch
        # By delivery tag, as in AMQP: a message delivered again is a new delivery, so a stale
        # handle to its previous delivery cannot settle it. Insertion-ordered, so unsettled
        # messages go back in delivery order.
        self._unsettled: dict[int, _Message] = {}
        self._tags = itertools.count(1)
        self._closed = False

    def __aiter__(self) -> _MemoryConsumer:
        return self

    async def __anext__(self) -> Delivery:
        queue = self._queue
        while True:
            if self._closed or queue.closed:
                raise StopAsyncIteration
            if queue._ready and len(self._unsettled) < self._prefetch:
                message = queue._ready.popleft()
                tag = next(self._tags)
                self._unsettled[tag] = message
                return _MemoryDelivery(self, tag, message)
            await queue._changed.wait()

    def settle(self, tag: int, outcome: str) -> None:
        message = self._unsettled.pop(tag, None)
        if message is None:
            log.warning("ignored %s of a delivery that is no longer unsettled", outcome)
            return
        self._queue.settled[outcome] += 1
        if outcome == "requeue":
            self._queue._give_back([message])
        elif outcome == "dead_letter":
            self._queue.dead_letters.append(message.body)
        self._queue._notify()

    def close(self) -> None:
        self._closed = True
        unsettled, self._unsettled = list(self._unsettled.values()), {}
        self._queue._give_back(unsettled)


class _MemoryDelivery:
    __slots__ = ("_consumer", "_message", "_redelivered", "_tag")

    def __init__(self, consumer: _MemoryConsumer, tag: int, message: _Message) -> None:
        self._consumer = consumer
        self._tag = tag
        self._message = message
        self._redelivered = message.redelivered

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def redelivered(self) -> bool:
        return self._redelivered

    @property
    def headers(self) -> Mapping[str, str]:
        return self._message.headers

    async def ack(self) -> None:
        self._consumer.settle(self._tag, "ack")

    async def requeue(self) -> None:
        self._consumer.settle(self._tag, "requeue")

    async def dead_letter(self) -> None:
        self._consumer.settle(self._tag, "dead_letter")


# ---------------------------------------------------------------- factory


@asynccontextmanager
async def open_queue(
    url: str, *, name: str, delivery_limit: int = DELIVERY_LIMIT
) -> AsyncIterator[TaskQueue]:
    """The adapter for `url` (memory:// or amqp[s]://), closed on exit. A memory queue is
    only shared inside one process."""
    queue: MemoryTaskQueue | RabbitTaskQueue
    if is_memory(url):
        queue = MemoryTaskQueue(delivery_limit=delivery_limit)
    elif urlsplit(url).scheme in ("amqp", "amqps"):
        # Imported here: taskwire.rabbitmq builds on this module's codec.
        from taskwire.rabbitmq import RabbitTaskQueue

        queue = RabbitTaskQueue(url, name=name, delivery_limit=delivery_limit)
        await queue.start()
    else:
        raise SettingsError("RABBITMQ_URL must start with amqp://, amqps:// or memory://")
    try:
        yield queue
    finally:
        await queue.close()
