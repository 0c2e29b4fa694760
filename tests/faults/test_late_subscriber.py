"""A subscriber that arrives after the task finished gets exactly its final state and a clean
completion: from the cache, and again once the cached state expired (from PostgreSQL)."""

from __future__ import annotations

import pytest

from tests.faults.conftest import FAULT_MARKS, FaultRun
from tests.faults.probes import poll_async
from tests.faults.traffic import follow_late
from tests.support.client import SUBPROTOCOLS

pytestmark = [
    *FAULT_MARKS,
    pytest.mark.timeout(90),
]

BATCH = 10


async def test_a_subscriber_arriving_after_completion(fault: FaultRun) -> None:
    deployment = await fault.deploy(env={"RESULT_TTL_SECONDS": "1"})
    traffic = fault.traffic(deployment, follow=False)
    await traffic.submit(BATCH)

    # No fault: the checker's own late subscribers (all of them here) are the test, and a
    # run without a fault must cause no duplicate delivery at all.
    verdict = await fault.check(deployment, traffic, late=BATCH)
    verdict.assert_sound(min_duplicates=0, max_duplicates=0)

    ids = [a.task_id for a in traffic.accepted]
    await poll_async(
        lambda: deployment.cached(ids), lambda n: n == 0, timeout=10, what="cache expiry"
    )
    rows = await deployment.table.rows()
    for n, task_id in enumerate(ids):
        updates = await follow_late(deployment.ws_url, task_id, SUBPROTOCOLS[n % 2])
        row = rows[task_id]
        assert [(u["status"], u["version"], u["result"]) for u in updates] == [
            ("COMPLETED", row.version, row.input_data[::-1])
        ]
