"""Real `taskwire` processes for end-to-end tests: started with an environment, logged to a
file, stopped by pid."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

TASKWIRE = str(Path(sys.executable).with_name("taskwire"))


class ApiAddress:
    """The URLs of an API process listening on 127.0.0.1:`port`."""

    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class TaskwireProcess:
    """One `taskwire <command>` child process."""

    def __init__(
        self, name: str, args: list[str], *, env: Mapping[str, str], log_dir: Path, cwd: Path
    ) -> None:
        self.name = name
        self.args = args
        # Text logs unless a test asks for JSON: the tests read these files (the default, for
        # output that is not a terminal, would be JSON).
        self.env = {"LOG_FORMAT": "text", **os.environ, **env}
        self.log_path = log_dir / f"{name}.log"
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [TASKWIRE, *self.args],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def wait_until_ready(base_url: str, process: TaskwireProcess, timeout: float = 30.0) -> None:
    """Poll /readyz until it answers 200; fail with the process log if it never does."""
    async with httpx.AsyncClient(timeout=2.0) as client:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if not process.running:
                raise AssertionError(f"{process.name} exited:\n{process.log_tail()}")
            try:
                response = await client.get(f"{base_url}/readyz")
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{process.name} not ready after {timeout}s:\n{process.log_tail()}")


def run_to_completion(args: list[str], *, env: Mapping[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [TASKWIRE, *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"taskwire {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
