"""Redis from Debian's redis-server."""

from __future__ import annotations

import shutil
import socket

from tests.servers.process import Server


class RedisServer(Server):
    """Redis on 127.0.0.1 with no persistence: a restart empties it, as a cache may be."""

    kind = "redis"
    start_timeout = 30.0

    @classmethod
    def missing_binaries(cls) -> list[str]:
        found = shutil.which("redis-server")
        return [] if found else ["redis-server (Debian package redis-server)"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            "redis-server",
            *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.home)),
            *("--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""),
        ]

    def _is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False
