"""PostgreSQL stops at once (as `pg_ctl stop -m immediate` would, or harder: the whole server
is killed) mid-batch and comes back: the API answers SERVICE_UNAVAILABLE meanwhile, the
processors hand their messages back, and every accepted task still finishes once."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.conftest import FAULT_MARKS, FaultRun

pytestmark = [
    *FAULT_MARKS,
    pytest.mark.timeout(120),
]

BATCH = 40
SPACING = 0.1
JUST_CLAIMED_SECONDS = 0.25


@pytest.mark.parametrize(
    ("low", "high", "min_duplicates"),
    [
        # Back before the handed-back message returns (1 s later) and inside the lease of the
        # attempt that could not finish: that redelivery finds the task held, a duplicate.
        pytest.param(0.6, 0.9, 1, id="short"),
        # Longer than the lease: the redone attempt may or may not meet a duplicate.
        pytest.param(2.5, 3.5, 0, id="long", marks=pytest.mark.slow),
    ],
)
async def test_postgres_immediate_stop_and_restart(
    fault: FaultRun, low: float, high: float, min_duplicates: int
) -> None:
    plan = fault.plan
    deployment = await fault.deploy()
    traffic = fault.traffic(deployment)
    trickle = asyncio.create_task(traffic.submit(BATCH, spacing=SPACING))
    await traffic.wait_accepted(plan.randint(8, 20, "stop once this many tasks were accepted"))
    # Work claimed this recently cannot have finished when the server dies a moment later.
    held = await deployment.table.wait_for_processing(within=JUST_CLAIMED_SECONDS)
    postgres = fault.servers.postgres
    await asyncio.to_thread(postgres.kill)
    plan.note(f"postgres killed ({len(traffic.accepted)} accepted, {len(held)} just claimed)")
    await asyncio.sleep(plan.uniform(low, high, "seconds down"))
    await asyncio.to_thread(postgres.start)
    plan.note(f"postgres restarted ({postgres.start_seconds:.1f} s to recover)")
    await trickle

    verdict = await fault.check(deployment, traffic)
    verdict.notes["redone"] = len(held)
    # A live subscription that has to re-read the database while it is down waits for it:
    # none may end early. (A new one during the outage is refused, which is counted apart.)
    verdict.assert_sound(min_duplicates=min_duplicates, max_dropped=0)
    rows = await deployment.table.rows()
    # The attempts in progress could not be finished: each was redone, once.
    assert all(rows[r.id].attempts >= 2 for r in held), [rows[r.id] for r in held]
    assert traffic.retries, "no createTask met the outage"
    assert set(traffic.retries) <= {"SERVICE_UNAVAILABLE"}, traffic.retries
