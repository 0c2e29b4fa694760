"""OpenTelemetry tracing, off unless the standard OTEL_* variables turn it on.

Off, nothing of the SDK is loaded or installed and every helper here returns after one check of
the API's tracer provider (no span objects, no context changes). On, one trace follows a task:
the API's createTask span, a producer span whose context travels in the message headers (W3C
traceparent), the processor's consumer span with its claim, work and finish spans under it, and
the span of each event publish under those.

The dispatcher's re-publish starts a new trace (new_trace=True): it runs outside any request,
and the context of the task's first trace is not stored with the task (that would take a
column for a backstop path). Its spans and log lines carry the task id, which joins the two.

Beside the trace context, the message headers carry the id of the request that queued the task
(x-request-id, tracing on or off), so the processor's log lines name the same request id as the
API's; the dispatcher's re-publish runs outside any request and carries none.

Configuration is OpenTelemetry's own: OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER (otlp, console,
none), OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT (OTLP over HTTP/protobuf), OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_PROPAGATORS. The provider is
installed as the API's global one, the place OpenTelemetry's own instrumentations look; the
helpers here find their tracer in a ContextVar (set before the event loop starts, so every task
inherits it) because asking the API for its provider costs ~2 us (an os.environ lookup).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING
from uuid import UUID

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from taskwire.errors import SettingsError
from taskwire.logs import accepted_request_id

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    from taskwire.ports import Delivery

SCOPE = "taskwire"
TASK_ID_ATTRIBUTE = "taskwire.task_id"
EXPORTERS = ("otlp", "console", "none")
# The OTLP exporter installed is the HTTP/protobuf one.
OTLP_PROTOCOLS = ("http/protobuf",)
_TRUE = ("1", "true", "yes", "on")

# The message header naming the request that queued a task. Only an id the API would accept
# from a client is taken from it: a foreign or corrupted header never reaches a log line.
REQUEST_ID_HEADER = "x-request-id"

# The tracer of this process's spans; None (the default) is tracing off.
_TRACER: ContextVar[trace.Tracer | None] = ContextVar("taskwire_tracer", default=None)


def tracing_enabled(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: an exporter named in OTEL_TRACES_EXPORTER (not
    "none") or an OTLP endpoint, and OTEL_SDK_DISABLED not true."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    return bool(_exporter_names(env))


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if raw:
        names = [name.strip() for name in raw.split(",") if name.strip()]
        return [] if names == ["none"] else names
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return ["otlp"] if any(env.get(name, "").strip() for name in endpoints) else []


def tracer_provider(env: Mapping[str, str], *, service_name: str) -> SdkTracerProvider | None:
    """An SDK tracer provider with the exporters the environment names, or None when tracing
    is off. SettingsError names the variable of a configuration it cannot honour."""
    if not tracing_enabled(env):
        return None
    names = _exporter_names(env)
    for name in names:
        if name not in EXPORTERS or name == "none":
            raise SettingsError(
                f"OTEL_TRACES_EXPORTER: must be otlp, console or none (got {name!r})"
            )
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(variable, "").strip()
        if "otlp" in names and protocol and protocol not in OTLP_PROTOCOLS:
            raise SettingsError(f"{variable}: only http/protobuf is supported (got {protocol!r})")
    # Imported here: with tracing off the SDK is never loaded.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES from os.environ
    # itself; attributes given here would override them, so the default only when unnamed.
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": service_name})
    )
    if "otlp" in names:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads its endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in names:
        # One compact JSON object per line on stdout, written as each span ends: for a
        # developer's terminal and for tests, not for load.
        exporter = ConsoleSpanExporter(
            out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def configure_tracing(env: Mapping[str, str], *, service_name: str) -> bool:
    """Install the tracer provider the environment asks for, for the calling context and
    what it starts (call it before the event loop); False, and nothing installed, when
    tracing is off. Spans still open at exit are flushed by the provider's atexit hook."""
    provider = tracer_provider(env, service_name=service_name)
    if provider is None:
        return False
    trace.set_tracer_provider(provider)
    _TRACER.set(provider.get_tracer(SCOPE))
    return True


@contextmanager
def tracing_with(provider: trace.TracerProvider) -> Iterator[None]:
    """Tracing on, with `provider`'s tracer, within the block only (tests)."""
    token = _TRACER.set(provider.get_tracer(SCOPE))
    try:
        yield
    finally:
        _TRACER.reset(token)


class SpanScope:
    """A span made current for a block, usable with `with` and `async with`; the scope of
    tracing off enters nothing and yields None."""

    __slots__ = ("_manager",)

    def __init__(self, manager: AbstractContextManager[Span] | None) -> None:
        self._manager = manager

    def __enter__(self) -> Span | None:
        return self._manager.__enter__() if self._manager is not None else None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._manager is not None:
            self._manager.__exit__(kind, error, traceback)

    async def __aenter__(self) -> Span | None:
        return self.__enter__()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(kind, error, traceback)


# Stateless: entering and leaving it does nothing, so one instance serves every caller.
_OFF = SpanScope(None)


def span(
    name: str,
    *,
    task_id: UUID | str | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    new_trace: bool = False,
) -> SpanScope:
    """A span named `name` around a block, child of the current one (or the root of a new
    trace with `new_trace`), with the task id as an attribute."""
    tracer = _TRACER.get()
    if tracer is None:
        return _OFF
    attributes = {TASK_ID_ATTRIBUTE: str(task_id)} if task_id is not None else None
    return SpanScope(
        tracer.start_as_current_span(
            name,
            context=otel_context.Context() if new_trace else None,
            kind=kind,
            attributes=attributes,
        )
    )


def publishing(task_id: UUID, *, new_trace: bool = False) -> SpanScope:
    """The producer span of putting task `task_id` on the work queue; headers() inside it is
    the context the processor continues from."""
    return span("taskwire.publish", task_id=task_id, kind=SpanKind.PRODUCER, new_trace=new_trace)


def headers(*, request_id: str | None = None) -> dict[str, str] | None:
    """The current trace context as message headers (traceparent, tracestate), and
    `request_id` as x-request-id; None when there is neither (tracing off, no request)."""
    if _TRACER.get() is None:
        # The common case (no tracing, and no request for a processor's retry): no dict.
        return {REQUEST_ID_HEADER: request_id} if request_id is not None else None
    from opentelemetry import propagate  # loads the propagators: only once tracing is on

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if request_id is not None:
        carrier[REQUEST_ID_HEADER] = request_id
    return carrier or None


def delivered_request_id(delivery: Delivery) -> str | None:
    """The id of the request that queued the delivered task, None when its headers name none
    (a dispatcher re-publish) or name one that is not acceptable."""
    return accepted_request_id(delivery.headers.get(REQUEST_ID_HEADER))


def consuming(delivery: Delivery, task_id: UUID) -> SpanScope:
    """The processor's span for one delivery of task `task_id`: a child of the context its
    publisher put in the message headers (a new trace when there is none)."""
    tracer = _TRACER.get()
    if tracer is None:
        return _OFF
    from opentelemetry import propagate

    parent = propagate.extract(delivery.headers, context=otel_context.Context())
    return SpanScope(
        tracer.start_as_current_span(
            "taskwire.process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={TASK_ID_ATTRIBUTE: str(task_id)},
        )
    )


def set_task_id(current: Span | None, task_id: UUID) -> None:
    """Name the task on a span opened before its id was known (createTask)."""
    if current is not None:
        current.set_attribute(TASK_ID_ATTRIBUTE, str(task_id))
