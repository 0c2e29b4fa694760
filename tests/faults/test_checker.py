"""The checker's own judgement, without servers: a checker that cannot fail proves nothing."""

from __future__ import annotations

import uuid
from typing import Any

from tests.faults.checker import COMPLETED_LINE, REPUBLISHED_LINE, Verdict
from tests.faults.schedule import SEED_VARIABLE, FaultPlan, fault_seed
from tests.faults.traffic import Follower, Session


def update(status: str, version: int) -> dict[str, Any]:
    return {"status": status, "version": version}


def follower(*sessions: tuple[list[dict[str, Any]], str]) -> Follower:
    watcher = Follower(str(uuid.uuid4()), "graphql-transport-ws", "ws://unused")
    watcher.sessions = [Session(updates, ending) for updates, ending in sessions]
    return watcher


def test_versions_that_only_grow_are_fine_also_across_a_resubscription() -> None:
    watcher = follower(
        ([update("PENDING", 1), update("PROCESSING", 2)], "error SERVICE_UNAVAILABLE"),
        # A new session starts with the current snapshot, which may repeat the last one seen.
        ([update("PROCESSING", 2), update("COMPLETED", 3)], "completed"),
    )
    assert watcher.backwards() == []
    assert watcher.terminal == update("COMPLETED", 3)
    assert (watcher.dropped, watcher.refused) == (1, 0)


def test_an_older_or_repeated_version_within_a_session_runs_backwards() -> None:
    older = follower(([update("PENDING", 1), update("COMPLETED", 3), update("PROCESSING", 2)], ""))
    repeated = follower(([update("PROCESSING", 2), update("PROCESSING", 2)], "running"))
    older_snapshot = follower(
        ([update("PROCESSING", 2)], "closed ConnectionClosedError"),
        ([update("PENDING", 1)], "running"),
    )
    assert older.backwards() == [(3, 2)]
    assert repeated.backwards() == [(2, 2)]
    assert older_snapshot.backwards() == [(2, 1)]


def test_a_refused_subscription_is_not_a_dropped_one() -> None:
    watcher = follower(
        ([], "error SERVICE_UNAVAILABLE"),
        ([update("PENDING", 1)], "running"),
    )
    assert (watcher.refused, watcher.dropped) == (1, 0)
    assert watcher.terminal is None


def clean() -> Verdict:
    return Verdict("scenario", 1, tasks=10, seconds=1.0, duplicates=2)


def test_a_clean_verdict_passes_and_each_broken_promise_fails_it() -> None:
    clean().assert_sound(min_duplicates=1)
    for name in ("lost", "stuck", "double", "wrong", "missed", "backwards", "late_missed"):
        broken = clean()
        getattr(broken, name).append("some task")
        problems = broken.problems(
            min_duplicates=0, max_duplicates=None, max_dropped=0, dead_letters=0
        )
        assert len(problems) == 1, (name, problems)


def test_the_fault_must_have_exercised_something() -> None:
    options: dict[str, Any] = {"max_duplicates": None, "max_dropped": 0, "dead_letters": 0}
    assert clean().problems(min_duplicates=3, **options)
    assert not clean().problems(min_duplicates=2, **options)
    dropped = clean()
    dropped.dropped = 1
    assert dropped.problems(min_duplicates=0, **options)
    assert not dropped.problems(min_duplicates=0, **{**options, "max_dropped": None})
    assert clean().problems(min_duplicates=0, **{**options, "dead_letters": 1})


def test_the_log_patterns_match_the_processor_lines() -> None:
    task_id = uuid.uuid4()
    line = f"2026-01-01 00:00:00,000 INFO processor.handler: task {task_id} completed on attempt 2"
    match = COMPLETED_LINE.search(line)
    assert match is not None
    assert match.groups() == (str(task_id), "2")
    assert REPUBLISHED_LINE.findall("INFO taskwire.service: dispatcher re-published 7 task(s)") == [
        "7"
    ]


def test_a_plan_replays_from_its_seed_and_scenario() -> None:
    first, again, other = (FaultPlan(42, "a"), FaultPlan(42, "a"), FaultPlan(42, "b"))
    draws = [plan.uniform(0, 100, "x") for plan in (first, again, other)]
    assert draws[0] == draws[1] != draws[2]
    assert fault_seed({SEED_VARIABLE: "1234"}) == (1234, True)
    seed, given = fault_seed({})
    assert not given
    assert 0 <= seed < 10**6
