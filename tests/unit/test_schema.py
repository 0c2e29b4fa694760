"""The schema on the embedded adapters, through schema.execute / schema.subscribe."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from strawberry.types import ExecutionResult

from graphql_api.auth import Authenticator
from graphql_api.context import Context
from graphql_api.schema import build_schema
from taskwire import service
from taskwire.bootstrap import Services
from taskwire.identity import Principal
from tests.support.auth import TESTER, auth_settings

SCHEMA = build_schema()
TASK_FIELDS = (
    "id status inputData result error attempts version createdAt updatedAt startedAt finishedAt"
)
CREATE = (
    f"mutation($input: String!) {{ createTask(input: {{inputData: $input}}) {{ {TASK_FIELDS} }} }}"
)
GET = f"query($id: ID!) {{ task(id: $id) {{ {TASK_FIELDS} }} }}"
WATCH = "subscription($id: ID!) { taskUpdated(id: $id) { id status version result attempts } }"


def context_for(services: Services, principal: Principal = TESTER) -> Context:
    return Context(services, auth=Authenticator(auth_settings()), principal=principal)


async def execute(services: Services, query: str, **variables: Any) -> ExecutionResult:
    return await SCHEMA.execute(
        query, variable_values=variables, context_value=context_for(services)
    )


async def create(services: Services, text: str) -> dict[str, Any]:
    result = await execute(services, CREATE, input=text)
    assert result.errors is None, result.errors
    assert result.data is not None
    task: dict[str, Any] = result.data["createTask"]
    return task


async def watch(services: Services, task_id: str) -> list[dict[str, Any]]:
    stream = await SCHEMA.subscribe(
        WATCH, variable_values={"id": task_id}, context_value=context_for(services)
    )
    assert isinstance(stream, AsyncGenerator)
    seen: list[dict[str, Any]] = []
    async for result in stream:
        assert result.errors is None, result.errors
        assert result.data is not None
        seen.append(result.data["taskUpdated"])
    return seen


def error_of(result: ExecutionResult) -> tuple[str, str]:
    assert result.errors, "expected an error"
    error = result.errors[0]
    return error.message, (error.extensions or {}).get("code", "")


async def test_create_returns_a_pending_task_at_version_1(services: Services) -> None:
    task = await create(services, "hello")
    assert task["status"] == "PENDING"
    assert task["version"] == 1
    assert task["attempts"] == 0
    assert task["inputData"] == "hello"
    assert task["result"] is None
    assert uuid.UUID(task["id"])
    fetched = await execute(services, GET, id=task["id"])
    assert fetched.data == {"task": task}


async def test_an_unknown_task_is_null(services: Services) -> None:
    result = await execute(services, GET, id=str(uuid.uuid4()))
    assert result.errors is None
    assert result.data == {"task": None}


@pytest.mark.parametrize(
    "bad_id", ["42", "not-a-uuid", "'; DROP TABLE tasks; --", "x" * 10_000, ""]
)
async def test_a_malformed_id_is_bad_user_input(services: Services, bad_id: str) -> None:
    message, code = error_of(await execute(services, GET, id=bad_id))
    assert code == "BAD_USER_INPUT"
    assert message == "id must be a UUID."


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x" * (64 * 1024 + 1), "limit"),
        ("é" * (32 * 1024 + 1), "limit"),
        ("nul\x00byte", "NUL"),
        ("\ud800", "Unicode"),
    ],
)
async def test_bad_input_data_is_refused_and_nothing_is_created(
    services: Services, text: str, fragment: str
) -> None:
    message, code = error_of(await execute(services, CREATE, input=text))
    assert code == "BAD_USER_INPUT"
    assert fragment in message
    assert await services.store.due_for_dispatch(limit=10, grace_seconds=0) == []


async def test_input_exactly_at_the_limit_is_accepted(services: Services) -> None:
    task = await create(services, "x" * (64 * 1024))
    assert task["status"] == "PENDING"


async def test_validation_errors_keep_their_message_and_get_a_code(services: Services) -> None:
    message, code = error_of(await execute(services, "{ task(id: 1) { nope } }"))
    assert code == "GRAPHQL_VALIDATION_FAILED"
    assert "nope" in message
    message, code = error_of(await execute(services, GET, id=5))
    assert code == "BAD_USER_INPUT"
    message, code = error_of(await execute(services, "{ task(id: "))
    assert code == "GRAPHQL_PARSE_FAILED"


async def test_unexpected_errors_are_masked(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*args: object) -> None:
        raise RuntimeError("password=hunter2 at db.internal:5432")

    monkeypatch.setattr(service, "get_task", explode)
    result = await execute(services, GET, id=str(uuid.uuid4()))
    message, code = error_of(result)
    assert message == "Unexpected error."
    assert code == "INTERNAL_SERVER_ERROR"
    assert "hunter2" not in str(result.errors)


@pytest.mark.usefixtures("processor")
async def test_a_subscriber_sees_every_state_in_order(services: Services) -> None:
    task = await create(services, "stressed")
    seen = await watch(services, task["id"])
    statuses = [s["status"] for s in seen]
    assert statuses[-1] == "COMPLETED"
    assert seen[-1]["result"] == "desserts"
    assert seen[-1]["attempts"] == 1
    versions = [s["version"] for s in seen]
    assert versions == sorted(set(versions)), "versions must strictly increase"
    assert set(statuses) <= {"PENDING", "PROCESSING", "COMPLETED"}
    assert "PROCESSING" in statuses or versions[0] == 3


@pytest.mark.usefixtures("processor")
async def test_a_late_subscriber_gets_the_final_state_and_completes(services: Services) -> None:
    task = await create(services, "abc")
    await watch(services, task["id"])
    late = await watch(services, task["id"])
    assert late == [
        {"id": task["id"], "status": "COMPLETED", "version": 3, "result": "cba", "attempts": 1}
    ]


async def test_subscribing_to_an_unknown_task_is_not_found(services: Services) -> None:
    stream = await SCHEMA.subscribe(
        WATCH, variable_values={"id": str(uuid.uuid4())}, context_value=context_for(services)
    )
    assert isinstance(stream, AsyncGenerator)
    results = [r async for r in stream]
    assert len(results) == 1
    assert error_of(results[0])[1] == "NOT_FOUND"


def test_schema_graphql_matches_the_code() -> None:
    committed = (Path(__file__).parents[2] / "schema.graphql").read_text()
    assert committed.strip() == SCHEMA.as_str().strip(), (
        "schema.graphql drifted: regenerate it with `taskwire schema > schema.graphql`"
    )
