"""`taskwire dev`, the README's run command, passes the same lifecycle with no servers at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_lifecycle import assert_lifecycle
from tests.support.client import SUBPROTOCOLS, create_task, follow
from tests.support.processes import TaskwireProcess, free_port, wait_until_ready

pytestmark = pytest.mark.timeout(90)

SERVER_VARIABLES = ("DATABASE_URL", "REDIS_URL", "RABBITMQ_URL")


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TaskwireProcess, int]]:
    workdir = tmp_path_factory.mktemp("dev")
    port = free_port()
    process = TaskwireProcess(
        "dev",
        ["dev", "--port", str(port)],
        env={"TASK_DELAY_SECONDS": "1"},
        log_dir=workdir,
        cwd=workdir,
    )
    for name in SERVER_VARIABLES:
        process.env.pop(name, None)
    process.start()
    try:
        yield process, port
    finally:
        assert process.stop() == 0, process.log_tail()
    assert (Path(workdir) / "taskwire.db").exists(), "dev mode keeps its tasks in a SQLite file"


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_dev_mode_runs_the_whole_lifecycle(
    dev_server: tuple[TaskwireProcess, int], subprotocol: str
) -> None:
    process, port = dev_server
    await wait_until_ready(f"http://127.0.0.1:{port}", process)
    text = f"dev mode {subprotocol}"
    created = await create_task(f"http://127.0.0.1:{port}/graphql", text)
    seen = await follow(f"ws://127.0.0.1:{port}/graphql", created["id"], subprotocol)
    assert_lifecycle(created, seen, text)
    late = await follow(f"ws://127.0.0.1:{port}/graphql", created["id"], subprotocol, timeout=5)
    assert [t["status"] for t in late] == ["COMPLETED"]
