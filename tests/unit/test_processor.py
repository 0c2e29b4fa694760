"""The processor loop on the memory queue: what happens to each kind of message."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import pytest

import processor.handler
from taskwire import service
from taskwire.bootstrap import Services
from taskwire.models import Task, TaskStatus
from taskwire.queue import MemoryTaskQueue, decode_task_id, encode_task_id
from tests.support.auth import TESTER

pytestmark = pytest.mark.usefixtures("processor")


async def until_status(services: Services, task_id: UUID, status: TaskStatus) -> Task:
    async with asyncio.timeout(5):
        while True:
            task = await services.store.get(task_id)
            if task is not None and task.status is status:
                return task
            await asyncio.sleep(0.01)


async def until_settled(queue: MemoryTaskQueue, outcome: str, count: int) -> None:
    async with asyncio.timeout(5):
        while queue.settled[outcome] < count:
            await asyncio.sleep(0.01)
    assert queue.settled[outcome] == count


def memory_queue(services: Services) -> MemoryTaskQueue:
    assert isinstance(services.queue, MemoryTaskQueue)
    return services.queue


async def test_a_task_is_claimed_worked_and_completed(services: Services) -> None:
    task = await service.create_task(services, TESTER, "drawer")
    done = await until_status(services, task.id, TaskStatus.COMPLETED)
    assert (done.result, done.attempts, done.version) == ("reward", 1, 3)
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.finished_at >= done.started_at >= done.created_at
    assert await services.cache.get(task.id) == done, "the cache holds the final version"


async def test_malformed_messages_are_dead_lettered_and_the_loop_goes_on(
    services: Services,
) -> None:
    queue = memory_queue(services)
    malformed = [b"not json", b'{"task_id": "nope"}', b"[]", b"\xff" * 300]
    for body in malformed:
        await queue.publish_body(body)
    task = await service.create_task(services, TESTER, "still works")
    await until_status(services, task.id, TaskStatus.COMPLETED)
    await until_settled(queue, "dead_letter", len(malformed))
    assert sorted(queue.dead_letters) == sorted(malformed)


async def test_a_duplicate_delivery_of_a_finished_task_changes_nothing(
    services: Services,
) -> None:
    task = await service.create_task(services, TESTER, "twice")
    done = await until_status(services, task.id, TaskStatus.COMPLETED)
    await until_settled(memory_queue(services), "ack", 1)
    await services.queue.publish(task.id)
    await services.queue.publish(task.id)
    await until_settled(memory_queue(services), "ack", 3)
    assert await services.store.get(task.id) == done


async def test_an_unknown_task_id_is_settled_without_effect(services: Services) -> None:
    await services.queue.publish(uuid4())
    await until_settled(memory_queue(services), "ack", 1)
    assert memory_queue(services).dead_letters == []


async def test_a_work_failure_is_retried_then_failed_with_its_error(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(text: str, *, delay_seconds: float, poison_marker: str = "") -> str:
        raise ValueError(f"cannot reverse {text!r}")

    monkeypatch.setattr(processor.handler, "reverse_text", broken)
    task = await service.create_task(services, TESTER, "poison")
    failed = await until_status(services, task.id, TaskStatus.FAILED)
    assert failed.error == "ValueError: cannot reverse 'poison'"
    assert failed.attempts == services.settings.max_attempts
    assert failed.result is None
    assert failed.finished_at is not None
    await until_settled(memory_queue(services), "dead_letter", 1)


def test_the_codec_round_trips() -> None:
    task_id = uuid4()
    assert decode_task_id(encode_task_id(task_id)) == task_id
