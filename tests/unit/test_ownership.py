"""Who may see what, through the schema: owners, watch tokens, the local user, the rate limit."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from strawberry.types import ExecutionResult

from graphql_api.auth import Authenticator
from graphql_api.schema import build_schema
from taskwire.bootstrap import Services, connect
from taskwire.identity import Principal
from taskwire.settings import Settings
from tests.support.auth import auth_settings
from tests.unit.test_schema import context_for, error_of

SCHEMA = build_schema()
ALICE = Principal(subject="alice")
BOB = Principal(subject="bob")
CREATE = (
    "mutation($input: String!, $key: String) { createTask(input: {inputData: $input, "
    "idempotencyKey: $key}) { id status watchToken } }"
)
GET = "query($id: ID!) { task(id: $id) { id status watchToken } }"
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { id } }"
RETRY = "mutation($id: ID!) { retryTask(id: $id) { id } }"
WATCH = "subscription($id: ID!) { taskUpdated(id: $id) { id status } }"


async def run(
    services: Services, principal: Principal, query: str, **variables: Any
) -> ExecutionResult:
    return await SCHEMA.execute(
        query, variable_values=variables, context_value=context_for(services, principal)
    )


async def create(
    services: Services, principal: Principal, text: str = "x", key: str | None = None
) -> dict[str, Any]:
    result = await run(services, principal, CREATE, input=text, key=key)
    assert result.errors is None, result.errors
    assert result.data is not None
    task: dict[str, Any] = result.data["createTask"]
    return task


async def first_event(services: Services, principal: Principal, task_id: str) -> ExecutionResult:
    stream = await SCHEMA.subscribe(
        WATCH, variable_values={"id": task_id}, context_value=context_for(services, principal)
    )
    assert isinstance(stream, AsyncGenerator)
    try:
        result: ExecutionResult = await anext(stream)
    finally:
        await stream.aclose()
    return result


def watcher(token: str) -> Principal:
    return Authenticator(auth_settings()).from_header(f"Bearer {token}")


async def answers_for(services: Services, principal: Principal, task_id: str) -> list[object]:
    """What each operation tells `principal` about `task_id`, with the id itself left out."""
    got = await run(services, principal, GET, id=task_id)
    answers: list[object] = [got.data, got.errors]
    for mutation in (CANCEL, RETRY):
        answers.append(error_of(await run(services, principal, mutation, id=task_id)))
    answers.append(error_of(await first_event(services, principal, task_id)))
    return answers


async def test_another_owners_task_answers_as_a_missing_one(services: Services) -> None:
    alices = await create(services, ALICE)

    seen_by_bob = await answers_for(services, BOB, alices["id"])
    missing = await answers_for(services, BOB, str(uuid.uuid4()))

    assert seen_by_bob == missing
    assert seen_by_bob[0] == {"task": None}
    assert seen_by_bob[2][1] == "NOT_FOUND"  # type: ignore[index]
    # And alice's task is untouched: still hers, still PENDING.
    mine = await run(services, ALICE, GET, id=alices["id"])
    assert mine.data is not None
    assert mine.data["task"]["status"] == "PENDING"


async def test_a_watch_token_reads_one_task_and_writes_nothing(services: Services) -> None:
    task = await create(services, ALICE)
    other = await create(services, ALICE)
    assert task["watchToken"]
    watching = watcher(task["watchToken"])

    mine = await run(services, watching, GET, id=task["id"])
    assert mine.data == {"task": {"id": task["id"], "status": "PENDING", "watchToken": None}}
    event = await first_event(services, watching, task["id"])
    assert event.data is not None
    assert event.data["taskUpdated"]["id"] == task["id"]

    assert (await run(services, watching, GET, id=other["id"])).data == {"task": None}
    assert error_of(await first_event(services, watching, other["id"]))[1] == "NOT_FOUND"
    for query, variables in ((CREATE, {"input": "y", "key": None}), (CANCEL, {"id": task["id"]})):
        assert error_of(await run(services, watching, query, **variables))[1] == "FORBIDDEN"


async def test_only_the_owner_gets_a_watch_token(services: Services) -> None:
    task = await create(services, ALICE)

    again = await run(services, ALICE, GET, id=task["id"])
    assert again.data is not None
    watching = watcher(again.data["task"]["watchToken"])
    assert (watching.subject, watching.task_id) == ("alice", uuid.UUID(task["id"]))
    assert not watching.may_write


async def test_the_local_user_sees_every_task(services: Services) -> None:
    alices = await create(services, ALICE)

    seen = await run(services, Principal.local(), GET, id=alices["id"])

    assert seen.data is not None
    # Seen, but no watch token: AUTH_MODE=none has no tokens to give.
    assert seen.data["task"] == {"id": alices["id"], "status": "PENDING", "watchToken": None}


async def test_idempotency_keys_are_per_owner(services: Services) -> None:
    alices = await create(services, ALICE, "same", key="k")
    bobs = await create(services, BOB, "same", key="k")

    assert alices["id"] != bobs["id"]
    assert (await create(services, ALICE, "same", key="k"))["id"] == alices["id"]


@pytest.fixture
async def limited(settings: Settings) -> AsyncGenerator[Services, None]:
    from taskwire.db import migrate

    limited = dataclasses.replace(settings, rate_limit_per_minute=60, rate_limit_burst=2)
    await migrate(limited.database_url)
    async with connect(limited) as services:
        yield services


async def test_create_is_rate_limited_per_owner(limited: Services) -> None:
    await create(limited, ALICE)
    await create(limited, ALICE)

    refused = await run(limited, ALICE, CREATE, input="third", key=None)

    message, code = error_of(refused)
    assert code == "RATE_LIMITED"
    assert refused.errors is not None
    assert refused.errors[0].extensions == {"code": "RATE_LIMITED", "retryAfter": 1}
    assert "try again in 1 s" in message
    # Bob has his own budget.
    await create(limited, BOB)
