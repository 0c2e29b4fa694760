"""`taskwire dev | api | processor | migrate | schema | token | submit | status`: the one core
module that reaches both deployables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import os
import re
import signal
import sys
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any

from taskwire import submit
from taskwire.errors import SettingsError
from taskwire.logs import configure_logging
from taskwire.settings import Settings, is_memory
from taskwire.tokens import TokenVerifier, mint_token
from taskwire.tracing import configure_tracing, tracing_enabled

log = logging.getLogger("taskwire")

LOOPBACK = "127.0.0.1"
GC_GEN0_THRESHOLD = 50_000
# `taskwire token --ttl`: seconds, or a number with s/m/h/d, at most 30 days.
_TTL = re.compile(r"([0-9]+)([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TOKEN_TTL_SECONDS = 30 * 86400


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "submit":
        return submit.run(args)  # a client of the API: none of the server's settings apply
    try:
        # Before anything logs: JSON lines or text as LOG_FORMAT says, each line with the
        # request, task and trace ids it is about (taskwire.logs).
        configure_logging(os.environ, trace_ids=tracing_enabled(os.environ))
    except SettingsError as exc:
        print(f"taskwire {args.command}: {exc}", file=sys.stderr)
        return 2
    # Alembic narrates every plugin it loads at INFO; only its problems are worth a line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env(os.environ)
        if args.command in ("api", "processor"):
            _require_shared_transport(settings, args.command)
        if args.command == "dev":
            settings = _dev_settings(settings, os.environ)
            _require_local_host(settings, args.host)
        if args.command in ("api", "dev") and settings.auth_mode == "jwt":
            # A bad key configuration stops the start here, with the variable it is about.
            TokenVerifier.from_settings(settings)
        if args.command in ("api", "processor", "dev"):
            # Off unless the OTEL_* variables ask for it (taskwire.tracing).
            configure_tracing(os.environ, service_name=f"taskwire-{args.command}")
    except SettingsError as exc:
        print(f"taskwire {args.command}: {exc}", file=sys.stderr)
        return 2
    command = args.command
    if command == "token":
        return _token(settings, args.sub, args.ttl)
    if command == "status":
        from taskwire import stats

        return stats.run(settings, as_json=args.json)
    if command == "api" and settings.auth_mode == "none":
        log.warning(
            "AUTH_MODE=none: NO AUTHENTICATION. ANYONE WHO CAN REACH %s:%d CAN READ AND CHANGE "
            "EVERY TASK. Set AUTH_MODE=jwt outside local development.",
            args.host,
            args.port,
        )
    if command in ("api", "processor") and (problem := _schema_problem(settings)):
        print(f"taskwire {command}: {problem}", file=sys.stderr)
        return 2
    if command == "schema":
        from graphql_api.schema import build_schema

        print(build_schema().as_str())
        return 0
    if command == "migrate":
        return _migrate(settings)
    if command == "processor":
        _tune_gc()
        return _run_loop(_processor(settings))
    if command == "api":
        return _serve(settings, args.host, args.port, embedded_processor=False)
    # dev: everything in one process, embedded defaults, schema created on start.
    if _migrate(settings) != 0:
        return 1
    return _serve(settings, args.host, args.port, embedded_processor=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskwire", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("dev", "API and processor in one process, no servers needed (SQLite, in-memory queue)"),
        ("api", "the GraphQL API server"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--host", default=LOOPBACK, help="address to listen on (default %(default)s)"
        )
        sub.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    commands.add_parser("processor", help="consume and process tasks from RabbitMQ")
    commands.add_parser("migrate", help="upgrade the database schema to the latest version")
    commands.add_parser("schema", help="print the GraphQL schema (SDL), as in schema.graphql")
    text = "print a user token signed with JWT_SECRET (HS256), for development and tests"
    token = commands.add_parser("token", help=text, description=text)
    token.add_argument("--sub", required=True, help="the user (the token's subject)")
    token.add_argument(
        "--ttl", default="1h", help="lifetime: seconds or 30s, 15m, 1h, 7d (default 1h, max 30d)"
    )
    text = "create a task through the API and, with --watch, follow it until it finishes"
    submit.add_arguments(commands.add_parser("submit", help=text, description=text))
    text = "print task counts and queue depth, read with this environment's settings"
    status = commands.add_parser("status", help=text, description=text)
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    return parser


def _dev_settings(settings: Settings, env: Mapping[str, str]) -> Settings:
    # dev is one local user exploring the API: no tokens and an introspectable schema, unless
    # the environment asks otherwise.
    if not env.get("AUTH_MODE"):
        settings = dataclasses.replace(settings, auth_mode="none")
    if not env.get("INTROSPECTION"):
        settings = dataclasses.replace(settings, introspection=True)
    return settings


def _require_local_host(settings: Settings, host: str) -> None:
    if settings.auth_mode != "none" or _is_loopback(host):
        return
    raise SettingsError(
        f"--host {host} with AUTH_MODE=none would let anyone who can reach it read and change "
        "every task; listen on a loopback address (127.0.0.1, ::1, localhost) or set "
        "AUTH_MODE=jwt with JWT_SECRET."
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token(settings: Settings, subject: str, ttl: str) -> int:
    try:
        token = mint_token(settings, subject, ttl_seconds=_ttl_seconds(ttl))
    except (SettingsError, ValueError) as exc:
        print(f"taskwire token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _ttl_seconds(text: str) -> int:
    match = _TTL.fullmatch(text.strip().lower())
    seconds = int(match[1]) * _TTL_UNITS[match[2]] if match else 0
    if not 0 < seconds <= MAX_TOKEN_TTL_SECONDS:
        raise ValueError(f"--ttl {text}: give 1 second to 30 days, as seconds or 30s, 15m, 1h, 7d")
    return seconds


def _require_shared_transport(settings: Settings, command: str) -> None:
    # memory:// adapters live inside one process: a separate API and processor would never
    # see each other's messages or events.
    for name, url in (("RABBITMQ_URL", settings.rabbitmq_url), ("REDIS_URL", settings.redis_url)):
        if is_memory(url):
            raise SettingsError(
                f"{name}={url} only works inside `taskwire dev`, where the API and the processor "
                f"share one process; `taskwire {command}` needs a real server URL."
            )


def _schema_problem(settings: Settings) -> str | None:
    from taskwire.db import pending_migrations

    try:
        pending = asyncio.run(pending_migrations(settings.database_url))
    except Exception as exc:
        return f"cannot read the database schema at DATABASE_URL ({type(exc).__name__}: {exc})"
    if pending:
        return (
            f"the database schema lacks {len(pending)} migration(s); run `taskwire migrate` first"
        )
    return None


def _migrate(settings: Settings) -> int:
    from taskwire.db import migrate

    asyncio.run(migrate(settings.database_url))
    log.info("database schema is up to date")
    return 0


def _serve(settings: Settings, host: str, port: int, *, embedded_processor: bool) -> int:
    import uvicorn

    from graphql_api.app import create_app
    from graphql_api.protocol import LeanWebSocketProtocol
    from processor.runner import run

    app = create_app(settings, background=[run] if embedded_processor else [])
    config = uvicorn.Config(
        app,
        ws_max_size=settings.max_ws_frame_bytes,
        host=host,
        port=port,
        lifespan="on",
        ws_per_message_deflate=False,  # compression nearly doubles memory per subscription
        # uvicorn's default websocket protocol, holding less per idle connection.
        ws=LeanWebSocketProtocol,
        ws_ping_interval=settings.keepalive_seconds,
        ws_ping_timeout=max(20.0, settings.keepalive_seconds),
        # uvicorn's access log follows LOG_LEVEL: one line per request at INFO, none above it
        # (a line per request is a measurable cost at high request rates).
        log_level=logging.getLevelName(logging.getLogger().level).lower(),
        # Its lines go through the root handler like every other: in the LOG_FORMAT, with the
        # request id (the id a client sees in X-Request-ID and in a masked error's requestId).
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    if embedded_processor:
        log.info(
            "taskwire dev: the task console is at http://%s:%d/ and GraphiQL at /graphql",
            host,
            port,
        )
    server = _graceful_server_class()(config)
    _tune_gc()
    server.run()
    return 0 if server.started else 1


def _tune_gc() -> None:
    """The objects alive at start (modules, the schema, the app) never become garbage: freezing
    them spares every full collection a walk over them. And a long-running server allocates
    per request far more than the default gen-0 threshold of 700, so collections ran every few
    requests and stalled the loop (DESIGN.md measured p99 1.2 s -> 25 ms with 5,000
    subscribers)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """SIGTERM and SIGINT are the normal way to stop: shut down gracefully, exit 0.
        (uvicorn re-raises the captured signal after its shutdown, making the status -15.)"""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    return GracefulServer


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """uvloop when it is installed (it comes with uvicorn[standard], which the API already runs
    on): the processor spends a measurable share of its CPU in the event loop's socket code."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a slimmed install
        return asyncio.run(main)
    status: int = uvloop.run(main)
    return status


async def _processor(settings: Settings) -> int:
    from processor.runner import run
    from taskwire.bootstrap import connect
    from taskwire.metrics import serving

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Claims and finishes are short statements: a small pool serves many tasks in flight.
    async with connect(settings, pool_size=min(settings.processor_concurrency, 16)) as services:
        port = settings.metrics_port if settings.metrics_enabled else 0
        async with serving(services.metrics, settings.metrics_host, port):
            await run(services, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
