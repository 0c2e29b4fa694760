"""The GraphQL shapes of the core model."""

from __future__ import annotations

from datetime import datetime

import strawberry

from taskwire.models import Task, TaskStatus

# Registers the core enum with Strawberry under its own name (in place, no copy).
strawberry.enum(TaskStatus, name="TaskStatus")


@strawberry.type(name="Task", description="A unit of work and its current state.")
class TaskType:
    id: strawberry.ID = strawberry.field(description="A UUID.")
    status: TaskStatus
    input_data: str
    result: str | None = strawberry.field(description="The reversed input once COMPLETED.")
    error: str | None = strawberry.field(description="Why, once FAILED.")
    attempts: int
    version: int = strawberry.field(
        description="1 at creation, +1 on every change; events carry it."
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_model(cls, task: Task) -> TaskType:
        return cls(
            id=strawberry.ID(str(task.id)),
            status=task.status,
            input_data=task.input_data,
            result=task.result,
            error=task.error,
            attempts=task.attempts,
            version=task.version,
            created_at=task.created_at,
            updated_at=task.updated_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
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
