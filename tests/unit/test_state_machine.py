"""Model-based test of the task state machine (hypothesis stateful) on SqlTaskStore over SQLite.

Hypothesis runs random sequences of creates (some with a reused idempotency key), claims by
several workers, duplicate deliveries, finishes by current and by stale attempt holders
(zombies), heartbeats, retries, cancels, lease expiries and dispatcher rounds. Every result is
compared with a model of the TaskStore contract (taskwire/ports.py), and after every step the
stored tasks are checked against invariants that need no model: only allowed transitions, one
version per transition, attempts never shrink nor pass their limit, at most one effect, and
terminal tasks stay put (except a retry of a FAILED one).

A plain sync test: the machine owns a private event loop (asyncio.Runner with its own loop
factory, so it never touches the loop pytest-asyncio set up) and drives the async store on it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from taskwire.db import create_engine, migrate
from taskwire.models import Task, TaskStatus, can_transition
from taskwire.store import SqlTaskStore

T = TypeVar("T")

GRACE = 10.0
MAX_TASKS = 4
WORKERS = st.sampled_from(["w1", "w2", "w3"])
LONGEST_LEASE = 30.0
LEASES = st.sampled_from([1.0, 5.0, LONGEST_LEASE])
# Short steps keep leases alive, long ones expire every lease (and every dispatch deadline).
STEPS = st.sampled_from([0.5, 2.0, 6.0, 45.0])
KEYS = st.none() | st.sampled_from(["k1", "k2", "k3"])
INPUTS = st.text(alphabet="abcxyz", min_size=1, max_size=6)

EXPECTED_PATHS = frozenset(
    {
        "create: key already taken",
        "claim: PENDING -> PROCESSING",
        "claim: PROCESSING -> PROCESSING",  # a takeover after a lost lease
        "claim: PROCESSING -> FAILED",  # the budget is spent: given up
        "duplicate deliveries: 1 won",
        "duplicate deliveries: 0 won",
        "complete: PROCESSING -> COMPLETED",
        "complete: stale attempt refused",
        "fail: PROCESSING -> FAILED",
        "fail: stale attempt refused",
        "retry_later: PROCESSING -> PENDING",
        "retry_later: PROCESSING -> FAILED",  # the last attempt
        "retry_later: stale attempt refused",
        "release: PROCESSING -> PENDING",
        "release: stale attempt refused",
        "heartbeat: renewed",
        "heartbeat: refused",
        "cancel: PENDING -> CANCELLED",
        "retry: FAILED -> PENDING",
        "dispatch: some due",
    }
)

# Deterministic and bounded, so that CI runs the same sequences every time in a few seconds.
# Shrinking is left out: on a machine this size it can take minutes (past the test timeout);
# a failure prints its whole (short) sequence. Add Phase.shrink locally for a minimal one.
SETTINGS = settings(
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
)


class FakeClock:
    """The store's clock; only the advance rule moves it."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Expected:
    """What the contract says a task is now: its snapshot plus what a snapshot does not show."""

    task: Task
    lease_until: datetime | None
    dispatch_after: datetime

    def claimable(self, now: datetime) -> bool:
        if self.task.status is TaskStatus.PENDING:
            return self.task.attempts < self.task.attempt_limit
        expired = self.lease_until is not None and self.lease_until < now
        return self.task.status is TaskStatus.PROCESSING and expired

    def holds(self, attempt: int) -> bool:
        return self.task.status is TaskStatus.PROCESSING and self.task.attempts == attempt


@dataclass(frozen=True)
class Claim:
    """What a worker holds after a claim; stays in the bundle after it went stale."""

    task_id: UUID
    attempt: int
    worker: str


class TaskMachine(RuleBasedStateMachine):
    # Set by the test on a subclass: a migrated database file to copy, where copies go, and
    # a tally of the paths the runs took (so the test can tell it exercised them all).
    template: ClassVar[Path]
    workdir: ClassVar[Path]
    paths: ClassVar[Counter[str]]

    tasks = Bundle("tasks")
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.path = self.workdir / f"run-{uuid4().hex}.db"
        shutil.copyfile(self.template, self.path)
        self.runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        self.clock = FakeClock()
        self.engine = create_engine(f"sqlite+aiosqlite:///{self.path}", pool_size=3)
        self.store = SqlTaskStore(self.engine, dispatch_grace_seconds=GRACE, clock=self.clock)
        self.expected: dict[UUID, Expected] = {}
        self.seen: dict[UUID, Task] = {}  # the stored snapshots after the previous step
        self.keys: dict[str, UUID] = {}
        self.effects: dict[UUID, list[int]] = {}  # attempts whose complete() succeeded
        self.transitions: Counter[UUID] = Counter()  # made by the current step, per task

    def teardown(self) -> None:
        try:
            self.run(self.engine.dispose())
        finally:
            self.runner.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def run(self, job: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(job)

    @property
    def now(self) -> datetime:
        return self.clock.now

    # --- rules ------------------------------------------------------------------------------

    @initialize(target=tasks, inputs=st.lists(INPUTS, min_size=1, max_size=2))
    def first_tasks(self, inputs: list[str]) -> Any:
        # Every run starts with work to do: hypothesis leaves some rules out of some runs
        # (swarm testing), and a run without creates would test nothing.
        return multiple(*(self._create(text, None, 2) for text in inputs))

    @precondition(lambda self: len(self.expected) < MAX_TASKS)
    @rule(target=tasks, input_data=INPUTS, key=KEYS, limit=st.integers(1, 3))
    def create(self, input_data: str, key: str | None, limit: int) -> Any:
        return self._create(input_data, key, limit)

    def _create(self, input_data: str, key: str | None, limit: int) -> Any:
        task, created = self.run(
            self.store.create(input_data, attempt_limit=limit, idempotency_key=key)
        )
        if key is not None and key in self.keys:
            assert created is False
            assert task == self.expected[self.keys[key]].task
            self.paths["create: key already taken"] += 1
            return multiple()
        assert created is True
        assert (task.status, task.version, task.attempts) == (TaskStatus.PENDING, 1, 0)
        assert (task.input_data, task.attempt_limit) == (input_data, limit)
        assert task.created_at == task.updated_at == self.now
        self.expected[task.id] = Expected(task, None, self.now + timedelta(seconds=GRACE))
        self.effects[task.id] = []
        if key is not None:
            self.keys[key] = task.id
        return task.id

    @rule(target=claims, task_id=tasks, worker=WORKERS, lease=LEASES)
    def claim(self, task_id: UUID, worker: str, lease: float) -> Any:
        won = self.run(self.store.claim(task_id, worker=worker, lease_seconds=lease))
        return _held(self._claimed(task_id, [won], lease, [worker]))

    @rule(target=claims, task_id=tasks, workers=st.lists(WORKERS, min_size=2, max_size=3))
    def duplicate_deliveries(self, task_id: UUID, workers: list[str]) -> Any:
        """The same message delivered to several consumers at once."""
        lease = 5.0
        won = self.run(
            _gather(*(self.store.claim(task_id, worker=w, lease_seconds=lease) for w in workers))
        )
        self.paths[f"duplicate deliveries: {sum(task is not None for task in won)} won"] += 1
        return _held(self._claimed(task_id, won, lease, workers))

    @rule(target=claims, task_id=tasks, worker=WORKERS)
    def worker_lost(self, task_id: UUID, worker: str) -> Any:
        """Whoever held the task died or froze: every lease lapses and the message comes back
        to another worker (a takeover, or a give-up once the budget is spent)."""
        self.clock.now += timedelta(seconds=LONGEST_LEASE + 1)
        won = self.run(self.store.claim(task_id, worker=worker, lease_seconds=5.0))
        return _held(self._claimed(task_id, [won], 5.0, [worker]))

    @rule(target=claims, task_id=tasks, worker=WORKERS)
    def failing_attempt(self, task_id: UUID, worker: str) -> Any:
        """What the processor does when the work fails: claim, then ask for a retry later
        (which on the last attempt fails the task)."""
        won = self.run(self.store.claim(task_id, worker=worker, lease_seconds=5.0))
        claim = self._claimed(task_id, [won], 5.0, [worker])
        if claim is not None:
            self.retry_later(claim, delay=0.0)
        return _held(claim)

    def _claimed(
        self, task_id: UUID, results: list[Task | None], lease: float, workers: list[str]
    ) -> Claim | None:
        model = self.expected[task_id]
        winners = [(task, w) for task, w in zip(results, workers, strict=True) if task is not None]
        if not model.claimable(self.now):
            assert winners == []
            return None
        assert len(winners) == 1, "a claimable task is claimed exactly once"
        task, worker = winners[0]
        before = model.task
        if before.attempts < before.attempt_limit:
            self._expect(
                task,
                f"claim: {before.status} -> PROCESSING",
                status=TaskStatus.PROCESSING,
                attempts=before.attempts + 1,
                started_at=self.now,
            )
            model.lease_until = model.dispatch_after = self.now + timedelta(seconds=lease)
            return Claim(task_id, task.attempts, worker)
        # Only a lost worker's task can run out of attempts; its claim gives it up.
        assert before.status is TaskStatus.PROCESSING
        self._expect(
            task,
            "claim: PROCESSING -> FAILED",
            status=TaskStatus.FAILED,
            finished_at=self.now,
            error=f"Gave up after {before.attempts} attempts: the worker running it was lost.",
        )
        model.lease_until = None
        return None

    def _expect(self, outcome: Task | None, path: str, **changes: Any) -> None:
        """The contract says the call just made was a transition: check that the store made
        exactly that one, and record it."""
        assert outcome is not None, f"{path} was refused"
        model = self.expected[outcome.id]
        before = model.task
        model.task = before.evolve(version=before.version + 1, updated_at=self.now, **changes)
        assert outcome == model.task
        _check_change(before, outcome)
        self.transitions[outcome.id] += 1
        self.paths[path] += 1

    @rule(claim=claims)
    def complete(self, claim: Claim) -> None:
        model = self.expected[claim.task_id]
        current = model.holds(claim.attempt)
        answer = model.task.input_data[::-1]
        # A zombie writes something recognisable: if it ever landed, the invariants see it.
        result = answer if current else f"zombie {claim.attempt}: {answer}"
        done = self.run(self.store.complete(claim.task_id, attempt=claim.attempt, result=result))
        if done is not None:
            self.effects[claim.task_id].append(claim.attempt)
        self._finished(
            "complete",
            claim,
            done,
            TaskStatus.COMPLETED,
            result=result,
            error=None,  # a success clears the error an earlier attempt left
            finished_at=self.now,
        )

    @rule(claim=claims)
    def fail(self, claim: Claim) -> None:
        error = f"attempt {claim.attempt} failed"
        failed = self.run(self.store.fail(claim.task_id, attempt=claim.attempt, error=error))
        self._finished("fail", claim, failed, TaskStatus.FAILED, error=error, finished_at=self.now)

    @rule(claim=claims, delay=st.sampled_from([0.0, 3.0, 20.0]))
    def retry_later(self, claim: Claim, delay: float) -> None:
        error = f"attempt {claim.attempt} will be retried"
        waiting = self.run(
            self.store.retry_later(
                claim.task_id, attempt=claim.attempt, error=error, delay_seconds=delay
            )
        )
        task = self.expected[claim.task_id].task
        if task.attempts < task.attempt_limit:
            due = self.now + timedelta(seconds=delay + GRACE)
            self._finished(
                "retry_later", claim, waiting, TaskStatus.PENDING, error=error, dispatch=due
            )
        else:  # the last attempt: it fails the task instead
            self._finished(
                "retry_later", claim, waiting, TaskStatus.FAILED, error=error, finished_at=self.now
            )

    @rule(claim=claims)
    def release(self, claim: Claim) -> None:
        released = self.run(self.store.release(claim.task_id, attempt=claim.attempt))
        model = self.expected[claim.task_id]
        limit = model.task.attempt_limit + 1  # a handed-back attempt is refunded
        self._finished(
            "release", claim, released, TaskStatus.PENDING, dispatch=self.now, attempt_limit=limit
        )

    def _finished(
        self,
        name: str,
        claim: Claim,
        outcome: Task | None,
        status: TaskStatus,
        *,
        dispatch: datetime | None = None,
        **changes: Any,
    ) -> None:
        """Check a transition fenced by the claim's attempt against the model, and apply it."""
        model = self.expected[claim.task_id]
        if not model.holds(claim.attempt):
            assert outcome is None, f"stale attempt {claim.attempt} changed the task"
            self.paths[f"{name}: stale attempt refused"] += 1
            return
        self._expect(outcome, f"{name}: PROCESSING -> {status}", status=status, **changes)
        model.lease_until = None
        if dispatch is not None:
            model.dispatch_after = dispatch

    @rule(claim=claims, lease=LEASES)
    def heartbeat(self, claim: Claim, lease: float) -> None:
        alive = self.run(
            self.store.heartbeat(claim.task_id, attempt=claim.attempt, lease_seconds=lease)
        )
        model = self.expected[claim.task_id]
        assert alive is model.holds(claim.attempt)
        self.paths[f"heartbeat: {'renewed' if alive else 'refused'}"] += 1
        if alive:
            model.lease_until = model.dispatch_after = self.now + timedelta(seconds=lease)

    @rule(task_id=tasks)
    def cancel(self, task_id: UUID) -> None:
        cancelled = self.run(self.store.cancel(task_id))
        model = self.expected[task_id]
        if model.task.status is not TaskStatus.PENDING:
            assert cancelled is None
            return
        self._expect(
            cancelled,
            "cancel: PENDING -> CANCELLED",
            status=TaskStatus.CANCELLED,
            finished_at=self.now,
        )

    @rule(task_id=tasks, extra=st.integers(1, 3))
    def retry(self, task_id: UUID, extra: int) -> None:
        retried = self.run(self.store.retry(task_id, extra_attempts=extra))
        model = self.expected[task_id]
        if model.task.status is not TaskStatus.FAILED:
            assert retried is None
            return
        self._expect(
            retried,
            "retry: FAILED -> PENDING",
            status=TaskStatus.PENDING,
            attempt_limit=model.task.attempts + extra,
            result=None,
            error=None,
            finished_at=None,
        )
        model.dispatch_after = self.now + timedelta(seconds=GRACE)

    @rule(seconds=STEPS)
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += timedelta(seconds=seconds)

    @rule(limit=st.sampled_from([1, 2, 100]), grace=st.sampled_from([1.0, 10.0]))
    def dispatch(self, limit: int, grace: float) -> None:
        returned = self.run(self.store.due_for_dispatch(limit=limit, grace_seconds=grace))
        due = {
            task_id
            for task_id, model in self.expected.items()
            if model.dispatch_after <= self.now and model.claimable(self.now)
        }
        assert len(returned) == len(set(returned)) == min(limit, len(due))
        assert set(returned) <= due, "dispatched a task that was not due"
        # The most overdue go first.
        skipped = due - set(returned)
        if returned and skipped:
            latest = max(self.expected[task_id].dispatch_after for task_id in returned)
            assert latest <= min(self.expected[task_id].dispatch_after for task_id in skipped)
        self.paths[f"dispatch: {'some' if returned else 'none'} due"] += 1
        for task_id in returned:
            self.expected[task_id].dispatch_after = self.now + timedelta(seconds=grace)

    @rule(task_id=tasks, seconds=st.sampled_from([1.0, 30.0]))
    def defer_dispatch(self, task_id: UUID, seconds: float) -> None:
        self.run(self.store.defer_dispatch(task_id, seconds=seconds))
        model = self.expected[task_id]
        if model.claimable(self.now):
            model.dispatch_after = self.now + timedelta(seconds=seconds)

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def stored_tasks_obey_the_state_machine(self) -> None:
        ids = list(self.expected)
        stored = self.run(_gather(*(self.store.get(task_id) for task_id in ids)))
        for task_id, task in zip(ids, stored, strict=True):
            assert task is not None
            assert task == self.expected[task_id].task
            before = self.seen.get(task_id)
            made = self.transitions.pop(task_id, 0)
            if before is not None:
                # Each transition was checked as it happened; across the step, the version
                # moved by exactly their number and nothing else changed.
                assert task.version == before.version + made, "one version per transition"
                if made <= 1:
                    _check_change(before, task)
            _check_task(task, self.effects[task_id])
            self.seen[task_id] = task


def _check_change(before: Task, after: Task) -> None:
    """What may happen to a task in one transition (or none), whatever caused it."""
    assert after.version >= before.version, "the version went backwards"
    assert after.attempts >= before.attempts, "attempts went backwards"
    if after.version == before.version:
        assert after == before, "a change without a new version"
        return
    assert after.version == before.version + 1, "one version per transition"
    assert can_transition(before.status, after.status), f"{before.status} -> {after.status}"
    if before.terminal:
        assert (before.status, after.status) == (TaskStatus.FAILED, TaskStatus.PENDING)
    assert after.updated_at >= before.updated_at


def _check_task(task: Task, effects: list[int]) -> None:
    """What is true of any stored task at any time."""
    assert 0 <= task.attempts <= task.attempt_limit
    assert len(effects) <= 1, "the work took effect twice"
    assert (task.finished_at is not None) == task.terminal
    assert (task.started_at is not None) == (task.attempts > 0)
    if task.status is TaskStatus.COMPLETED:
        assert task.result == task.input_data[::-1], "a stale attempt wrote the result"
        assert effects == [task.attempts]
    else:
        assert task.result is None
        assert effects == []


def _held(claim: Claim | None) -> Any:
    """A rule's return value: the claim for the bundle, or nothing."""
    return multiple() if claim is None else claim


async def _gather(*jobs: Coroutine[Any, Any, T]) -> list[T]:
    return list(await asyncio.gather(*jobs))


def test_task_state_machine(tmp_path: Path) -> None:
    template = tmp_path / "template.db"
    # Migrated once; every run starts from a copy (a migration per run would double the time).
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(migrate(f"sqlite+aiosqlite:///{template}"))

    class Machine(TaskMachine):
        pass

    Machine.template = template
    Machine.workdir = tmp_path
    Machine.paths = Counter()
    run_state_machine_as_test(Machine, settings=SETTINGS)

    # The runs must have gone everywhere that matters: a test that never reached a takeover or
    # a zombie would pass without proving anything (say after a hypothesis upgrade).
    missing = EXPECTED_PATHS - {path for path, count in Machine.paths.items() if count}
    assert not missing, f"never exercised: {sorted(missing)}; took {dict(Machine.paths)}"
