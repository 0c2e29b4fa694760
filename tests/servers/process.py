"""One server process, run in a process group of its own and stopped or killed through that
group's id, never by name: a run can touch neither another run's servers nor the machine's."""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

POLL_SECONDS = 0.05


class ServerError(RuntimeError):
    """A test server could not be started or stopped."""


class Server(abc.ABC):
    """start(), stop(), kill(), restart() and url of one server on free loopback ports.

    The ports are picked when the server is created and kept across restarts; its data, config
    and log live in a directory of its own under the run directory. The methods block
    (RabbitMQ takes seconds): from async code call them through ``asyncio.to_thread``.
    """

    kind: ClassVar[str]
    start_timeout: ClassVar[float]
    # The signal that asks for a clean shutdown.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix=f"{self.kind}-", dir=run_dir))
        self.log_path = self.home / f"{self.kind}.log"
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    @abc.abstractmethod
    def missing_binaries(cls) -> list[str]:
        """Names of the programs this server needs that are not installed."""

    @property
    @abc.abstractmethod
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.poll() is None else None

    def start(self) -> None:
        """Start the server (no-op when running) and wait until it serves requests."""
        if self.pid is not None:
            return
        began = time.monotonic()
        self._prepare()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                env=self._environment(),
                start_new_session=True,  # its own process group: Ctrl-C reaches us, not it
            )
        try:
            self._wait_ready(began + self.start_timeout)
        except ServerError as exc:
            self.kill()
            raise ServerError(f"{exc}\n{self.log_tail()}") from None
        self.start_seconds = time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down cleanly; whatever of the process group is left after timeout is killed."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        self.kill()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a crash would (fault injection)."""
        process = self._process
        if process is None:
            return
        # While the leader is unreaped, or any member lives, its pid cannot name another group.
        if process.poll() is None or group_members(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        wait_until(lambda: not group_members(process.pid), time.monotonic() + 10.0)
        self._process = None

    def restart(self) -> None:
        """Stop (or clear up after kill()) and start again on the same port with the same data."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            text = ["(no log)"]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text)

    def _prepare(self) -> None:  # noqa: B027 (an optional hook)
        """Create data and config files; runs before every start, must keep existing data."""

    @abc.abstractmethod
    def _command(self) -> list[str]: ...

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    @abc.abstractmethod
    def _is_ready(self) -> bool: ...

    def _cleanup(self) -> None:  # noqa: B027 (an optional hook)
        """Stop helpers the server left outside its process group (RabbitMQ's epmd)."""

    def _wait_ready(self, deadline: float) -> None:
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise ServerError(f"{self.kind} exited during start (exit code {code})")
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                raise ServerError(f"{self.kind} not ready after {self.start_timeout:.0f} s")
            time.sleep(POLL_SECONDS)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel picks it; a race with others is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def wait_until(condition: Callable[[], bool], deadline: float) -> bool:
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def processes() -> Iterator[tuple[int, str, str, int]]:
    """(pid, command name, state, process group) of every process, read from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ")".
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        yield int(entry.name), name, fields[0], int(fields[2])


def group_members(group: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    return [pid for pid, _, state, pgrp in processes() if pgrp == group and state != "Z"]
