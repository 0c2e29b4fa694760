from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from taskwire.models import (
    TERMINAL,
    TRANSITIONS,
    Task,
    TaskStatus,
    backoff_seconds,
    can_transition,
)


def make_task(**changes: object) -> Task:
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    task = Task(
        id=uuid4(),
        status=TaskStatus.PENDING,
        input_data="héllo ✓",
        result=None,
        error=None,
        attempts=0,
        version=1,
        created_at=now,
        updated_at=now,
    )
    return task.evolve(**changes)


def test_snapshot_round_trips_through_json() -> None:
    task = make_task(
        status=TaskStatus.COMPLETED,
        result="✓ olléh",
        attempts=1,
        version=3,
        started_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        finished_at=datetime(2026, 1, 2, 3, 4, 11, tzinfo=UTC),
    )
    assert Task.from_json(task.to_json()) == task
    assert Task.from_json(task.to_json().encode()) == task


@pytest.mark.parametrize(
    "raw",
    ["", "[]", "null", '{"id": "x"}', "{", '{"id": "not-a-uuid", "status": "PENDING"}'],
)
def test_malformed_snapshots_are_refused(raw: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        Task.from_json(raw)


def test_terminal_states_have_no_way_forward_but_retry() -> None:
    assert {TaskStatus.COMPLETED, TaskStatus.CANCELLED} == {
        s for s in TERMINAL if not TRANSITIONS[s]
    }
    assert TRANSITIONS[TaskStatus.FAILED] == {TaskStatus.PENDING}
    assert all(s.terminal == (s in TERMINAL) for s in TaskStatus)


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        (TaskStatus.PENDING, TaskStatus.PROCESSING, True),
        (TaskStatus.PENDING, TaskStatus.COMPLETED, False),
        (TaskStatus.PROCESSING, TaskStatus.COMPLETED, True),
        (TaskStatus.PROCESSING, TaskStatus.PROCESSING, True),
        (TaskStatus.COMPLETED, TaskStatus.PROCESSING, False),
        (TaskStatus.CANCELLED, TaskStatus.PENDING, False),
    ],
)
def test_transitions(source: TaskStatus, target: TaskStatus, allowed: bool) -> None:
    assert can_transition(source, target) is allowed


def test_newer_than_compares_versions() -> None:
    old = make_task(version=2)
    assert old.evolve(version=3).newer_than(old)
    assert not old.newer_than(old)
    assert old.newer_than(None)


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (1, 0.0, 0.5),  # base 1 s, lower half of the jitter range
        (1, 0.999999, 1.0),
        (2, 0.0, 1.0),
        (3, 0.5, 3.0),  # 4 s ceiling, three quarters of it
        (10, 0.0, 30.0),  # capped at 60 s
        (10_000, 0.0, 30.0),  # a huge attempt number neither overflows nor passes the cap
    ],
)
def test_backoff_is_exponential_capped_and_jittered(
    attempt: int, jitter: float, expected: float
) -> None:
    assert backoff_seconds(attempt, base=1.0, cap=60.0, jitter=jitter) == pytest.approx(expected)


def test_snapshots_from_before_attempt_limits_still_decode() -> None:
    task = make_task()
    legacy = task.to_json().replace(',"attempt_limit":3', "")
    assert "attempt_limit" not in legacy
    assert Task.from_json(legacy) == task


def test_the_json_snapshot_carries_every_field() -> None:
    task = Task(
        id=uuid4(),
        status=TaskStatus.PENDING,
        input_data="x",
        result=None,
        error=None,
        attempts=0,
        version=1,
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
        owner="alice",
    )

    public = {field.name for field in dataclasses.fields(Task) if not field.name.startswith("_")}
    assert set(json.loads(task.to_json())) == public


def test_the_json_is_made_once_and_a_changed_copy_makes_its_own() -> None:
    task = make_task(version=1)
    encoded = task.to_json()
    assert task.to_json() is encoded
    changed = task.evolve(version=2, status=TaskStatus.PROCESSING)
    assert json.loads(changed.to_json())["version"] == 2
    assert json.loads(changed.to_json())["status"] == "PROCESSING"
    assert changed != task
    assert Task.from_json(encoded) == task  # the cached text is not part of the value
