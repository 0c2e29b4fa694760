"""The processor loop on the memory queue: what happens to each kind of message."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID, uuid4

import pytest
from opentelemetry.sdk.trace import TracerProvider

import processor.handler
from taskwire import service, tracing
from taskwire.bootstrap import Services
from taskwire.logs import REQUEST_ID, ContextFilter
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


# --- the request id travels from createTask to the processor's log lines, in the headers.

GOOD_REQUEST_IDS = ["req-1", "a", "A.b_c-9", "f" * 64]
BAD_REQUEST_IDS = ["", "has space", "f" * 65, "line\nbreak", "tab\t", "ünï", "<script>", "a/b"]


@pytest.fixture
def context_records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog whose records carry the context fields, as the configured handler's do."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(ContextFilter())
    return caplog


def lines_about(caplog: pytest.LogCaptureFixture, task_id: UUID) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "task_id", None) == str(task_id)]


def event_of(record: logging.LogRecord) -> Any:
    fields: dict[str, Any] = getattr(record, "fields", None) or {}
    return fields.get("event")


async def until_logged(caplog: pytest.LogCaptureFixture, task_id: UUID, text: str) -> None:
    async with asyncio.timeout(5):
        while not any(text in r.getMessage() for r in lines_about(caplog, task_id)):
            await asyncio.sleep(0.01)


def test_the_headers_carry_the_request_id_with_or_without_tracing() -> None:
    assert tracing.headers() is None, "no request, no tracing: nothing to send"
    assert tracing.headers(request_id="req-1") == {tracing.REQUEST_ID_HEADER: "req-1"}
    with tracing.tracing_with(TracerProvider()), tracing.publishing(uuid4()):
        sent = tracing.headers(request_id="req-1")
        assert sent is not None
        assert sent[tracing.REQUEST_ID_HEADER] == "req-1"
        assert sent["traceparent"].startswith("00-"), "beside the trace context"
        assert tracing.REQUEST_ID_HEADER not in (tracing.headers() or {})


async def test_the_processor_lines_carry_the_request_id_of_the_create(
    services: Services, context_records: pytest.LogCaptureFixture
) -> None:
    token = REQUEST_ID.set("create-req-7")
    try:
        task = await service.create_task(services, TESTER, "traced")
    finally:
        REQUEST_ID.reset(token)
    untraced = await service.create_task(services, TESTER, "no request")
    await until_status(services, task.id, TaskStatus.COMPLETED)
    await until_status(services, untraced.id, TaskStatus.COMPLETED)
    # The processor runs in its own task, started before the request id was set: the only
    # way the id reaches its lines is the message's headers.
    events = {event_of(r): r for r in lines_about(context_records, task.id)}
    assert {"created", "claimed", "completed"} <= events.keys()
    for event in ("created", "claimed", "completed"):
        assert getattr(events[event], "request_id", None) == "create-req-7", event
    assert all(
        getattr(r, "request_id", None) is None for r in lines_about(context_records, untraced.id)
    )
    assert REQUEST_ID.get() is None


async def test_a_retried_attempt_keeps_the_request_id(
    services: Services, context_records: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(text: str, *, delay_seconds: float, poison_marker: str = "") -> str:
        raise ValueError("no")

    monkeypatch.setattr(processor.handler, "reverse_text", broken)
    token = REQUEST_ID.set("create-req-8")
    try:
        task = await service.create_task(services, TESTER, "retried")
    finally:
        REQUEST_ID.reset(token)
    await until_status(services, task.id, TaskStatus.FAILED)
    claims = [r for r in lines_about(context_records, task.id) if event_of(r) == "claimed"]
    # Attempts after the first arrive by the retry's own publish, not the create's.
    assert len(claims) == services.settings.max_attempts > 1
    assert {getattr(r, "request_id", None) for r in claims} == {"create-req-8"}


@pytest.mark.parametrize("value", GOOD_REQUEST_IDS + BAD_REQUEST_IDS)
async def test_a_delivered_request_id_is_used_only_when_acceptable(
    services: Services, context_records: pytest.LogCaptureFixture, value: str
) -> None:
    unknown = uuid4()  # not claimable: the handler logs one line about it and settles it
    await services.queue.publish(unknown, headers={tracing.REQUEST_ID_HEADER: value})
    await until_logged(context_records, unknown, "not claimable")
    [line] = lines_about(context_records, unknown)
    expected = value if value in GOOD_REQUEST_IDS else None
    assert getattr(line, "request_id", None) == expected
    await until_settled(memory_queue(services), "ack", 1)
