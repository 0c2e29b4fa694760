"""Idempotent creation, cancel, retries with backoff, giving up, and retryTask, through the
schema with the embedded processor running."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest

import processor.handler
from processor.runner import run as run_processor
from taskwire import service
from taskwire.bootstrap import Services
from taskwire.models import TaskStatus
from taskwire.queue import MemoryTaskQueue
from tests.support.auth import TESTER
from tests.unit.test_processor import until_status
from tests.unit.test_schema import TASK_FIELDS, error_of, execute, watch

CREATE_WITH_KEY = (
    "mutation($input: String!, $key: String) { createTask(input: {inputData: $input, "
    f"idempotencyKey: $key}}) {{ {TASK_FIELDS} }} }}"
)
CANCEL = f"mutation($id: ID!) {{ cancelTask(id: $id) {{ {TASK_FIELDS} }} }}"
RETRY = f"mutation($id: ID!) {{ retryTask(id: $id) {{ {TASK_FIELDS} }} }}"


async def create(services: Services, text: str, key: str | None = None) -> dict[str, Any]:
    result = await execute(services, CREATE_WITH_KEY, input=text, key=key)
    assert result.errors is None, result.errors
    assert result.data is not None
    task: dict[str, Any] = result.data["createTask"]
    return task


class FlakyWork:
    """Fails the first `failures` calls, then reverses."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, text: str, *, delay_seconds: float, poison_marker: str = "") -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"flaky failure {self.calls}")
        return text[::-1]


async def test_the_same_key_and_input_give_the_same_task(services: Services) -> None:
    first = await create(services, "same", key="k-1")
    again = await create(services, "same", key="k-1")
    assert again["id"] == first["id"]
    other = await create(services, "same", key="k-2")
    assert other["id"] != first["id"]
    assert isinstance(services.queue, MemoryTaskQueue)
    assert await services.publishes.settle(timeout=5) == set()
    assert (await services.queue.depth())[0] == 2, "a repeated key publishes nothing"


async def test_concurrent_identical_requests_make_one_task(services: Services) -> None:
    results = await asyncio.gather(*(create(services, "burst", key="burst-key") for _ in range(10)))
    assert len({r["id"] for r in results}) == 1


async def test_the_same_key_with_another_input_is_a_conflict(services: Services) -> None:
    await create(services, "original", key="k")
    message, code = error_of(await execute(services, CREATE_WITH_KEY, input="changed", key="k"))
    assert code == "CONFLICT"
    assert "idempotencyKey" in message


@pytest.mark.parametrize("key", ["", "k" * 201])
async def test_a_bad_key_is_bad_user_input(services: Services, key: str) -> None:
    _, code = error_of(await execute(services, CREATE_WITH_KEY, input="x", key=key))
    assert code == "BAD_USER_INPUT"


async def test_cancel_a_pending_task_and_its_subscriber_completes(services: Services) -> None:
    task = await create(services, "never run")
    watching = asyncio.create_task(watch(services, task["id"]))
    result = await execute(services, CANCEL, id=task["id"])
    assert result.errors is None
    assert result.data is not None
    cancelled = result.data["cancelTask"]
    assert (cancelled["status"], cancelled["version"]) == ("CANCELLED", 2)
    assert cancelled["finishedAt"] is not None
    seen = await asyncio.wait_for(watching, 5)
    assert seen[-1]["status"] == "CANCELLED"


@pytest.mark.usefixtures("processor")
async def test_the_processor_skips_a_cancelled_task(services: Services) -> None:
    # Stored but not yet published, so that the cancel surely comes first.
    task, _ = await services.store.create("skip me", attempt_limit=3, owner=TESTER.subject)
    result = await execute(services, CANCEL, id=str(task.id))
    assert result.errors is None
    await services.queue.publish(task.id)
    assert isinstance(services.queue, MemoryTaskQueue)
    async with asyncio.timeout(5):
        while services.queue.settled["ack"] < 1:
            await asyncio.sleep(0.01)
    final = await services.store.get(task.id)
    assert final is not None
    assert (final.status, final.attempts, final.version) == ("CANCELLED", 0, 2)


async def test_the_poison_marker_fails_matching_inputs_only(services: Services) -> None:
    poisoned = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, poison_marker="☠")
    )
    clean = await service.create_task(poisoned, TESTER, "a b")
    assert (await processor.handler.process(poisoned, clean.id, worker="w")) is not None
    done = await services.store.get(clean.id)
    assert done is not None
    assert done.result == "b a"
    task = await service.create_task(poisoned, TESTER, "a ☠ b")
    outcome = await processor.handler.process(poisoned, task.id, worker="w")
    assert outcome is not None
    assert (outcome.status, outcome.attempts) == ("PENDING", 1), "retried after a backoff"
    assert outcome.error == "PoisonInput: the input contains the configured poison marker"


@pytest.mark.usefixtures("processor")
async def test_cancel_or_retry_in_the_wrong_state_is_a_conflict(services: Services) -> None:
    task = await create(services, "done")
    await watch(services, task["id"])
    message, code = error_of(await execute(services, CANCEL, id=task["id"]))
    assert code == "CONFLICT"
    assert message == "The task is COMPLETED; only a PENDING task can be cancelled."
    message, code = error_of(await execute(services, RETRY, id=task["id"]))
    assert code == "CONFLICT"
    assert message == "The task is COMPLETED; only a FAILED task can be retried."
    for mutation in (CANCEL, RETRY):
        _, code = error_of(await execute(services, mutation, id=str(uuid.uuid4())))
        assert code == "NOT_FOUND"


@pytest.mark.usefixtures("processor")
async def test_a_failing_attempt_is_retried_until_it_succeeds(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = FlakyWork(failures=2)
    monkeypatch.setattr(processor.handler, "reverse_text", work)
    task = await create(services, "flaky")
    seen = await watch(services, task["id"])
    final = seen[-1]
    assert (final["status"], final["attempts"], final["result"]) == ("COMPLETED", 3, "ykalf")
    statuses = [s["status"] for s in seen]
    assert statuses.count("PENDING") >= 1, f"the retries went back to PENDING: {statuses}"
    assert work.calls == 3


@pytest.mark.usefixtures("processor")
async def test_out_of_attempts_is_failed_dead_lettered_and_retryable(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = FlakyWork(failures=3)
    monkeypatch.setattr(processor.handler, "reverse_text", work)
    task = await create(services, "doomed")
    final = (await watch(services, task["id"]))[-1]
    assert (final["status"], final["attempts"]) == ("FAILED", 3)
    stored = await services.store.get(uuid.UUID(task["id"]))
    assert stored is not None
    assert stored.error == "ConnectionError: flaky failure 3"
    assert isinstance(services.queue, MemoryTaskQueue)
    assert services.queue.dead_letters, "the last message went to the dead-letter queue"

    result = await execute(services, RETRY, id=task["id"])
    assert result.errors is None
    assert result.data is not None
    assert (result.data["retryTask"]["status"], result.data["retryTask"]["error"]) == (
        "PENDING",
        None,
    )
    final = (await watch(services, task["id"]))[-1]
    assert (final["status"], final["attempts"], final["result"]) == ("COMPLETED", 4, "demood")


async def test_stopping_hands_back_work_that_outlasts_the_grace(services: Services) -> None:
    def with_delay(delay: float) -> Services:
        settings = dataclasses.replace(
            services.settings, task_delay_seconds=delay, shutdown_grace_seconds=0.1
        )
        return dataclasses.replace(services, settings=settings)

    stop = asyncio.Event()
    slow = asyncio.create_task(run_processor(with_delay(30), stop))
    task = await service.create_task(services, TESTER, "handed back")
    claimed = await until_status(services, task.id, TaskStatus.PROCESSING)
    stop.set()
    await asyncio.wait_for(slow, 5)
    released = await services.store.get(task.id)
    assert released is not None
    assert (released.status, released.version) == (TaskStatus.PENDING, claimed.version + 1)
    assert isinstance(services.queue, MemoryTaskQueue)
    assert services.queue.settled["requeue"] == 1, "its message went back to the queue"

    stop = asyncio.Event()
    fast = asyncio.create_task(run_processor(with_delay(0), stop))
    done = await until_status(services, task.id, TaskStatus.COMPLETED)
    assert (done.attempts, done.result) == (2, "kcab dednah")
    stop.set()
    await asyncio.wait_for(fast, 5)
