"""The broker is killed (`kill -9`) mid-batch and restarted: once a second or so after the work
queue was first declared on a brand-new broker (RabbitMQ 3.10 has been seen to lose such a
quorum queue with its confirmed messages), once on a warmed-up broker. Tasks created while it
is down are accepted; the outbox makes up for whatever the broker lost."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.conftest import FAULT_MARKS, FaultRun
from tests.faults.deployment import FaultDeployment
from tests.faults.traffic import Traffic
from tests.servers import Server

pytestmark = [
    *FAULT_MARKS,
    pytest.mark.slow,
    pytest.mark.timeout(150),
]

BATCH = 40
SPACING = 0.1


async def kill_and_restart(
    fault: FaultRun, deployment: FaultDeployment, traffic: Traffic, broker: Server
) -> None:
    """kill -9 the broker while work is in progress, restart it after a pause."""
    plan = fault.plan
    # Work claimed this recently is still in progress when the broker dies a moment later: its
    # acknowledgement will fail, and the broker (if it kept the queue) delivers it again.
    held = await deployment.table.wait_for_processing(within=0.25)
    await asyncio.to_thread(broker.kill)
    plan.note(
        f"kill -9 rabbitmq ({len(traffic.accepted)} accepted, {len(held)} in progress, "
        f"the queue declared {deployment.queue_age():.1f} s before)"
    )
    await asyncio.sleep(plan.uniform(0.5, 2.0, "seconds before the broker is restarted"))
    await asyncio.to_thread(broker.start)
    plan.note(f"rabbitmq restarted ({broker.start_seconds:.1f} s to boot)")


async def test_rabbitmq_kill9_right_after_the_first_declare(fault: FaultRun) -> None:
    plan = fault.plan
    broker = await fault.spawn("rabbitmq")  # nothing was ever declared on it
    deployment = await fault.deploy(rabbitmq=broker)
    traffic = fault.traffic(deployment)
    trickle = asyncio.create_task(traffic.submit(BATCH, spacing=SPACING))
    await traffic.wait_accepted(plan.randint(1, 4, "kill once this many tasks were accepted"))
    await kill_and_restart(fault, deployment, traffic, broker)
    await trickle

    verdict = await fault.check(deployment, traffic)
    # The deliveries in progress at the kill come back as duplicates if the broker kept the
    # queue. If it lost the queue (the trap this scenario is about) they are gone with it, and
    # the outbox alone must have made up for whatever else it held: then the dispatcher worked.
    verdict.notes["queue_kept"] = verdict.duplicates > 0
    verdict.assert_sound(min_duplicates=0)
    assert verdict.duplicates > 0 or verdict.republished > 0, "the kill exercised nothing"


async def test_rabbitmq_kill9_on_a_warm_broker(fault: FaultRun) -> None:
    plan = fault.plan
    deployment = await fault.deploy()
    traffic = fault.traffic(deployment)
    trickle = asyncio.create_task(traffic.submit(BATCH, spacing=SPACING))
    # Late enough that the queue has been declared for seconds and has carried work.
    await traffic.wait_accepted(plan.randint(15, 25, "kill once this many tasks were accepted"))
    await kill_and_restart(fault, deployment, traffic, fault.servers.rabbitmq)
    await trickle

    verdict = await fault.check(deployment, traffic)
    verdict.assert_sound(min_duplicates=1)
