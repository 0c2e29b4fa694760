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
    # Tasks one processor holds at once (the prefetch). The work mostly waits, so a process
    # keeps hundreds in flight on a handful of database connections (measured: 1,000 at 5 s
    # each in 89 MiB).
    processor_concurrency: int = 512
    max_input_bytes: int = 64 * 1024
    # A claim is a lease: a worker that stops renewing it loses the task to another worker.
    lease_seconds: float = 30.0
    # A new task whose publish was never confirmed is republished after this.
    dispatch_grace_seconds: float = 10.0
    # A PENDING task whose publish was confirmed but that nobody claimed is republished after this.
    redispatch_seconds: float = 300.0
    # createTask answers once the task is committed and cached; its publish and the broker's
    # confirm follow in the background (the table is the outbox). Past this many publishes
    # awaiting their confirm, createTask waits for its own: a slow broker slows the callers
    # instead of growing the process's memory.
    publish_backlog: int = 5000
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
    # fails; crash_point="after_commit" kills the API between createTask's commit and publish;
    # crash_point="unexpected_error" makes createTask raise an unexpected error.
    poison_marker: str = ""
    crash_point: str = ""
    queue_name: str = "taskwire.tasks"
    channel_prefix: str = "taskwire"
    # Who may see what (taskwire.tokens). "jwt": every request carries a bearer token and sees
    # only its own tasks. "none": one local user who sees everything; `taskwire dev` only.
    auth_mode: str = "jwt"
    jwt_secret: str = ""
    jwt_public_key_file: str = ""
    jwt_jwks_file: str = ""
    jwt_audience: str = "taskwire"
    jwt_issuer: str = "taskwire"
    # Clock skew tolerated on exp/nbf/iat (RFC 8725 asks for little).
    jwt_leeway_seconds: float = 30.0
    # createTask's watchToken: signed with this (JWT_SECRET when empty), valid this long.
    watch_token_secret: str = ""
    watch_token_ttl_seconds: int = 900
    # Browser origins allowed to call the API (CORS) and to open websockets; comma-separated.
    allowed_origins: tuple[str, ...] = ()
    # The hardened surface. Introspection is off for `taskwire api` (the SDL is schema.graphql)
    # and on for `taskwire dev`.
    introspection: bool = False
    max_query_depth: int = 10
    max_aliases: int = 15
    max_query_tokens: int = 1000
    max_request_bytes: int = 1024 * 1024
    max_ws_frame_bytes: int = 1024 * 1024
    ws_init_timeout_seconds: float = 10.0
    max_subscriptions_per_connection: int = 50
    # createTask per owner: a sustained rate and a burst (0 per minute turns the limit off).
    rate_limit_per_minute: float = 600.0
    rate_limit_burst: int = 60
    # Prometheus metrics: GET /metrics on the API (no authentication: keep it off the public
    # network, or turn it off), and on each processor an HTTP port (0: none) on this address.
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100

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


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw

    return parse


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
    return origins


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
    "publish_backlog": _number(1, integer=True),
    "watch_recheck_seconds": _number(0.1),
    "keepalive_seconds": _number(0.1),
    "max_attempts": _number(1, integer=True),
    "retry_base_seconds": _number(0),
    "retry_max_seconds": _number(0, maximum=MAX_RETRY_DELAY_SECONDS),
    "shutdown_grace_seconds": _number(0),
    "auth_mode": _choice("jwt", "none"),
    "jwt_leeway_seconds": _number(0, maximum=300),
    "watch_token_ttl_seconds": _number(1, integer=True),
    "allowed_origins": _origins,
    "introspection": _flag,
    "max_query_depth": _number(1, integer=True),
    "max_aliases": _number(0, integer=True),
    "max_query_tokens": _number(10, integer=True),
    "max_request_bytes": _number(1024, integer=True),
    "max_ws_frame_bytes": _number(1024, integer=True),
    "ws_init_timeout_seconds": _number(0.1),
    "max_subscriptions_per_connection": _number(1, integer=True),
    "rate_limit_per_minute": _number(0),
    "rate_limit_burst": _number(1, integer=True),
    "metrics_enabled": _flag,
    "metrics_port": _number(0, maximum=65535, integer=True),
}
