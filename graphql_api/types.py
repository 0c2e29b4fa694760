"""The GraphQL shapes of the core model."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import strawberry

from graphql_api.context import Info
from taskwire.models import Task, TaskStatus

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
