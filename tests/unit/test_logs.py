"""Structured logs: the formatters, the context filter, redaction and the transition line."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from graphql_api.middleware import RequestId
from taskwire.errors import SettingsError
from taskwire.logs import (
    REQUEST_ID,
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bound_task,
    configure_logging,
    log_format,
    log_transition,
    redact,
    task_fields,
)
from taskwire.models import Task, TaskStatus

TASK_ID = UUID("0b9c3a52-6a3e-4d0e-8a39-0c6e3c2f9d11")
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9."
    "c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
)


def record(msg: str = "hello %s", *args: object, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("taskwire.test", logging.INFO, __file__, 1, msg, args, None)
    made.__dict__.update(extra)
    return made


def filtered(made: logging.LogRecord, *, trace_ids: bool = False) -> logging.LogRecord:
    assert ContextFilter(trace_ids=trace_ids).filter(made)
    return made


def as_json(made: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(filtered(made))
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def task(status: TaskStatus = TaskStatus.PROCESSING, *, attempts: int = 1) -> Task:
    now = datetime.now(UTC)
    return Task(
        id=TASK_ID,
        status=status,
        input_data="x",
        result=None,
        error=None,
        attempts=attempts,
        version=2,
        created_at=now,
        updated_at=now,
    )


# --- JSON -------------------------------------------------------------------------------


def test_a_json_line_holds_the_record_and_no_unknown_context() -> None:
    data = as_json(record("hello %s", "world"))
    assert data.pop("time").endswith("Z")
    assert data == {"level": "INFO", "logger": "taskwire.test", "message": "hello world"}


def test_json_time_is_utc_iso_with_milliseconds() -> None:
    made = record()
    made.created = datetime(2026, 3, 4, 5, 6, 7, 891_000, tzinfo=UTC).timestamp()
    assert as_json(made)["time"] == "2026-03-04T05:06:07.891Z"
    made.created += 1.5  # the next second: the cached stamp must not be reused
    formatter = JsonFormatter()
    first = json.loads(formatter.format(filtered(record())))["time"]
    later = json.loads(formatter.format(filtered(made)))["time"]
    assert later == "2026-03-04T05:06:09.391Z" != first


def test_json_carries_the_bound_task_and_the_request() -> None:
    token = REQUEST_ID.set("req-1")
    try:
        with bound_task(TASK_ID):
            data = as_json(record())
    finally:
        REQUEST_ID.reset(token)
    assert data["task_id"] == str(TASK_ID)
    assert data["request_id"] == "req-1"
    assert "task_id" not in as_json(record()), "the binding ends with its block"


def test_an_explicit_value_wins_over_the_context() -> None:
    with bound_task(TASK_ID):
        data = as_json(record(**task_fields(UUID(int=7))))
    assert data["task_id"] == str(UUID(int=7))


def test_bindings_nest_and_unwind() -> None:
    inner = uuid4()
    with bound_task(TASK_ID):
        with bound_task(inner):
            assert as_json(record())["task_id"] == str(inner)
        assert as_json(record())["task_id"] == str(TASK_ID)


def test_an_exception_is_one_json_string() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = record()
        made.exc_info = sys.exc_info()
    data = as_json(made)
    assert data["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom" in data["exception"]


def test_json_stays_ascii_whatever_the_message_holds() -> None:
    line = JsonFormatter().format(filtered(record("%s", "caf\u00e9 \ud800")))
    assert line.isascii()
    assert json.loads(line)["message"] == "caf\u00e9 \ud800"


# --- text -------------------------------------------------------------------------------


def test_text_shows_the_request_in_brackets_only_within_one() -> None:
    plain = TextFormatter().format(filtered(record("hello")))
    assert plain.endswith(" INFO taskwire.test: hello")
    within = TextFormatter().format(filtered(record("hello", request_id="req-9")))
    assert within.endswith(" INFO taskwire.test [req-9]: hello")


def test_text_appends_the_context_the_message_does_not_name() -> None:
    with bound_task(TASK_ID):
        named = TextFormatter().format(filtered(record("task %s done", TASK_ID)))
        unnamed = TextFormatter().format(filtered(record("lease renewed")))
    assert named.endswith(f"task {TASK_ID} done")
    assert unnamed.endswith(f"lease renewed task_id={TASK_ID}")


def test_text_puts_the_context_before_a_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        made = record("failed", trace_id="ab" * 16)
        made.exc_info = sys.exc_info()
    lines = TextFormatter().format(filtered(made)).splitlines()
    assert lines[0].endswith("failed trace_id=" + "ab" * 16)
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad"


# --- trace ids --------------------------------------------------------------------------


def test_the_current_span_is_on_the_line_when_tracing_is_on() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        context = span.get_span_context()
        traced = filtered(record(), trace_ids=True)
        untraced = filtered(record(), trace_ids=False)
    assert traced.__dict__["trace_id"] == format(context.trace_id, "032x")
    assert traced.__dict__["span_id"] == format(context.span_id, "016x")
    assert not hasattr(untraced, "trace_id"), "off: the filter does not even look"
    assert not hasattr(filtered(record(), trace_ids=True), "trace_id"), "no span, no id"


# --- redaction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "cannot reach postgresql+asyncpg://app:s3cr%40t@db:5432/tasks",
            "cannot reach postgresql+asyncpg://app:***@db:5432/tasks",
        ),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer ***"),
        ("authorization: BEARER abc", "authorization: BEARER ***"),
        (f"token={JWT} end", "token=*** end"),
    ],
)
def test_secrets_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:5432/taskwire",  # no password: kept whole
        "http://127.0.0.1:8000/graphql",
        "task 0b9c3a52-6a3e-4d0e-8a39-0c6e3c2f9d11 completed on attempt 1",
    ],
)
def test_what_holds_no_secret_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_a_false_positive_costs_one_word() -> None:
    assert redact("the bearer of bad news") == "the bearer *** bad news"


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_both_formats_redact_messages_and_tracebacks(formatter: logging.Formatter) -> None:
    try:
        raise ConnectionError("refused by amqp://user:topsecret@broker/")
    except ConnectionError:
        made = record("connecting to %s with %s", "redis://:pw1@cache/0", f"Bearer {JWT}")
        made.exc_info = sys.exc_info()
    line = formatter.format(filtered(made))
    for secret in ("topsecret", "pw1", JWT, "eyJ"):
        assert secret not in line
    assert "amqp://user:***@broker/" in line
    assert "redis://:***@cache/0" in line


# --- the transition line ----------------------------------------------------------------


def test_a_transition_is_one_info_line_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("taskwire.test.transitions")
    caplog.set_level(logging.INFO, logger=logger.name)
    log_transition(logger, task(TaskStatus.COMPLETED), "completed", TaskStatus.PROCESSING)
    [made] = caplog.records
    assert made.levelno == logging.INFO
    assert made.getMessage() == (
        f"task {TASK_ID} completed on attempt 1 (PROCESSING -> COMPLETED, version 2)"
    )
    data = as_json(made)
    assert data["task_id"] == str(TASK_ID)
    assert {key: data[key] for key in ("event", "from", "to", "version", "attempt")} == {
        "event": "completed",
        "from": "PROCESSING",
        "to": "COMPLETED",
        "version": 2,
        "attempt": 1,
    }


def test_a_transition_without_a_known_source_or_attempt(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("taskwire.test.transitions")
    caplog.set_level(logging.INFO, logger=logger.name)
    log_transition(logger, task(TaskStatus.PENDING, attempts=0), "created", None)
    [made] = caplog.records
    assert made.getMessage() == f"task {TASK_ID} created (-> PENDING, version 2)"
    assert as_json(made)["from"] is None


def test_no_transition_line_above_info(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("taskwire.test.quiet")
    caplog.set_level(logging.WARNING, logger=logger.name)
    log_transition(logger, task(), "claimed", None)
    assert caplog.records == []


# --- choosing the format ----------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("value", "terminal", "expected"),
    [
        ("", False, "json"),
        ("", True, "text"),
        ("auto", False, "json"),
        ("AUTO", True, "text"),
        ("json", True, "json"),
        ("text", False, "text"),
    ],
)
def test_the_format_follows_log_format_then_the_terminal(
    value: str, terminal: bool, expected: str
) -> None:
    stream = Terminal() if terminal else io.StringIO()
    assert log_format({"LOG_FORMAT": value}, stream) == expected


def test_an_unknown_format_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        log_format({"LOG_FORMAT": "xml"}, io.StringIO())


LEAN_SWITCHES = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")


@contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without the test runner's handlers, as in a fresh process. Used inside
    the test itself: pytest adds its capturing handlers for the test's call phase only."""
    root = logging.getLogger()
    handlers, level = root.handlers, root.level
    # configure_logging turns these lookups off process-wide; other tests may want them.
    saved = {name: getattr(logging, name) for name in LEAN_SWITCHES}
    root.handlers = []
    try:
        yield root
    finally:
        root.handlers = handlers
        root.setLevel(level)
        for name, value in saved.items():
            setattr(logging, name, value)


def test_configure_logging_writes_json_lines_with_the_context() -> None:
    out = io.StringIO()
    with bare_root() as root:
        assert configure_logging({"LOG_LEVEL": "debug"}, stream=out) == "json"
        assert root.level == logging.DEBUG
        with bound_task(TASK_ID):
            logging.getLogger("taskwire.test.configured").debug("about %s", "it")
    [line] = out.getvalue().splitlines()
    data = json.loads(line)
    assert (data["message"], data["task_id"], data["level"]) == ("about it", str(TASK_ID), "DEBUG")


def test_configure_logging_leaves_existing_handlers_alone() -> None:
    existing = logging.NullHandler()
    with bare_root() as root:
        root.handlers.append(existing)
        configure_logging({}, stream=io.StringIO())
        assert root.handlers == [existing]


# --- the request id reaches the filter ----------------------------------------------------


async def test_the_filter_sees_the_request_id_the_middleware_set() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        made = filtered(record())
        await JSONResponse({"request_id": made.__dict__["request_id"]})(scope, receive, send)

    transport = httpx.ASGITransport(app=RequestId(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/", headers={"X-Request-ID": "from-client"})
    assert response.json() == {"request_id": "from-client"}
    assert REQUEST_ID.get() is None
