"""An API process dies between createTask's commit and its publish (the test-only crash point):
the committed task nobody was told about is in the outbox, the dispatcher publishes it, and a
client retrying with the same idempotency key gets that same task, never a second one."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.faults.conftest import FAULT_MARKS, FaultRun
from tests.faults.probes import poll
from tests.support.processes import free_port

pytestmark = [
    *FAULT_MARKS,
    pytest.mark.timeout(120),
]

BATCH = 30
SPACING = 0.1
CRASH_EXIT_CODE = 70  # what the crash point's os._exit uses


async def test_api_killed_between_commit_and_publish(fault: FaultRun) -> None:
    plan = fault.plan
    deployment = await fault.deploy()
    traffic = fault.traffic(deployment)
    # The batch goes to the main API and is followed there; a burst goes to a second API
    # process that has the crash point armed.
    trickle = asyncio.create_task(traffic.submit(BATCH, spacing=SPACING))
    port = free_port()
    crashing = await deployment.launch_api("api-crash", port, {"CRASH_POINT": "after_commit"})
    via = f"http://127.0.0.1:{port}/graphql"
    await traffic.wait_accepted(plan.randint(5, 15, "burst once this many tasks were accepted"))
    size = plan.randint(3, 8, "concurrent createTask calls sent to the crashing API")
    burst = asyncio.create_task(
        traffic.submit_together(size, via=via, text=lambda i: f"burst {traffic.text(i)}")
    )
    await poll(lambda: crashing.running, lambda running: not running, timeout=20, what="crash")
    assert crashing.process is not None
    assert crashing.process.returncode == CRASH_EXIT_CODE, crashing.log_tail()
    rows = await deployment.table.rows()
    # Nobody can have been answered by then: the first commit ends the process.
    orphans = {r.id: r for r in rows.values() if r.input_data.startswith("burst ")}
    plan.note(f"api-crash died (exit {crashing.process.returncode}); {len(orphans)} committed")
    assert orphans, "the crash point fired before any commit"

    await asyncio.sleep(plan.uniform(0.3, 2.0, "seconds before the API is restarted"))
    await deployment.launch_api("api-restarted", port)
    plan.note("API restarted without the crash point; clients retry with their keys")
    await asyncio.gather(burst, trickle)

    verdict = await fault.check(deployment, traffic, all_rows=True)
    verdict.notes["committed_unanswered"] = len(orphans)
    # The retry of an idempotent create publishes nothing, so no duplicate is expected: the
    # dispatcher alone must have put the orphans on the queue.
    verdict.assert_sound(min_duplicates=0)
    assert verdict.republished >= len(orphans), "the dispatcher did not publish the orphans"

    rows = await deployment.table.rows()
    keys = Counter(row.idempotency_key for row in rows.values())
    assert all(count == 1 for count in keys.values()), keys.most_common(3)
    assert len(rows) == len(traffic.accepted), "a row that no client was ever given"
    by_key = {a.key: a.task_id for a in traffic.accepted}
    for orphan in orphans.values():
        # The retry with the same key returned the task committed before the crash.
        assert by_key[str(orphan.idempotency_key)] == orphan.id
        assert rows[orphan.id].status == "COMPLETED"
