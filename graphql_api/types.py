"""The GraphQL shapes of the core model."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import strawberry

from graphql_api.context import Info
from taskwire.models import Task, TaskStatus
from taskwire.stats import QueueStats

# Registers the core enum with Strawberry under its own name (in place, no copy).
strawberry.enum(TaskStatus, name="TaskStatus")


def _watch_token(root: TaskType, info: Info) -> str | None:
    # Minted only when a client asks for the field.
    context = info.context
    return context.auth.watch_token(context.caller, root.owner, UUID(root.id))


@strawberry.type(name="Task", description="A unit of work and its current state.")
class TaskType:
    id: strawberry.ID = strawberry.field(description="A UUID.")
    status: TaskStatus
    input_data: str
    result: str | None = strawberry.field(description="The reversed input once COMPLETED.")
    error: str | None = strawberry.field(description="Why, once FAILED.")
    attempts: int
    attempt_limit: int = strawberry.field(
        description="How many attempts the task may have in all; retryTask raises it."
    )
    version: int = strawberry.field(
        description="1 at creation, +1 on every change; events carry it."
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    watch_token: str | None = strawberry.field(
        resolver=_watch_token,
        description=(
            "A short-lived token that can only read and subscribe to this task, for a page that "
            "should not hold the user's token. Given to the task's owner only; null otherwise "
            "(and without AUTH_MODE=jwt)."
        ),
    )
    owner: strawberry.Private[str] = ""

    @classmethod
    def from_model(cls, task: Task) -> TaskType:
        return cls(
            id=strawberry.ID(str(task.id)),
            status=task.status,
            input_data=task.input_data,
            result=task.result,
            error=task.error,
            attempts=task.attempts,
            attempt_limit=task.attempt_limit,
            version=task.version,
            created_at=task.created_at,
            updated_at=task.updated_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
            owner=task.owner,
        )


@strawberry.input(name="CreateTaskInput")
class CreateTaskInput:
    input_data: str = strawberry.field(description="The text to process.")
    idempotency_key: str | None = strawberry.field(
        default=None,
        description=(
            "Makes retrying safe: the same key with the same input returns the task it first "
            "created; with a different input it is a CONFLICT error."
        ),
    )


_QUEUE_FIELD = "Null when brokerReachable is false."


@strawberry.type(
    name="QueueStats",
    description=(
        "Operators' numbers. Task counts come from the database and cover every owner's tasks "
        "(counts only, no task's content); the queue fields come from the work queue."
    ),
)
class QueueStatsType:
    pending: int = strawberry.field(description="Tasks waiting for a worker (or a retry).")
    processing: int = strawberry.field(description="Tasks a worker holds now.")
    completed: int
    failed: int
    cancelled: int
    oldest_pending_age: float | None = strawberry.field(
        description=(
            "Seconds since the oldest PENDING task was created (a retried task counts from its "
            "creation); null when no task is PENDING."
        )
    )
    broker_reachable: bool = strawberry.field(
        description=(
            "Whether the work queue answered. When it did not, the queue fields are null and "
            "the task counts are still given (no error): the database is the truth."
        )
    )
    queued: int | None = strawberry.field(
        description=f"Messages ready in the main queue, not yet delivered. {_QUEUE_FIELD}"
    )
    delayed: int | None = strawberry.field(
        description=f"Retries waiting out their backoff in the delay queues. {_QUEUE_FIELD}"
    )
    dead_lettered: int | None = strawberry.field(
        description=f"Messages in the dead-letter queue. {_QUEUE_FIELD}"
    )
    consumers: int | None = strawberry.field(
        description=f"Consumers (processors) on the main queue. {_QUEUE_FIELD}"
    )
    as_of: datetime = strawberry.field(description="When the database counts were read.")

    @classmethod
    def from_model(cls, stats: QueueStats) -> QueueStatsType:
        tasks, queue = stats.tasks, stats.queue
        return cls(
            pending=tasks.pending,
            processing=tasks.processing,
            completed=tasks.completed,
            failed=tasks.failed,
            cancelled=tasks.cancelled,
            oldest_pending_age=stats.oldest_pending_age,
            broker_reachable=stats.broker_reachable,
            queued=queue.queued if queue else None,
            delayed=queue.delayed if queue else None,
            dead_lettered=queue.dead_lettered if queue else None,
            consumers=queue.consumers if queue else None,
            as_of=stats.as_of,
        )
