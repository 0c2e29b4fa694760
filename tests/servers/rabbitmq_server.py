"""RabbitMQ from Debian's rabbitmq-server (3.10), run in the foreground as our child."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aio_pika

from tests.servers.process import (
    Server,
    ServerError,
    free_port,
    port_open,
    processes,
    wait_until,
)

# Not /usr/sbin/rabbitmq-server: as root, that wrapper switches to the rabbitmq user and drops
# the environment that makes this node ours.
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


class RabbitMQServer(Server):
    """RabbitMQ with its own node name, Erlang cookie, config, data and epmd port.

    Its epmd daemonizes out of the node's process group: stop() stops it too, kill() leaves
    it running, as a crash of the broker would.
    """

    kind = "rabbitmq"
    start_timeout = 120.0

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node_name = f"taskwire-{os.getpid()}-{self.port}@localhost"

    @classmethod
    def missing_binaries(cls) -> list[str]:
        missing = [] if RABBITMQ_SERVER.exists() else [f"{RABBITMQ_SERVER} (rabbitmq-server)"]
        return missing + ([] if shutil.which("epmd") else ["epmd (erlang-base)"])

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _prepare(self) -> None:
        (self.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq's

    def _command(self) -> list[str]:
        return [str(RABBITMQ_SERVER)]

    def _environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),  # so the Erlang cookie is ours alone
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),  # never the machine's epmd on 4369
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_PID_FILE": str(self.home / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
        }

    def _is_ready(self) -> bool:
        # The AMQP port opens only once the broker has booted; a real client login proves it.
        return port_open(self.port) and amqp_connects(self.url)

    def _cleanup(self) -> None:
        """Stop the epmd this node started on its own port."""
        env = {**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"}
        command = ["epmd", "-port", str(self.epmd_port), "-kill"]
        deadline = time.monotonic() + 5.0
        # Just after a kill() epmd still lists the dead node for a moment and refuses to stop.
        while port_open(self.epmd_port) and time.monotonic() < deadline:
            subprocess.run(command, env=env, capture_output=True, check=False, timeout=10)
            wait_until(lambda: not port_open(self.epmd_port), time.monotonic() + 0.5)
        if not port_open(self.epmd_port):
            return
        # Last resort: the epmd whose environment names our port and home is ours.
        marks = {f"ERL_EPMD_PORT={self.epmd_port}".encode(), f"HOME={self.home}".encode()}
        for pid, name, _, _ in processes():
            if name != "epmd":
                continue
            with contextlib.suppress(OSError):
                if marks <= set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")):
                    os.kill(pid, signal.SIGKILL)
        if not wait_until(lambda: not port_open(self.epmd_port), time.monotonic() + 5.0):
            raise ServerError(f"epmd on port {self.epmd_port} did not stop")


def amqp_connects(url: str) -> bool:
    async def attempt() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        await connection.close()

    # A thread of its own, so this also works when called from inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        try:
            executor.submit(asyncio.run, attempt()).result(timeout=15)
        except Exception:  # whatever the failure, the broker is not ready yet
            return False
    return True
