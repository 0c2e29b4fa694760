"""The task and its state machine. Pure: no I/O, no clock, no framework."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# Every edge a task may take. PROCESSING -> PROCESSING is a takeover after an expired
# lease (a new attempt); PROCESSING -> PENDING is a worker handing a task back.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.PROCESSING, TaskStatus.CANCELLED}),
    TaskStatus.PROCESSING: frozenset(
        {TaskStatus.PROCESSING, TaskStatus.PENDING, TaskStatus.COMPLETED, TaskStatus.FAILED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING}),
    TaskStatus.CANCELLED: frozenset(),
}


def can_transition(source: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[source]


def backoff_seconds(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """The wait before retrying after failed attempt number `attempt` (1-based): exponential,
    capped, and spread over its upper half by `jitter` in [0, 1) so that tasks failing
    together do not come back together."""
    doublings = min(max(attempt - 1, 0), 32)
    ceiling = min(cap, base * float(2**doublings))
    return ceiling * (0.5 + jitter / 2)


@dataclass(frozen=True, slots=True)
class Task:
    """A snapshot of one task at one version. Events and cache entries carry whole snapshots."""

    id: UUID
    status: TaskStatus
    input_data: str
    result: str | None
    error: str | None
    attempts: int
    version: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # How many attempts this task may have in all; a retry raises it.
    attempt_limit: int = 3
    # The `sub` of the token that created it; "" for tasks from before owners existed, which
    # only an unrestricted (AUTH_MODE=none) caller sees.
    owner: str = ""
    # to_json's answer, made on first use: a transition's snapshot is written to the cache and
    # published as an event, the same JSON twice. Not part of the value.
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def newer_than(self, other: Task | None) -> bool:
        return other is None or self.version > other.version

    def to_json(self) -> str:
        if self._json is not None:
            return self._json
        encoded = self._encode()
        object.__setattr__(self, "_json", encoded)  # a cache on a frozen value
        return encoded

    def _encode(self) -> str:
        # Built by hand: dataclasses.asdict deep-copies every field, a measurable share of a
        # processor's CPU per task (every transition is cached and published as JSON).
        data: dict[str, Any] = {
            "id": str(self.id),
            "status": self.status.value,
            "input_data": self.input_data,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "started_at": _optional_iso(self.started_at),
            "finished_at": _optional_iso(self.finished_at),
            "attempt_limit": self.attempt_limit,
            "owner": self.owner,
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Task:
        """Decode a snapshot; raises ValueError (or KeyError/TypeError) on anything malformed."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a task snapshot must be a JSON object")
        return cls(
            id=UUID(data["id"]),
            status=TaskStatus(data["status"]),
            input_data=str(data["input_data"]),
            result=data["result"],
            error=data["error"],
            attempts=int(data["attempts"]),
            version=int(data["version"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
            started_at=_optional_time(data["started_at"]),
            finished_at=_optional_time(data["finished_at"]),
            attempt_limit=int(data.get("attempt_limit", 3)),
            owner=str(data.get("owner", "")),
        )

    def evolve(self, **changes: Any) -> Task:
        return replace(self, **changes)


def _optional_iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _optional_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None
