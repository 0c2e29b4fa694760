"""Tracing: off unless OTEL_* asks, free when off, and one trace from createTask through the
queue's headers to the processor's spans (on the embedded adapters)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from uuid import uuid4

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from processor.runner import run as run_processor
from taskwire import service, tracing
from taskwire.bootstrap import Services
from taskwire.errors import SettingsError
from taskwire.models import TaskStatus
from taskwire.queue import MemoryTaskQueue
from tests.support.auth import TESTER


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_off_unless_configured(env: dict[str, str], enabled: bool) -> None:
    assert tracing.tracing_enabled(env) is enabled
    assert (tracing.tracer_provider(env, service_name="taskwire-test") is not None) is enabled


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_a_configuration_it_cannot_honour_names_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        tracing.tracer_provider(env, service_name="taskwire-test")


def test_the_service_name_defaults_to_the_command_unless_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"OTEL_TRACES_EXPORTER": "console"}
    provider = tracing.tracer_provider(env, service_name="taskwire-api")
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "taskwire-api"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders-api")
    named = tracing.tracer_provider({**env, "OTEL_SERVICE_NAME": "orders-api"}, service_name="x")
    assert named is not None
    assert named.resource.attributes["service.name"] == "orders-api"


def test_off_nothing_is_made() -> None:
    assert tracing.span("x") is tracing.span("y"), "one shared scope that does nothing"
    with tracing.span("x") as span:
        assert span is None
    assert tracing.headers() is None


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.tracing_with(provider):
        yield exporter


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_the_context_travels_in_the_message_headers(
    exported: InMemorySpanExporter,
) -> None:
    queue = MemoryTaskQueue()
    task_id = uuid4()
    with tracing.publishing(task_id):
        sent = tracing.headers()
        await queue.publish(task_id, headers=sent)
    assert sent is not None
    assert sent["traceparent"].startswith("00-")
    async with queue.consume(prefetch=1) as deliveries:
        delivery = await anext(aiter(deliveries))
        assert dict(delivery.headers) == sent
        async with tracing.consuming(delivery, task_id):
            pass
        await delivery.ack()
    [publish] = by_name(exported.get_finished_spans(), "taskwire.publish")
    [process] = by_name(exported.get_finished_spans(), "taskwire.process")
    assert process.context is not None
    assert publish.context is not None
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.context.trace_id == publish.context.trace_id
    assert process.attributes is not None
    assert process.attributes[tracing.TASK_ID_ATTRIBUTE] == str(task_id)


async def test_a_message_without_headers_starts_a_new_trace(
    exported: InMemorySpanExporter,
) -> None:
    queue = MemoryTaskQueue()
    await queue.publish(uuid4())
    async with queue.consume(prefetch=1) as deliveries:
        delivery = await anext(aiter(deliveries))
        assert dict(delivery.headers) == {}
        with tracing.span("outer"), tracing.consuming(delivery, uuid4()):
            pass
        await delivery.ack()
    [process] = by_name(exported.get_finished_spans(), "taskwire.process")
    assert process.parent is None, "not a child of whatever span was current"


def test_a_new_trace_is_not_a_child(exported: InMemorySpanExporter) -> None:
    with tracing.span("outer"), tracing.publishing(uuid4(), new_trace=True):
        pass
    [outer] = by_name(exported.get_finished_spans(), "outer")
    [publish] = by_name(exported.get_finished_spans(), "taskwire.publish")
    assert publish.parent is None
    assert outer.context is not None
    assert publish.context is not None
    assert publish.context.trace_id != outer.context.trace_id


async def test_a_task_is_one_trace_from_create_to_its_events(
    services: Services, exported: InMemorySpanExporter
) -> None:
    # Started here, not by a fixture: its task must be made once tracing is on.
    stop = asyncio.Event()
    processor = asyncio.create_task(run_processor(services, stop))
    try:
        task = await service.create_task(services, TESTER, "traced")
        async with asyncio.timeout(5):
            while not by_name(exported.get_finished_spans(), "taskwire.process"):
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(processor, timeout=10)
    done = await services.store.get(task.id)
    assert done is not None
    assert done.status is TaskStatus.COMPLETED
    spans = exported.get_finished_spans()
    [create] = by_name(spans, "taskwire.createTask")
    assert create.attributes is not None
    assert create.attributes[tracing.TASK_ID_ATTRIBUTE] == str(task.id)
    assert create.context is not None
    assert {s.context.trace_id for s in spans if s.context is not None} == {create.context.trace_id}
    parents = {s.context.span_id: s.name for s in spans if s.context is not None}

    def parent_of(name: str) -> list[str]:
        return sorted(parents[s.parent.span_id] for s in by_name(spans, name) if s.parent)

    assert parent_of("taskwire.publish") == ["taskwire.createTask"]
    assert parent_of("taskwire.process") == ["taskwire.publish"]
    assert parent_of("taskwire.claim") == ["taskwire.process"]
    assert parent_of("taskwire.work") == ["taskwire.process"]
    assert parent_of("taskwire.complete") == ["taskwire.process"]
    assert parent_of("taskwire.event") == ["taskwire.claim", "taskwire.complete"]
