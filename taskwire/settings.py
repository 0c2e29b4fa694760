"""Typed settings, read once from the environment and passed down (never a global)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from taskwire.errors import SettingsError

MEMORY_URL = "memory://"


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "sqlite+aiosqlite:///taskwire.db"
    rabbitmq_url: str = MEMORY_URL
    redis_url: str = MEMORY_URL
    task_delay_seconds: float = 5.0
    result_ttl_seconds: int = 60
    processor_concurrency: int = 64
    max_input_bytes: int = 64 * 1024
    # A claim is a lease: a worker that stops renewing it loses the task to another worker.
    lease_seconds: float = 30.0
    # A new task whose publish was never confirmed is republished after this.
    dispatch_grace_seconds: float = 10.0
    # A PENDING task whose publish was confirmed but that nobody claimed is republished after this.
    redispatch_seconds: float = 300.0
    # How often an idle subscription re-reads the truth, in case an event went missing.
    watch_recheck_seconds: float = 30.0
    # Keep-alive on websockets: legacy graphql-ws `ka` messages and WebSocket ping frames.
    keepalive_seconds: float = 10.0
    # Attempts a task gets before it is FAILED; failed attempts are retried after an
    # exponential backoff with jitter: base * 2^(attempt-1), capped.
    max_attempts: int = 3
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    # How long a stopping processor lets the work in hand finish before handing it back.
    shutdown_grace_seconds: float = 30.0
    # Test-only fault injection, off by default: work on an input containing `poison_marker`
    # fails; crash_point="after_commit" kills the API between createTask's commit and publish.
    poison_marker: str = ""
    crash_point: str = ""
    queue_name: str = "taskwire.tasks"
    channel_prefix: str = "taskwire"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from environment variables named like the fields, upper-cased.

        Raises SettingsError naming the variable on the first bad value.
        """
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = field.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            parse = _PARSERS.get(field.name, _text)
            try:
                values[field.name] = parse(raw.strip())
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc} (got {raw!r})") from None
        return cls(**values)


def is_memory(url: str) -> bool:
    return url.startswith(MEMORY_URL)


def _text(raw: str) -> str:
    return raw


# The longest delay the broker's delay-queue ladder holds (taskwire.queue.MAX_DELAY_SECONDS;
# a unit test keeps the two equal): a longer retry backoff would be silently cut.
MAX_RETRY_DELAY_SECONDS = 256.0


def _number(
    minimum: float, *, maximum: float | None = None, integer: bool = False
) -> Callable[[str], Any]:
    def parse(raw: str) -> float | int:
        try:
            value: float | int = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise ValueError(f"must be {kind}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum:g}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        scheme = urlsplit(raw).scheme
        if scheme not in schemes:
            raise ValueError(f"must be a URL starting with one of {', '.join(schemes)}")
        return raw

    return parse


_PARSERS: dict[str, Callable[[str], Any]] = {
    "database_url": _url("postgresql+asyncpg", "sqlite+aiosqlite"),
    "rabbitmq_url": _url("amqp", "amqps", "memory"),
    "redis_url": _url("redis", "rediss", "memory"),
    "task_delay_seconds": _number(0),
    "result_ttl_seconds": _number(1, integer=True),
    "processor_concurrency": _number(1, integer=True),
    "max_input_bytes": _number(1, integer=True),
    "lease_seconds": _number(0.1),
    "dispatch_grace_seconds": _number(0.1),
    "redispatch_seconds": _number(0.1),
    "watch_recheck_seconds": _number(0.1),
    "keepalive_seconds": _number(0.1),
    "max_attempts": _number(1, integer=True),
    "retry_base_seconds": _number(0),
    "retry_max_seconds": _number(0, maximum=MAX_RETRY_DELAY_SECONDS),
    "shutdown_grace_seconds": _number(0),
}
