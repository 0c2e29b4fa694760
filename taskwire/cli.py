"""`taskwire dev | api | processor | migrate`: the one core module that reaches both deployables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence

from taskwire.errors import SettingsError
from taskwire.settings import Settings, is_memory

log = logging.getLogger("taskwire")

LOOPBACK = "127.0.0.1"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic narrates every plugin it loads at INFO; only its problems are worth a line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env(os.environ)
        if args.command in ("api", "processor"):
            _require_shared_transport(settings, args.command)
    except SettingsError as exc:
        print(f"taskwire {args.command}: {exc}", file=sys.stderr)
        return 2
    command = args.command
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
        return asyncio.run(_processor(settings))
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
    return parser


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
    from processor.runner import run

    app = create_app(settings, background=[run] if embedded_processor else [])
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        ws_per_message_deflate=False,  # compression nearly doubles memory per subscription
        ws_ping_interval=settings.keepalive_seconds,
        ws_ping_timeout=max(20.0, settings.keepalive_seconds),
        log_level="info",
        timeout_graceful_shutdown=10,
    )
    if embedded_processor:
        log.info("taskwire dev: open http://%s:%d/graphql", host, port)
    server = _graceful_server_class()(config)
    server.run()
    return 0 if server.started else 1


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


async def _processor(settings: Settings) -> int:
    from processor.runner import run
    from taskwire.bootstrap import connect

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Claims and finishes are short statements: a small pool serves many tasks in flight.
    async with connect(settings, pool_size=min(settings.processor_concurrency, 16)) as services:
        await run(services, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
