"""PostgreSQL from Debian's binaries (the newest /usr/lib/postgresql/N/bin)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from tests.servers.process import Server, ServerError


class PostgresServer(Server):
    """PostgreSQL with trust auth on 127.0.0.1 and its socket in its own directory.

    Durability is traded for speed (fsync=off, full_page_writes=off), which only matters if the
    machine itself crashes. synchronous_commit stays on unless asked: with it off, a kill() can
    lose the last commits, which a fault test would blame on the application, and with fsync
    off it buys nothing measurable (pgbench: the same TPS either way).
    """

    kind = "postgres"
    start_timeout = 60.0
    stop_signal = signal.SIGINT  # "fast" shutdown: disconnect clients, checkpoint, exit

    def __init__(self, run_dir: Path, *, synchronous_commit: bool = True) -> None:
        bin_dir = bin_directory()
        if bin_dir is None:
            raise ServerError("PostgreSQL is not installed (Debian package postgresql)")
        super().__init__(run_dir)
        self.bin_dir = bin_dir
        self.synchronous_commit = synchronous_commit
        self.data_dir = self.home / "data"

    @property
    def has_statement_stats(self) -> bool:
        """Whether the pg_stat_statements module is installed (Debian ships it with the server)."""
        return (self.bin_dir.parent / "lib" / "pg_stat_statements.so").exists()

    @classmethod
    def missing_binaries(cls) -> list[str]:
        return [] if bin_directory() else ["postgres (Debian package postgresql)"]

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self) -> list[str]:
        """PostgreSQL refuses to run as root: switch user in place (exec, so the pid is kept)."""
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]

    def _prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if os.geteuid() == 0:
            # The postgres user owns its directory and must be able to reach it (the run
            # directory's own parents must let others through, as /tmp does).
            user = pwd.getpwnam("postgres")
            os.chown(self.home, user.pw_uid, user.pw_gid)
            run_dir = self.home.parent
            run_dir.chmod(run_dir.stat().st_mode | 0o711)
        initdb = [
            *self._as_postgres(),
            str(self.bin_dir / "initdb"),
            f"--pgdata={self.data_dir}",
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]
        with self.log_path.open("ab") as log:
            done = subprocess.run(initdb, stdout=log, stderr=subprocess.STDOUT, cwd=self.home)
        if done.returncode != 0:
            raise ServerError(f"initdb failed (exit code {done.returncode})\n{self.log_tail()}")

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.home),
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "on" if self.synchronous_commit else "off",
            "max_connections": "300",
        }
        if self.has_statement_stats:
            # Counts calls per statement (bench/push_poll.py counts the task reads with it).
            settings["shared_preload_libraries"] = "pg_stat_statements"
        options = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
        postgres = str(self.bin_dir / "postgres")
        return [*self._as_postgres(), postgres, "-D", str(self.data_dir), *options]

    def _is_ready(self) -> bool:
        probe = [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1"]
        probe += ["-p", str(self.port), "-U", "postgres", "-d", "postgres", "-t", "2"]
        return subprocess.run(probe, check=False).returncode == 0


def bin_directory() -> Path | None:
    """The newest Debian PostgreSQL (/usr/lib/postgresql/N/bin), else postgres on PATH."""
    found = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    found.sort(key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0)
    if found:
        return found[-1]
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None
