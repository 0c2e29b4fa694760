"""Task snapshots for tests that need one without a store."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from taskwire.models import Task, TaskStatus


def make_task(version: int = 1, task_id: UUID | None = None, **changes: object) -> Task:
    now = datetime.now(UTC)
    task = Task(
        id=task_id or uuid4(),
        status=TaskStatus.PENDING,
        input_data="hello",
        result=None,
        error=None,
        attempts=0,
        version=version,
        created_at=now,
        updated_at=now,
    )
    return task.evolve(**changes)
