"""The shared checker: after a fault, wait until every task is terminal, then count what the
promises forbid (lost, stuck, double effects, missed terminal events, versions running
backwards) and what the fault caused (duplicate deliveries), in one printed line."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.faults.deployment import POISON_MARKER, TIMINGS, FaultDeployment
from tests.faults.probes import Row
from tests.faults.schedule import FaultPlan
from tests.faults.traffic import Traffic, follow_late
from tests.support.client import SUBPROTOCOLS

COMPLETED_LINE = re.compile(r"task ([0-9a-f-]{36}) completed on attempt (\d+)")
DUPLICATE_LINE = r"duplicate delivery of task "
REPUBLISHED_LINE = re.compile(r"dispatcher re-published (\d+) task")
QUIESCENCE_SECONDS = 45.0
# After the last task went terminal, a live subscriber has at most one re-check period (plus
# slack for a loaded machine) to deliver it.
FOLLOWER_GRACE_SECONDS = float(TIMINGS["WATCH_RECHECK_SECONDS"]) + 8.0
LATE_SUBSCRIBERS = 4


def expected_status(input_data: str) -> str:
    return "FAILED" if POISON_MARKER in input_data else "COMPLETED"


@dataclass
class Verdict:
    scenario: str
    seed: int
    tasks: int
    seconds: float
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    double: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    backwards: list[str] = field(default_factory=list)
    late_missed: list[str] = field(default_factory=list)
    create_errors: list[str] = field(default_factory=list)
    subscriber_errors: list[str] = field(default_factory=list)
    duplicates: int = 0
    republished: int = 0
    dropped: int = 0
    refused: int = 0
    dead_letters: int = 0
    create_retries: int = 0
    notes: dict[str, object] = field(default_factory=dict)

    def line(self) -> str:
        notes = "".join(f" {key}={value}" for key, value in self.notes.items())
        return (
            f"{self.scenario}: seed={self.seed} tasks={self.tasks} lost={len(self.lost)} "
            f"stuck={len(self.stuck)} double={len(self.double)} missed={len(self.missed)} "
            f"duplicates={self.duplicates} | republished={self.republished} "
            f"wrong={len(self.wrong)} "
            f"backwards={len(self.backwards)} late_missed={len(self.late_missed)} "
            f"dropped={self.dropped} refused={self.refused} dead_letters={self.dead_letters} "
            f"create_retries={self.create_retries} time={self.seconds:.1f}s{notes}"
        )

    def problems(
        self,
        *,
        min_duplicates: int,
        max_duplicates: int | None,
        max_dropped: int | None,
        dead_letters: int,
    ) -> list[str]:
        found = [
            f"{name}: {items[:5]}"
            for name, items in (
                ("lost", self.lost),
                ("stuck", self.stuck),
                ("double effects", self.double),
                ("wrong outcome", self.wrong),
                ("missed terminal events", self.missed),
                ("versions backwards", self.backwards),
                ("late subscribers without the final state", self.late_missed),
                ("createTask errors", self.create_errors),
                ("subscription errors", self.subscriber_errors),
            )
            if items
        ]
        if self.duplicates < min_duplicates:
            found.append(
                f"the fault caused {self.duplicates} duplicate deliveries (want >= "
                f"{min_duplicates}): it did not exercise redelivery"
            )
        if max_duplicates is not None and self.duplicates > max_duplicates:
            found.append(f"{self.duplicates} duplicate deliveries (want <= {max_duplicates})")
        if max_dropped is not None and self.dropped > max_dropped:
            found.append(f"{self.dropped} live subscriptions dropped (want <= {max_dropped})")
        if self.dead_letters != dead_letters:
            found.append(f"{self.dead_letters} dead letters (want {dead_letters})")
        return found

    def assert_sound(
        self,
        *,
        min_duplicates: int = 1,
        max_duplicates: int | None = None,
        max_dropped: int | None = 0,
        dead_letters: int = 0,
    ) -> None:
        """lost = stuck = double = wrong = missed = backwards = 0, and the fault's own
        expectations: how many duplicate deliveries, dropped subscriptions, dead letters."""
        problems = self.problems(
            min_duplicates=min_duplicates,
            max_duplicates=max_duplicates,
            max_dropped=max_dropped,
            dead_letters=dead_letters,
        )
        assert not problems, f"{self.line()}\n" + "\n".join(problems)


async def wait_for_quiescence(
    deployment: FaultDeployment,
    traffic: Traffic,
    *,
    all_rows: bool,
    timeout: float,
) -> dict[str, Row]:
    """Poll the tasks table until every accepted task (and with `all_rows`, every row) is
    terminal, or the deadline passes; returns the last rows read."""
    wanted = {a.task_id for a in traffic.accepted}
    deadline = time.monotonic() + timeout
    rows: dict[str, Row] = {}
    while True:
        read = await deployment.table.rows_quietly()
        if read is not None:
            rows = read
            ids = wanted | set(rows) if all_rows else wanted
            if all(i in rows and rows[i].terminal for i in ids):
                return rows
        if time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


async def check(
    deployment: FaultDeployment,
    traffic: Traffic,
    plan: FaultPlan,
    *,
    all_rows: bool = False,
    timeout: float = QUIESCENCE_SECONDS,
    expect: Callable[[str], str] = expected_status,
    dead_letters: int = 0,
    late: int = LATE_SUBSCRIBERS,
) -> Verdict:
    """Everything the checker counts, for the tasks `traffic` got accepted (and with
    `all_rows`, for every row in the table: the crash scenarios' commits nobody heard of)."""
    rows = await wait_for_quiescence(deployment, traffic, all_rows=all_rows, timeout=timeout)
    plan.note("quiescent" if _all_terminal(rows, traffic, all_rows) else "deadline passed")
    await traffic.wait_for_followers(FOLLOWER_GRACE_SECONDS)
    accepted = {a.task_id: a for a in traffic.accepted}
    ids = set(accepted) | (set(rows) if all_rows else set())
    verdict = Verdict(plan.scenario, plan.seed, len(ids), plan.elapsed)

    completions = Counter(
        match.group(1) for match in COMPLETED_LINE.finditer(deployment.log_text("processor"))
    )
    verdict.duplicates = deployment.count_in_logs(DUPLICATE_LINE)
    verdict.republished = sum(
        int(n) for n in REPUBLISHED_LINE.findall(deployment.log_text("processor"))
    )
    for task_id in sorted(ids):
        row = rows.get(task_id)
        if row is None:
            verdict.lost.append(f"{task_id} missing")
            continue
        if not row.terminal:
            verdict.lost.append(f"{task_id} {row.status}")
            verdict.stuck.append(
                f"{task_id} {row.status} attempts={row.attempts} lease={row.lease_owner}"
            )
            continue
        if completions[task_id] > 1:
            verdict.double.append(f"{task_id} completed {completions[task_id]} times")
        if row.status == "COMPLETED" and row.result != row.input_data[::-1]:
            verdict.double.append(f"{task_id} result {row.result!r}")
        if row.status != expect(row.input_data):
            verdict.wrong.append(f"{task_id} {row.status} ({row.error})")

    for follower in traffic.followers:
        final = rows.get(follower.task_id)
        seen = follower.terminal
        if seen is None:
            endings = [f"{len(s.updates)} updates, {s.ending}" for s in follower.sessions]
            verdict.missed.append(f"{follower.task_id} ({follower.subprotocol}): {endings}")
        elif final is not None and (seen["status"], seen["version"]) != (
            final.status,
            final.version,
        ):
            verdict.missed.append(
                f"{follower.task_id} ({follower.subprotocol}): ended on {seen['status']} "
                f"v{seen['version']}, the task is {final.status} v{final.version}"
            )
        if backwards := follower.backwards():
            verdict.backwards.append(f"{follower.task_id}: {backwards}")
        verdict.dropped += follower.dropped
        verdict.refused += follower.refused
        verdict.subscriber_errors += follower.unexpected
    failed_sessions = Counter(
        session.ending
        for follower in traffic.followers
        for session in follower.sessions
        if session.ending not in ("completed", "running")
    )
    if failed_sessions:
        verdict.notes["failed_subscriptions"] = dict(failed_sessions)
    verdict.create_errors = list(traffic.errors)
    verdict.create_retries = sum(traffic.retries.values())
    if traffic.retries:
        verdict.notes["retried_on"] = dict(traffic.retries)
    verdict.late_missed = await _late_subscribers(deployment, traffic, rows, late)
    if dead_letters:
        # Dead-lettering is asynchronous (at-least-once): give the expected ones time to land
        # (too few by the deadline shows in the verdict).
        with contextlib.suppress(AssertionError):
            await deployment.broker.wait_for_dead_letters(dead_letters, timeout=15)
    verdict.dead_letters = len(await deployment.broker.dead_letters())
    verdict.seconds = plan.elapsed
    for problem in verdict.stuck[:10] + verdict.missed[:10]:
        plan.note(f"problem: {problem}")
    print(verdict.line(), flush=True)
    return verdict


def _all_terminal(rows: dict[str, Row], traffic: Traffic, all_rows: bool) -> bool:
    ids = {a.task_id for a in traffic.accepted} | (set(rows) if all_rows else set())
    return all(i in rows and rows[i].terminal for i in ids)


async def _late_subscribers(
    deployment: FaultDeployment, traffic: Traffic, rows: dict[str, Row], count: int
) -> list[str]:
    """A subscriber arriving after completion gets exactly the final state, then completion
    (the first and last few tasks, on alternating subprotocols)."""
    sample = traffic.accepted[: count // 2] + traffic.accepted[len(traffic.accepted) - count // 2 :]
    missed = []
    for n, accepted in enumerate({a.task_id: a for a in sample}.values()):
        row = rows.get(accepted.task_id)
        if row is None or not row.terminal:
            continue  # already counted as lost or stuck
        subprotocol = SUBPROTOCOLS[n % len(SUBPROTOCOLS)]
        try:
            updates = await follow_late(deployment.ws_url, accepted.task_id, subprotocol)
        except Exception as exc:
            missed.append(f"{accepted.task_id} ({subprotocol}): {type(exc).__name__}: {exc}")
            continue
        seen = [(u["status"], u["version"]) for u in updates]
        if seen != [(row.status, row.version)]:
            missed.append(f"{accepted.task_id} ({subprotocol}): {seen}, want the final state")
    return missed
