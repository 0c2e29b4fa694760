"""The servers of one run, under one run directory."""

from __future__ import annotations

import atexit
import concurrent.futures
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.servers.postgres_server import PostgresServer
from tests.servers.process import Server, ServerError
from tests.servers.rabbitmq_server import RabbitMQServer
from tests.servers.redis_server import RedisServer

KINDS = ("postgres", "redis", "rabbitmq")
SERVER_TYPES: dict[str, type[Server]] = {
    "postgres": PostgresServer,
    "redis": RedisServer,
    "rabbitmq": RabbitMQServer,
}


class ServerPool:
    """Shared servers (one per kind, started on demand) and private ones (spawn()).

    close() stops every server the pool started and removes the run directory it made; it is
    also registered with atexit, as a backstop for an interrupted run.
    """

    def __init__(self, run_dir: Path | None = None) -> None:
        self._made_run_dir = run_dir is None
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="taskwire-servers-"))
        self.run_dir.chmod(0o755)  # PostgreSQL runs as another user and must reach its dir
        self._shared: dict[str, Server] = {}
        self._private: list[Server] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    def shared(self, kind: str) -> Server:
        """The pool's one server of this kind, started if it is not running."""
        self.start_shared([kind])
        return self._shared[kind]

    def start_shared(self, kinds: Iterable[str]) -> None:
        """Start the shared servers of these kinds that are not running, in parallel."""
        kinds = list(kinds)
        with self._lock:
            for kind in kinds:
                if kind not in self._shared:
                    self._shared[kind] = SERVER_TYPES[kind](self.run_dir)
            waiting = {self._shared[kind] for kind in kinds if self._shared[kind].pid is None}
            in_parallel([server.start for server in waiting])

    def spawn(self, kind: str) -> Server:
        """A new private server of this kind, to break without disturbing other tests."""
        server = SERVER_TYPES[kind](self.run_dir)
        with self._lock:
            self._private.append(server)
        server.start()
        return server

    def close(self) -> None:
        atexit.unregister(self.close)
        with self._lock:
            servers = [*self._private, *self._shared.values()]
            self._private.clear()
            self._shared.clear()
        try:
            in_parallel([server.stop for server in servers])
        finally:
            if self._made_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)


def missing_binaries(kind: str) -> list[str]:
    return SERVER_TYPES[kind].missing_binaries()


def in_parallel(calls: list[Callable[[], None]]) -> None:
    """Run the calls in threads; after all have finished, raise what failed."""
    if not calls:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as executor:
        futures = [executor.submit(call) for call in calls]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ServerError("\n\n".join(map(str, errors)))
