"""Work that fails and messages that make no sense: a poison input is retried with backoff
(through the broker's delay queues) and FAILED after MAX_ATTEMPTS with its error, its message
in the dead-letter queue; a malformed message goes straight to the dead-letter queue, and the
consumer goes on working."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.faults.conftest import FAULT_MARKS, FaultRun
from tests.faults.deployment import POISON_MARKER, TIMINGS
from tests.faults.probes import poll_async

pytestmark = [
    *FAULT_MARKS,
    pytest.mark.timeout(120),
]

BATCH = 24
MAX_ATTEMPTS = int(TIMINGS["MAX_ATTEMPTS"])


async def test_poison_inputs_fail_after_max_attempts_into_the_dead_letter_queue(
    fault: FaultRun,
) -> None:
    plan = fault.plan
    deployment = await fault.deploy()
    traffic = fault.traffic(deployment)
    poison = set(plan.rng.sample(range(1, BATCH + 1), k=plan.randint(3, 6, "poison inputs")))
    plan.note(f"poison task numbers: {sorted(poison)}")

    def text(index: int) -> str:
        return f"{traffic.text(index)} {POISON_MARKER}" if index in poison else traffic.text(index)

    await traffic.submit(BATCH, spacing=0.05, text=text)
    poisoned = {a.task_id for a in traffic.accepted if a.index in poison}

    verdict = await fault.check(deployment, traffic, dead_letters=len(poison))
    verdict.notes["failed_attempts"] = deployment.count_in_logs(r"task \S+ attempt \d+ failed")
    verdict.assert_sound(min_duplicates=0, dead_letters=len(poison))
    rows = await deployment.table.rows()
    for task_id in poisoned:
        row = rows[task_id]
        assert (row.status, row.attempts) == ("FAILED", MAX_ATTEMPTS), row
        assert row.error is not None, row
        assert "poison" in row.error, row
        # Every attempt failed, and was retried until the budget was spent.
        for attempt in range(1, MAX_ATTEMPTS + 1):
            assert deployment.count_in_logs(rf"task {task_id} attempt {attempt} failed") == 1
    dead = [json.loads(body)["task_id"] for body in await deployment.broker.dead_letters()]
    assert sorted(dead) == sorted(poisoned)


MALFORMED = [
    b"",
    b"not json at all",
    b"{}",
    b"[1, 2, 3]",
    b'{"task_id": 42}',
    b'{"task_id": "not-a-uuid-but-exactly-36-characters!"}',
    b"\xff\xfe\x00 binary",
    b'{"task_id": "' + b"7" * 400 + b'"}',
]


async def test_malformed_messages_go_to_the_dead_letter_queue(fault: FaultRun) -> None:
    plan = fault.plan
    deployment = await fault.deploy()
    traffic = fault.traffic(deployment)
    bodies = [*MALFORMED, json.dumps({"task_id": f"{{{uuid.uuid4()}}}"}).encode()]
    trickle = asyncio.create_task(traffic.submit(20, spacing=0.1))
    await traffic.wait_accepted(plan.randint(3, 12, "publish once this many were accepted"))
    for body in bodies:
        await deployment.broker.publish_raw(body)
    plan.note(f"published {len(bodies)} malformed messages straight to {deployment.queue_name}")
    await trickle

    verdict = await fault.check(deployment, traffic, dead_letters=len(bodies))
    verdict.assert_sound(min_duplicates=0, max_duplicates=0, dead_letters=len(bodies))
    assert sorted(await deployment.broker.dead_letters()) == sorted(bodies)
    pattern = r"malformed message sent to the dead-letter queue"
    assert deployment.count_in_logs(pattern) == len(bodies)
    # Both consumers are still there, and still working.
    assert await deployment.broker.consumer_count() == 2
    after = await traffic.submit(4)
    await poll_async(
        deployment.table.rows,
        lambda rows: all(rows[a.task_id].status == "COMPLETED" for a in after),
        timeout=10,
        what="tasks submitted after the malformed messages",
    )
