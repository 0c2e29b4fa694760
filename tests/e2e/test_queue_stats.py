"""queueStats and `taskwire status` against a real deployment (API, two processors, PostgreSQL,
RabbitMQ): the numbers follow the tasks, a poisoned task shows up dead-lettered, a watch token
may not ask, and the command line prints what the API answers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment
from tests.support.auth import token_for
from tests.support.processes import run_to_completion

pytestmark = pytest.mark.timeout(120)

POISON = "\u2620-stats-poison"
# One attempt: a poisoned task is FAILED and its message dead-lettered at once.
SETTINGS = {"POISON_MARKER": POISON, "MAX_ATTEMPTS": "1"}
PROCESSORS = 2
WAIT = 30.0
FIELDS = (
    "pending processing completed failed cancelled oldestPendingAge brokerReachable "
    "queued delayed deadLettered consumers asOf"
)
QUERY = f"{{ queueStats {{ {FIELDS} }} }}"
CREATE = "mutation($input: String!) { createTask(input: {inputData: $input}) { id watchToken } }"
# Read from the database, as both the API and the command line must agree on them.
TASK_COUNTS = ("pending", "processing", "completed", "failed", "cancelled")


@pytest.fixture
async def client(api: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
        yield http


async def graphql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None, *, token: str
) -> dict[str, Any]:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    body = await graphql(client, QUERY, token=token_for())
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]["queueStats"]
    return data


async def create(client: httpx.AsyncClient, text: str) -> dict[str, Any]:
    body = await graphql(client, CREATE, {"input": text}, token=token_for())
    assert "errors" not in body, body
    task: dict[str, Any] = body["data"]["createTask"]
    return task


async def stats_until(
    client: httpx.AsyncClient, done: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(WAIT):
            while not done(last := await stats(client)):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"queueStats never showed {what}: {last}") from None
    return last


def total(seen: dict[str, Any]) -> int:
    return sum(seen[key] for key in TASK_COUNTS)


def idle(seen: dict[str, Any]) -> bool:
    return bool(seen["pending"] == seen["processing"] == seen["queued"] == 0)


async def test_the_numbers_follow_the_tasks(client: httpx.AsyncClient) -> None:
    before = await stats_until(client, idle, "an idle deployment")
    assert before["brokerReachable"] is True
    assert before["oldestPendingAge"] is None

    for n in range(3):
        await create(client, f"stats {n} {uuid.uuid4().hex}")
    await create(client, f"stats {POISON} {uuid.uuid4().hex}")
    created = await stats(client)
    assert total(created) == total(before) + 4

    after = await stats_until(
        client,
        lambda seen: (
            seen["completed"] == before["completed"] + 3
            and seen["failed"] == before["failed"] + 1
            and seen["deadLettered"] == before["deadLettered"] + 1
            and idle(seen)
        ),
        "3 more COMPLETED, 1 more FAILED and dead-lettered",
    )
    assert after["oldestPendingAge"] is None
    assert after["cancelled"] == before["cancelled"]
    assert after["delayed"] == 0
    # Both processors consume from the main queue.
    assert after["consumers"] == PROCESSORS


async def test_a_watch_token_is_forbidden(client: httpx.AsyncClient) -> None:
    task = await create(client, f"watched {uuid.uuid4().hex}")
    body = await graphql(client, QUERY, token=task["watchToken"])
    assert body["data"] is None
    assert [error["extensions"]["code"] for error in body["errors"]] == ["FORBIDDEN"]


async def test_no_token_is_unauthenticated(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json={"query": QUERY})
    codes = [error["extensions"]["code"] for error in response.json()["errors"]]
    assert codes == ["UNAUTHENTICATED"]


async def test_status_json_agrees_with_the_query(
    api: Deployment, client: httpx.AsyncClient
) -> None:
    await create(client, f"for status {uuid.uuid4().hex}")
    queried = await stats_until(client, idle, "an idle deployment")
    # Its own process, settings from the environment, as an operator would run it.
    out = await asyncio.to_thread(
        run_to_completion, ["status", "--json"], env=api.env, cwd=api.workdir
    )
    printed = json.loads(out)
    assert set(printed) == set(queried)
    queried.pop("asOf")
    printed.pop("asOf")
    assert printed == queried
    assert printed["completed"] >= 1
    assert printed["brokerReachable"] is True
    assert printed["consumers"] == PROCESSORS


async def test_status_prints_a_table(api: Deployment) -> None:
    out = await asyncio.to_thread(run_to_completion, ["status"], env=api.env, cwd=api.workdir)
    lines = out.splitlines()
    assert lines[0] == "tasks (database, every owner)"
    assert f"queue {api.env['QUEUE_NAME']}" in lines
    assert any(line.split() == ["consumers", str(PROCESSORS)] for line in lines)
