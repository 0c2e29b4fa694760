"""`taskwire dev`, the README's run command, passes the same lifecycle with no servers at all,
and serves the task console at `/`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
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


async def test_dev_mode_serves_the_console(dev_server: tuple[TaskwireProcess, int]) -> None:
    process, port = dev_server
    base = f"http://127.0.0.1:{port}"
    await wait_until_ready(base, process)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        page = await http.get("/")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy, policy
        assert "<title>Taskwire console</title>" in page.text
        # Whatever the page names, not a path this test assumes.
        scripts = re.findall(r'<script[^>]*\ssrc="([^"]+)"', page.text)
        assert scripts, "the console page references its script"
        for src in scripts:
            script = await http.get(src)
            assert script.status_code == 200, src
            assert "javascript" in script.headers["content-type"], script.headers
            assert script.headers["content-security-policy"] == policy
            assert script.text.strip(), f"{src} is empty"
