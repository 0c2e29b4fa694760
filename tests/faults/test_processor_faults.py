"""A processor dies (`kill -9`) or freezes past its lease (`SIGSTOP`, then `SIGCONT`) while it
holds tasks: the tasks are taken over after the lease and done once; the frozen one wakes up
as a zombie whose late results change nothing."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.faults.conftest import FAULT_MARKS, FaultRun
from tests.faults.deployment import FaultDeployment
from tests.faults.probes import Row
from tests.faults.schedule import FaultPlan
from tests.faults.traffic import Traffic

pytestmark = [
    *FAULT_MARKS,
    pytest.mark.timeout(120),
]

BATCH = 40
SPACING = 0.08
# Of TASK_DELAY_SECONDS (0.5): a task claimed this recently is still being worked on when the
# signal arrives a few milliseconds later.
JUST_CLAIMED_SECONDS = 0.25


async def victim_at_work(
    deployment: FaultDeployment, traffic: Traffic, plan: FaultPlan
) -> tuple[int, int]:
    """Pick a processor and a moment mid-batch; then wait until it has just claimed a task
    (so that the fault strikes work in progress); returns its index and pid."""
    index = plan.choice([0, 1], "victim processor index")
    after = plan.randint(BATCH // 4, BATCH // 2, "fault once this many tasks were accepted")
    await traffic.wait_accepted(after)
    victim = deployment.processors[index].process
    assert victim is not None
    await deployment.table.wait_for_processing(victim.pid, within=JUST_CLAIMED_SECONDS)
    return index, victim.pid


def held_note(held: list[Row]) -> str:
    return f"holding {len(held)} task(s): {[r.id for r in held]}"


async def test_processor_kill9_mid_task(fault: FaultRun) -> None:
    plan = fault.plan
    deployment = await fault.deploy()
    traffic = fault.traffic(deployment)
    submitting = asyncio.create_task(traffic.submit(BATCH, spacing=SPACING))

    index, pid = await victim_at_work(deployment, traffic, plan)
    victim = deployment.processors[index]
    victim.kill()
    held = await deployment.table.settled_processing(pid)
    plan.note(f"kill -9 {victim.name} {held_note(held)}")
    assert held, "the victim finished its work before the signal"
    await asyncio.sleep(plan.uniform(0.5, 1.5, "seconds before the processor is restarted"))
    await deployment.restart_processor(index)
    plan.note(f"{victim.name} restarted")
    await submitting

    verdict = await fault.check(deployment, traffic)
    verdict.assert_sound(min_duplicates=1)
    rows = await deployment.table.rows()
    # Taken over after the lease: a second attempt, by the processor that survived or the
    # restarted one.
    assert all(rows[r.id].attempts >= 2 for r in held), [rows[r.id] for r in held]


async def test_processor_sigstop_past_its_lease_is_a_harmless_zombie(fault: FaultRun) -> None:
    plan = fault.plan
    # A short AMQP heartbeat makes the broker give up on the frozen consumer within ~4 s and
    # redeliver what it held: the duplicate deliveries this fault is about.
    deployment = await fault.deploy(rabbitmq_query={"heartbeat": "2"})
    traffic = fault.traffic(deployment)
    submitting = asyncio.create_task(traffic.submit(BATCH, spacing=SPACING))

    index, pid = await victim_at_work(deployment, traffic, plan)
    victim = deployment.processors[index]
    victim.signal(signal.SIGSTOP)
    held = await deployment.table.settled_processing(pid)
    plan.note(f"SIGSTOP {victim.name} {held_note(held)}")
    assert held, "the victim finished its work before the signal"
    # Past the lease (2 s), the takeover (dispatch + work, ~1 s) and the heartbeat timeout.
    await asyncio.sleep(plan.uniform(6.0, 7.5, "seconds frozen"))
    taken_over = await deployment.table.rows()
    victim.signal(signal.SIGCONT)
    plan.note(
        f"SIGCONT {victim.name}; of its tasks "
        f"{sum(taken_over[r.id].terminal for r in held)}/{len(held)} were already finished"
    )
    await submitting

    verdict = await fault.check(deployment, traffic)
    verdict.notes["zombie_tasks"] = len(held)
    discarded = [
        rf"task {r.id} attempt {r.attempts} lost its lease; result discarded" for r in held
    ]
    # The zombie woke up and finished its work: every result it held was refused by the fence.
    await deployment.wait_for_log("|".join(discarded), count=len(held), prefix=victim.name)
    verdict.assert_sound(min_duplicates=1)
    rows = await deployment.table.rows()
    assert all(rows[r.id].attempts >= 2 for r in held), [rows[r.id] for r in held]
