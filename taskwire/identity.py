"""Who is asking, and what they may see. Pure: the tokens that prove it are in taskwire.tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from taskwire.models import Task

# The owner of every task created with AUTH_MODE=none (local use, one user).
LOCAL_SUBJECT = "local"


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller of one request or websocket connection.

    `subject` is the token's `sub`: it owns the tasks it creates. A watch token narrows the
    principal to reading one task (`task_id`). `unrestricted` is AUTH_MODE=none: one local user
    who sees every task, whoever created it.
    """

    subject: str
    expires_at: datetime | None = None
    task_id: UUID | None = None
    unrestricted: bool = False

    @classmethod
    def local(cls) -> Principal:
        return cls(subject=LOCAL_SUBJECT, unrestricted=True)

    @classmethod
    def watcher(cls, subject: str, task_id: UUID, expires_at: datetime) -> Principal:
        return cls(subject=subject, expires_at=expires_at, task_id=task_id)

    @property
    def may_write(self) -> bool:
        """Create, cancel and retry; a watch token may only read its task."""
        return self.task_id is None

    def may_read(self, task: Task) -> bool:
        if self.unrestricted:
            return True
        if self.task_id is not None and task.id != self.task_id:
            return False
        return task.owner == self.subject

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at
