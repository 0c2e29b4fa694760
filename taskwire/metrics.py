"""Prometheus metrics: one `Metrics` per process, on its own registry, passed down in Services.

Hot paths only call `.inc()` / `.observe()` on label children resolved once here: resolving a
child (`.labels(...)`) takes a lock and a dict lookup on every call. Label values come from
closed sets (task statuses, error codes, a capped set of operation names), so no client can
grow the number of series without bound.

The queue's depth is read from the broker when scraped, not on every task: `refresh_queue()`
reads it at most once per `queue_cache_seconds` (concurrent scrapes share one read) with a short
timeout, and the collector reports that snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from taskwire.models import Task, TaskStatus

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
ANONYMOUS = "anonymous"
OTHER = "other"
OK = "ok"
ERROR = "error"
MAX_OPERATION_NAMES = 100
MAX_OPERATION_NAME_LENGTH = 64
QUEUE_CACHE_SECONDS = 2.0
QUEUE_TIMEOUT_SECONDS = 2.0
HTTP_TIMEOUT_SECONDS = 5.0

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,39}")

# Seconds. Work takes TASK_DELAY_SECONDS (5 s by default) and may wait for retries.
PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# A request is parse + validate + a few statements: milliseconds.
OPERATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
ATTEMPT_BUCKETS = (1, 2, 3, 5, 10, 20)
PROCESSING_OUTCOMES = ("completed", "failed", "retried")
DEAD_LETTER_REASONS = ("failed", "malformed")
REDIS_ERROR_OPERATIONS = ("cache_read", "cache_write", "event_publish")

# Family names the collector reports; Metrics.names() lists them with the rest.
QUEUE_MESSAGES = "taskwire_queue_messages"
QUEUE_CONSUMERS = "taskwire_queue_consumers"
QUEUE_UP = "taskwire_queue_stats_up"


@runtime_checkable
class QueueDepth(Protocol):
    """What the collector reads: both TaskQueue adapters have depth()."""

    async def depth(self) -> tuple[int, int]:
        """Ready messages in the main queue and in the dead-letter queue."""


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    ready: int
    dead: int
    # None when the adapter cannot tell.
    delayed: int | None
    consumers: int | None


class Metrics:
    """Every metric of one process. `registry` is what /metrics exposes."""

    def __init__(
        self,
        *,
        queue_cache_seconds: float = QUEUE_CACHE_SECONDS,
        queue_timeout_seconds: float = QUEUE_TIMEOUT_SECONDS,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Tasks (the API creates and cancels, the processor finishes).
        self.tasks_created = Counter("taskwire_tasks_created", "Tasks created.", registry=r)
        finished = Counter(
            "taskwire_tasks_finished", "Tasks that reached a final status.", ["status"], registry=r
        )
        self.tasks_finished = {s: finished.labels(s.value) for s in TaskStatus if s.terminal}
        processing = Histogram(
            "taskwire_task_processing_seconds",
            "One attempt, from its claim to its finish, by outcome.",
            ["outcome"],
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.processing = {o: processing.labels(o) for o in PROCESSING_OUTCOMES}
        end_to_end = Histogram(
            "taskwire_task_end_to_end_seconds",
            "From creation to a final status, by that status.",
            ["status"],
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.end_to_end = {s: end_to_end.labels(s.value) for s in TaskStatus if s.terminal}
        self.attempts = Histogram(
            "taskwire_task_attempts",
            "Attempts a task took, observed when it completed or failed.",
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "taskwire_task_retries", "Failed attempts scheduled for a retry.", registry=r
        )
        dead = Counter(
            "taskwire_tasks_dead_lettered",
            "Messages sent to the dead-letter queue, by reason.",
            ["reason"],
            registry=r,
        )
        self.dead_lettered = {reason: dead.labels(reason) for reason in DEAD_LETTER_REASONS}
        self.in_flight = Gauge(
            "taskwire_tasks_in_flight", "Deliveries this processor is handling.", registry=r
        )
        self.consuming = Gauge(
            "taskwire_processor_consuming",
            "1 while this processor consumes from the queue.",
            registry=r,
        )
        self.queue_publish_failures = Counter(
            "taskwire_queue_publish_failures",
            "Publishes to RabbitMQ that failed (the dispatcher publishes those tasks later).",
            registry=r,
        )
        # Subscriptions and events (API).
        self.websockets = Gauge("taskwire_websockets_open", "Open websockets.", registry=r)
        self.subscriptions = Gauge(
            "taskwire_subscriptions_active", "Running taskUpdated subscriptions.", registry=r
        )
        self.events_published = Counter(
            "taskwire_events_published", "Task events published to subscribers.", registry=r
        )
        self.events_delivered = Counter(
            "taskwire_events_delivered",
            "Task updates sent to subscribers after their first snapshot.",
            registry=r,
        )
        reads = Counter(
            "taskwire_cache_reads", "Task cache reads, by result.", ["result"], registry=r
        )
        self.cache_hits = reads.labels("hit")
        self.cache_misses = reads.labels("miss")
        redis_errors = Counter(
            "taskwire_redis_errors",
            "Redis calls that failed and were worked around, by operation.",
            ["operation"],
            registry=r,
        )
        self.redis_errors = {op: redis_errors.labels(op) for op in REDIS_ERROR_OPERATIONS}
        # GraphQL (API).
        self.rate_limited = Counter(
            "taskwire_rate_limited_requests",
            "createTask calls refused by the rate limit.",
            registry=r,
        )
        self._operations = Counter(
            "taskwire_graphql_operations",
            "GraphQL operations by name and outcome (ok or the first error's code).",
            ["operation", "outcome"],
            registry=r,
        )
        self._operation_seconds = Histogram(
            "taskwire_graphql_operation_duration_seconds",
            "Queries and mutations from parse to result, by name (subscriptions excluded).",
            ["operation"],
            buckets=OPERATION_BUCKETS,
            registry=r,
        )
        self._operation_names = OperationNames()
        self._operation_children: dict[tuple[str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self.queue = QueueCollector(
            cache_seconds=queue_cache_seconds, timeout_seconds=queue_timeout_seconds
        )
        r.register(self.queue)

    # -- tasks ---------------------------------------------------------------------------------

    def task_finished(self, task: Task) -> None:
        """A task reached a final status: count it, and how long it took from creation."""
        status = task.status
        counter = self.tasks_finished.get(status)
        if counter is None:
            return
        counter.inc()
        if task.finished_at is not None:
            self.end_to_end[status].observe(_seconds(task.finished_at - task.created_at))
        if status is not TaskStatus.CANCELLED:
            self.attempts.observe(task.attempts)

    def attempt_finished(self, claimed: Task, after: Task, outcome: str) -> None:
        """One attempt ended (`outcome` in PROCESSING_OUTCOMES): claim to finish, on the
        database's clock (both timestamps are its now())."""
        if claimed.started_at is None:
            return
        ended = after.finished_at or after.updated_at
        self.processing[outcome].observe(_seconds(ended - claimed.started_at))

    def track_in_flight(self, deliveries: Sized) -> None:
        """Report len(deliveries) at each scrape: nothing to count on the hot path."""
        self.in_flight.set_function(lambda: len(deliveries))

    # -- GraphQL ---------------------------------------------------------------------------

    def operation(self, name: str | None, outcome: str, seconds: float | None) -> None:
        """One GraphQL operation ended; `seconds` is None for a subscription (its lifetime is
        not a latency)."""
        label = self._operation_names.label(name)
        key = (label, outcome)
        counter = self._operation_children.get(key)
        if counter is None:
            counter = self._operations.labels(label, _outcome(outcome))
            self._operation_children[key] = counter
        counter.inc()
        if seconds is None:
            return
        histogram = self._duration_children.get(label)
        if histogram is None:
            histogram = self._operation_seconds.labels(label)
            self._duration_children[label] = histogram
        histogram.observe(seconds)

    # -- exposition ------------------------------------------------------------------------

    async def exposition(self) -> bytes:
        """The text format of every metric, with a fresh enough queue snapshot."""
        await self.queue.refresh()
        return generate_latest(self.registry)

    def series_names(self) -> set[str]:
        """Every series name this process can expose (`x_total`, `x_bucket`, ...), for checking
        the names that dashboards and alerts use."""
        names = {QUEUE_MESSAGES, QUEUE_CONSUMERS, QUEUE_UP}
        for family in self.registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        return names


class OperationNames:
    """Operation names as label values, bounded: no name -> "anonymous"; a name that is not a
    GraphQL name, is longer than 64 characters, or arrives after 100 distinct names -> "other"."""

    def __init__(self, limit: int = MAX_OPERATION_NAMES) -> None:
        self._limit = limit
        self._known: dict[str, str] = {}

    def label(self, name: str | None) -> str:
        if not name:
            return ANONYMOUS
        known = self._known.get(name)
        if known is not None:
            return known
        if (
            len(name) > MAX_OPERATION_NAME_LENGTH
            or len(self._known) >= self._limit
            or not _NAME.fullmatch(name)
        ):
            return OTHER
        self._known[name] = name
        return name


def _outcome(outcome: str) -> str:
    return outcome if outcome == OK or _CODE.fullmatch(outcome) else ERROR


def _seconds(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())


class QueueCollector(Collector):
    """The broker's view of the queue, read at scrape time and cached for a short while."""

    def __init__(self, *, cache_seconds: float, timeout_seconds: float) -> None:
        self._cache_seconds = cache_seconds
        self._timeout_seconds = timeout_seconds
        self._source: QueueDepth | None = None
        self._snapshot: QueueSnapshot | None = None
        self._read_at = -float("inf")
        self._up = False
        self._lock = asyncio.Lock()
        self._clock: Callable[[], float] = time.monotonic

    def watch(self, queue: object) -> None:
        """Read `queue` from now on (a queue without depth() is not reported)."""
        self._source = queue if isinstance(queue, QueueDepth) else None

    async def refresh(self) -> None:
        source = self._source
        if source is None or self._clock() - self._read_at < self._cache_seconds:
            return
        async with self._lock:  # a scrape storm waits for one read instead of making its own
            if self._clock() - self._read_at < self._cache_seconds:
                return
            try:
                async with asyncio.timeout(self._timeout_seconds):
                    self._snapshot = await _read(source)
                self._up = True
            except Exception:  # a scrape must answer whatever the broker does
                # The last snapshot would be a lie: report the queue as unknown instead.
                self._snapshot = None
                self._up = False
            self._read_at = self._clock()

    def collect(self) -> Iterable[Metric]:
        if self._source is None:
            return
        up = GaugeMetricFamily(QUEUE_UP, "1 if the last read of the queue's depth succeeded.")
        up.add_metric([], 1.0 if self._up else 0.0)
        yield up
        snapshot = self._snapshot
        if snapshot is None:
            return
        messages = GaugeMetricFamily(
            QUEUE_MESSAGES, "Messages waiting in the task queues, by queue.", labels=["queue"]
        )
        messages.add_metric(["ready"], snapshot.ready)
        messages.add_metric(["dead_letter"], snapshot.dead)
        if snapshot.delayed is not None:
            messages.add_metric(["delayed"], snapshot.delayed)
        yield messages
        if snapshot.consumers is not None:
            consumers = GaugeMetricFamily(QUEUE_CONSUMERS, "Consumers of the main task queue.")
            consumers.add_metric([], snapshot.consumers)
            yield consumers

    def describe(self) -> Iterable[Metric]:
        # Nothing to read at registration: an empty description keeps register() from calling
        # collect() (which would report a queue not read yet).
        return []


async def _read(source: QueueDepth) -> QueueSnapshot:
    # stats() (TaskQueue's, with delayed messages and consumers) where the adapter has it.
    stats = getattr(source, "stats", None)
    if stats is None:
        ready, dead = await source.depth()
        return QueueSnapshot(ready=ready, dead=dead, delayed=None, consumers=None)
    counts = await stats()
    return QueueSnapshot(
        ready=int(counts.queued),
        dead=int(counts.dead_lettered),
        delayed=int(counts.delayed),
        consumers=int(counts.consumers),
    )


@asynccontextmanager
async def serving(metrics: Metrics, host: str, port: int) -> AsyncIterator[int | None]:
    """Serve GET /metrics on host:port for a process without an HTTP server (the processor);
    yields the bound port (None when port is 0: off). On the event loop rather than in
    prometheus_client's thread, so the queue read stays async; closed on exit."""
    if port == 0:
        yield None
        return
    try:
        server = await asyncio.start_server(
            lambda reader, writer: _answer(metrics, reader, writer), host, port, limit=16 * 1024
        )
    except OSError as exc:
        # Metrics are for watching the work, not a reason to stop doing it (e.g. two
        # processors on one host with the same METRICS_PORT).
        log.warning("metrics not served on %s:%d: %s", host, port, exc)
        server = None
    # Two processes binding one port at the same instant can both bind (SO_REUSEADDR) and the
    # loser then fails in listen(), which uvloop reports by a server whose socket is None, not
    # by raising (seen in the fault suite: two processors starting together on the default
    # port; reproduced in 31 of 60 simultaneous starts).
    sockets = [] if server is None else [s for s in server.sockets or () if s is not None]
    if server is not None and not sockets:
        log.warning("metrics not served on %s:%d: the port did not listen", host, port)
        server.close()
    if server is None or not sockets:
        yield None
        return
    bound = int(sockets[0].getsockname()[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()


async def _answer(
    metrics: Metrics, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        async with asyncio.timeout(HTTP_TIMEOUT_SECONDS):
            head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, body, kind = "405 Method Not Allowed", b"Only GET.\n", "text/plain"
            elif path != b"/metrics":
                status, body, kind = "404 Not Found", b"See /metrics.\n", "text/plain"
            else:
                status, body, kind = "200 OK", await metrics.exposition(), CONTENT_TYPE
            head_out = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            writer.write(head_out if method == b"HEAD" else head_out + body)
            await writer.drain()
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass  # a client that goes away or never finishes its request gets nothing
    finally:
        writer.close()
