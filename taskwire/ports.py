"""The ports the core talks to. Each has a real adapter and a memory adapter that pass the
same contract tests (tests/contract/). Adapters are picked by URL in bootstrap.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol, final
from uuid import UUID

from taskwire.models import Task


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """Tasks by status over every owner, as one statement read them (TaskStore.stats)."""

    pending: int
    processing: int
    completed: int
    failed: int
    cancelled: int
    # created_at of the oldest PENDING task (a retried task keeps its creation time); None
    # when no task is PENDING.
    oldest_pending_at: datetime | None
    # The store's clock right after the read: ages computed from it agree with the counts.
    as_of: datetime


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """What the work queue says about itself (TaskQueue.stats): messages, not tasks."""

    # Ready in the main queue; delivered but not yet settled ones are not counted.
    queued: int
    # Waiting out a retry's backoff in the delay queues.
    delayed: int
    dead_lettered: int
    consumers: int


class TaskStore(Protocol):
    """The source of truth. Every state change is one conditional UPDATE; a method that cannot
    apply its transition returns None and changes nothing."""

    async def create(
        self,
        input_data: str,
        *,
        attempt_limit: int,
        idempotency_key: str | None = None,
        owner: str = "",
    ) -> tuple[Task, bool]:
        """Insert a PENDING task of `owner`, version 1, attempts 0, due for re-dispatch after the
        grace; returns (task, True). With an idempotency key that `owner` already used, inserts
        nothing and returns (the existing task, False), also under concurrent identical calls (one
        INSERT ... ON CONFLICT DO NOTHING, then a read); the caller compares the inputs."""

    async def get(self, task_id: UUID) -> Task | None: ...

    async def claim(self, task_id: UUID, *, worker: str, lease_seconds: float) -> Task | None:
        """PENDING -> PROCESSING, or take over a PROCESSING task whose lease has expired:
        attempts+1, version+1, started_at=now, lease to `worker` until now+lease_seconds, and
        dispatch_after = the lease expiry (so the dispatcher looks again only once it lapsed).
        A task whose attempts already reached attempt_limit is not claimed but given up in
        the same statement: -> FAILED with an error saying so (the caller dead-letters)."""

    async def complete(self, task_id: UUID, *, attempt: int, result: str) -> Task | None:
        """PROCESSING -> COMPLETED, only if `attempt` is still the current attempt (the fence)."""

    async def fail(self, task_id: UUID, *, attempt: int, error: str) -> Task | None:
        """PROCESSING -> FAILED, fenced like complete()."""

    async def retry_later(
        self, task_id: UUID, *, attempt: int, error: str, delay_seconds: float
    ) -> Task | None:
        """PROCESSING -> PENDING after a failed attempt, fenced like complete(): keeps `error`
        as the last error, clears the lease, dispatch_after = now + delay_seconds + the grace
        (the delay queue brings it back first; the dispatcher is the backstop)."""

    async def cancel(self, task_id: UUID) -> Task | None:
        """PENDING -> CANCELLED (finished_at = now)."""

    async def retry(self, task_id: UUID, *, extra_attempts: int) -> Task | None:
        """FAILED -> PENDING with a new budget: attempt_limit = attempts + extra_attempts
        (attempts never decrease: they are the fence); clears result, error and finished_at;
        due for dispatch after the grace."""

    async def release(self, task_id: UUID, *, attempt: int) -> Task | None:
        """PROCESSING -> PENDING (hand a task back, e.g. at shutdown), fenced like complete()."""

    async def heartbeat(self, task_id: UUID, *, attempt: int, lease_seconds: float) -> bool:
        """Extend the lease (and dispatch_after with it) of the current attempt; False if the
        attempt lost the task."""

    async def due_for_dispatch(self, *, limit: int, grace_seconds: float) -> list[UUID]:
        """Ids of tasks past their dispatch deadline (dispatch_after <= now) that are PENDING, or
        PROCESSING with an expired lease; pushes their deadline `grace_seconds` ahead so that
        concurrent dispatchers (FOR UPDATE SKIP LOCKED) and later runs do not pick them again."""

    async def defer_dispatch(self, task_id: UUID, *, seconds: float) -> None:
        """Set the dispatch deadline to now+seconds (no version bump: not a state change).
        Called once the publish of a new task was confirmed, so the dispatcher leaves it alone."""

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""

    async def stats(self) -> TaskCounts:
        """Tasks by status (every owner) and the oldest PENDING one's creation, in one
        statement; ServiceUnavailable if the database cannot be reached."""


class TaskCache(Protocol):
    """Read cache of task snapshots. Never replaces a newer version with an older one."""

    async def get(self, task_id: UUID) -> Task | None: ...

    async def put(self, task: Task, *, ttl_seconds: float) -> bool:
        """Store `task` unless a newer version is cached (compare-and-set on version).
        True if stored."""

    async def ping(self) -> None: ...


@final
class Resync:
    """Marker from a subscription: events may have been missed; re-read the current state."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = Resync()


class Subscription(Protocol):
    async def get(self, timeout: float | None = None) -> Task | Resync:
        """The next event for the task; RESYNC after a reconnect, an overflow or a timeout."""


class EventBus(Protocol):
    """Fan-out of task snapshots to every API process (Redis pub/sub or in-process)."""

    async def publish(self, task: Task) -> None: ...

    def subscribe(self, task_id: UUID) -> AbstractAsyncContextManager[Subscription]:
        """Entering returns only once events published from then on will be delivered."""

    async def ping(self) -> None: ...


class Delivery(Protocol):
    """One message from the work queue. Exactly one of the settle methods is called."""

    @property
    def body(self) -> bytes: ...

    @property
    def redelivered(self) -> bool: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The string headers it was published with (the trace context); empty when none."""

    async def ack(self) -> None: ...

    async def requeue(self) -> None:
        """Give the message back to the queue for another delivery."""

    async def dead_letter(self) -> None:
        """Reject without requeue: the message goes to the dead-letter queue."""


class TaskQueue(Protocol):
    """Durable work queue of task ids."""

    async def publish(
        self,
        task_id: UUID,
        *,
        delay_seconds: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Persistent delivery; returns once the broker confirmed it, raises otherwise.
        With a delay, the message reaches consumers only after about that long (a retry's
        backoff), through delay queues on the broker, never a sleeping consumer. `headers`
        travel with the message to its Delivery (the W3C trace context)."""

    def consume(self, *, prefetch: int) -> AbstractAsyncContextManager[AsyncIterator[Delivery]]:
        """Deliveries until the context exits; at most `prefetch` unsettled at once."""

    async def ping(self) -> None: ...

    async def stats(self) -> QueueCounts:
        """Messages ready, delayed and dead-lettered, and consumers on the main queue, as the
        broker reports them now; ServiceUnavailable if it cannot say."""
