"""Structured logs: JSON lines for machines, readable text on a terminal, and the context every
line about a task carries (task_id, request_id, trace_id) without the call sites passing it.

The context lives in ContextVars set where it is known (the request middleware, the processor's
handler per delivery, the service functions) and is read by ContextFilter on the handler, so a
call site keeps writing a plain `log.info(...)`. Both formatters pass their output through
redact() last: a safety net for tokens and URL passwords that reached a message by mistake.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Literal, TextIO
from uuid import UUID

from opentelemetry import trace

from taskwire.errors import SettingsError
from taskwire.models import Task, TaskStatus

LogFormat = Literal["json", "text"]
LOG_FORMATS = ("json", "text", "auto")

# The HTTP request or websocket being served (graphql_api.middleware sets it) and the task the
# current code works on. ContextVars: each request and each delivery runs in its own context,
# and asyncio tasks started inside it inherit it.
REQUEST_ID: ContextVar[str | None] = ContextVar("taskwire_request_id", default=None)
# The request ids taken from outside (a client's X-Request-ID, a message's x-request-id): short
# and plain, so one can never forge or break a log line.
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def accepted_request_id(value: str | None) -> str | None:
    """`value` when it is a request id safe to log and echo (1-64 of [A-Za-z0-9._-]), else
    None."""
    if value is not None and _ACCEPTED_REQUEST_ID.fullmatch(value):
        return value
    return None


TASK_ID: ContextVar[str | None] = ContextVar("taskwire_task_id", default=None)

# The fields the filter puts on every record; "-" (text) or absent (JSON) when unknown.
CONTEXT_FIELDS = ("request_id", "task_id", "trace_id", "span_id")

# --- redaction: `user:password@` in URLs, bearer tokens, and anything shaped like a JWT.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s@/]+@")
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
REDACTED = "***"


def redact(text: str) -> str:
    """`text` without URL passwords (`postgresql://u:***@host`), bearer tokens and JWTs.

    Each pattern runs only when a cheap substring test says it could match: most lines hold
    none of them, and a log line must stay cheap."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(rf"\1{REDACTED}", text)
    return text


class bound_task:  # noqa: N801 - used like a function: `with bound_task(task_id): ...`
    """Within the block, every log line names `task_id` (unless it names one itself)."""

    __slots__ = ("_task_id", "_token")

    def __init__(self, task_id: UUID | str) -> None:
        self._task_id = str(task_id)
        self._token: Token[str | None] | None = None

    def __enter__(self) -> None:
        self._token = TASK_ID.set(self._task_id)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            TASK_ID.reset(self._token)
            self._token = None


def task_fields(task_id: UUID) -> dict[str, str]:
    """`extra=` naming the task of a line logged outside bound_task."""
    return {"task_id": str(task_id)}


class ContextFilter(logging.Filter):
    """Puts request_id, task_id and (with `trace_ids`) trace_id and span_id on each record, from
    the context it is logged in; a value given in `extra=` wins. Attach it to the handler: a
    logger's filters miss the records that propagate to it."""

    def __init__(self, *, trace_ids: bool = False) -> None:
        super().__init__()
        # Off unless tracing is configured: no span is ever current then, so the lookup
        # would only cost time.
        self._trace_ids = trace_ids

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if "request_id" not in fields:
            fields["request_id"] = REQUEST_ID.get()
        if "task_id" not in fields:
            fields["task_id"] = TASK_ID.get()
        if self._trace_ids and "trace_id" not in fields:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                fields["trace_id"] = format(context.trace_id, "032x")
                fields["span_id"] = format(context.span_id, "016x")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context
    fields that are known, a transition's fields (`extra={"fields": {...}}`) and the
    exception's traceback as one string."""

    def __init__(self) -> None:
        super().__init__()
        # ensure_ascii: the line stays ASCII whatever a message holds (lone surrogates too).
        self._encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        data: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = fields.get(name)
            if value is not None and value != "-":
                data[name] = value
        extra = fields.get("fields")
        if extra:
            data.update(extra)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        return redact(self._encode(data))

    def _time(self, created: float) -> str:
        # strftime once per second, not once per line.
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """`2026-01-01 12:00:00,123 INFO taskwire.service [request id]: message trace_id=...`: the
    request id in brackets when there is one, and the context the message does not already
    name appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        request_id = fields.get("request_id")
        record.request = f" [{request_id}]" if request_id and request_id != "-" else ""
        line = super().format(record)
        suffix = ""
        task_id = fields.get("task_id")
        if task_id and task_id not in record.message:
            suffix += f" task_id={task_id}"
        trace_id = fields.get("trace_id")
        if trace_id:
            suffix += f" trace_id={trace_id}"
        if suffix:
            # After the message's first line, before a traceback.
            first, newline, rest = line.partition("\n")
            line = first + suffix + newline + rest
        return redact(line)


def log_format(env: Mapping[str, str], stream: TextIO) -> LogFormat:
    """LOG_FORMAT: json, text, or auto (the default): text on a terminal, JSON otherwise."""
    chosen = env.get("LOG_FORMAT", "").strip().lower() or "auto"
    if chosen not in LOG_FORMATS:
        raise SettingsError(f"LOG_FORMAT: must be one of {', '.join(LOG_FORMATS)} (got {chosen!r})")
    if chosen == "auto":
        isatty = getattr(stream, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"
    return "json" if chosen == "json" else "text"


def configure_logging(
    env: Mapping[str, str], *, stream: TextIO | None = None, trace_ids: bool = False
) -> LogFormat:
    """Log to `stream` (stderr) at LOG_LEVEL (INFO) in the LOG_FORMAT chosen; returns it. Like
    logging.basicConfig it leaves a root logger that already has handlers alone (a test's)."""
    out = stream if stream is not None else sys.stderr
    chosen = log_format(env, out)
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter(trace_ids=trace_ids))
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    logging.basicConfig(level=env.get("LOG_LEVEL", "INFO").upper(), handlers=[handler])
    # Neither format shows where a call was made from nor the thread or process: not looking
    # them up saves a third of a line's cost (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return chosen


def log_transition(
    logger: logging.Logger, task: Task, event: str, previous: TaskStatus | None
) -> None:
    """The one INFO line of a task's transition: `task <id> <event> on attempt <n> (<from> ->
    <to>, version <v>)`, with event, from, to, version and attempt as fields. `previous` is
    None where the caller cannot know it (a claim takes a PENDING task or an expired lease)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    # Formatted here, once, without %-args: a processor writes two of these per task.
    task_id = str(task.id)
    source = previous.value if previous is not None else None
    target = task.status.value
    attempt = f" on attempt {task.attempts}" if task.attempts else ""
    arrow = f"{source} -> {target}" if source else f"-> {target}"
    message = f"task {task_id} {event}{attempt} ({arrow}, version {task.version})"
    fields = {
        "event": event,
        "from": source,
        "to": target,
        "version": task.version,
        "attempt": task.attempts,
    }
    logger.info(message, extra={"task_id": task_id, "fields": fields})
