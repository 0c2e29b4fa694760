"""The document limits (graphql_api.limits) on a small schema wired like the real one: the
error masking first, then the limits, then the parser and validation caches."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest
import strawberry
from graphql import get_introspection_query
from strawberry.types import ExecutionResult

from graphql_api.limits import INTROSPECTION_MAX_DEPTH, hide_suggestions
from taskwire.settings import Settings
from tests.support.schemas import Mutation, Query, Subscription, wired_schema


def make_schema(**overrides: Any) -> strawberry.Schema:
    return wired_schema(
        query=Query, mutation=Mutation, subscription=Subscription, settings=Settings(**overrides)
    )


CLOSED = make_schema()  # the defaults: introspection off, depth 10, 15 aliases, 1000 tokens
OPEN = make_schema(introspection=True)


def nested(depth: int) -> str:
    """A query `depth` deep: task { parent { ... { id } } }."""
    return "{ task(id: 1) { " + "parent { " * depth + "id" + " }" * depth + " } }"


def aliased(count: int) -> str:
    return "{ " + " ".join(f"a{i}: task(id: {i}) {{ id }}" for i in range(count)) + " }"


def fan_out(levels: int, spreads: int, *, field: str) -> str:
    """Fragments that each spread the next one `spreads` times: a path count of spreads**levels
    from a couple of hundred tokens."""
    fragments = "".join(
        f"fragment F{i} on Task {{ {field.format(i=i)} {f' ...F{i + 1}' * spreads} }}"
        + (" }" if field.endswith("{{") else "")
        for i in range(levels)
    )
    return "{ task(id: 1) { ...F0 } } " + fragments + f" fragment F{levels} on Task {{ id }}"


def tokens(count: int) -> str:
    """A valid query of exactly `count` tokens."""
    fields = " ".join(("id", "status")[i % 2] for i in range(count - 10))
    return "{ task(id: 1) { " + fields + " } }"


COMMENTS = "{ task(id: 1) { id } }" + "\n#" * 1200


async def execute(schema: strawberry.Schema, query: str, **variables: Any) -> ExecutionResult:
    return await schema.execute(query, variable_values=variables or None)


def messages(result: ExecutionResult) -> str:
    assert result.errors, f"expected a refusal, got {result.data}"
    return " | ".join(error.message for error in result.errors)


def refusal(result: ExecutionResult) -> tuple[str, str]:
    assert result.errors, f"expected a refusal, got {result.data}"
    error = result.errors[0]
    return error.message, (error.extensions or {}).get("code", "")


@pytest.mark.parametrize(
    ("name", "query", "code", "message"),
    [
        ("depth flood", nested(10), "GRAPHQL_VALIDATION_FAILED", "Query is too deep (max 10)."),
        ("alias flood", aliased(16), "GRAPHQL_VALIDATION_FAILED", "too many aliases (max 15)"),
        (
            "aliases counted per spread",
            "{ a: task(id: 1) { ...F } b: task(id: 2) { ...F } c: task(id: 3) { ...F } } "
            "fragment F on Task { w: id x: id y: id z: id s: status }",
            "GRAPHQL_VALIDATION_FAILED",
            "too many aliases (max 15)",
        ),
        (
            "alias fan-out through fragments",
            fan_out(8, 8, field="a{i}: id"),
            "GRAPHQL_VALIDATION_FAILED",
            "too many aliases (max 15)",
        ),
        (
            "depth fan-out through fragments",
            fan_out(12, 8, field="parent {{"),
            "GRAPHQL_VALIDATION_FAILED",
            "Query is too deep (max 10).",
        ),
        ("token flood", tokens(1001), "GRAPHQL_PARSE_FAILED", "more than 1000 tokens"),
        ("comment flood", COMMENTS, "GRAPHQL_PARSE_FAILED", "more than 1000 tokens"),
        (
            "cyclic fragments",
            "{ task(id: 1) { ...A } } fragment A on Task { ...B } fragment B on Task { ...A }",
            "GRAPHQL_VALIDATION_FAILED",
            "Cannot spread fragment 'A' within itself via 'B'.",
        ),
        (
            "a fragment spreading itself under a field",
            "{ task(id: 1) { ...A } } fragment A on Task { parent { ...A } }",
            "GRAPHQL_VALIDATION_FAILED",
            "Cannot spread fragment 'A' within itself.",
        ),
        (
            "unknown fragment",
            "{ task(id: 1) { ...Missing } }",
            "GRAPHQL_VALIDATION_FAILED",
            "Unknown fragment 'Missing'.",
        ),
        (
            "introspection off",
            "{ __schema { types { name } } }",
            "GRAPHQL_VALIDATION_FAILED",
            "introspection has been disabled",
        ),
        (
            "type introspection off",
            '{ __type(name: "Task") { fields { name } } }',
            "GRAPHQL_VALIDATION_FAILED",
            "introspection has been disabled",
        ),
    ],
)
async def test_a_refused_document_gets_a_clear_message_and_a_code(
    name: str, query: str, code: str, message: str
) -> None:
    for attempt in ("first", "cached"):
        started = time.perf_counter()
        result = await execute(CLOSED, query)
        seconds = time.perf_counter() - started
        assert result.data is None, (name, attempt)
        got_message, got_code = refusal(result)
        assert got_code == code, (name, attempt, got_message)
        assert message in got_message, (name, attempt)
        assert "Unexpected error" not in str(result.errors), "a refusal is not a crash"
        # Strawberry's own limiters took ~45 s on the fan-out rows.
        assert seconds < 1.0, (name, attempt, seconds)


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("depth at the limit", nested(9)),  # task + 10 nested fields = depth 10
        ("aliases at the limit", aliased(15)),
        ("tokens at the limit", tokens(1000)),
        (
            "a fragment used twice",
            "{ task(id: 1) { ...F parent { ...F } } } fragment F on Task { id }",
        ),
        ("typename with introspection off", "{ __typename task(id: 1) { __typename id } }"),
    ],
)
async def test_documents_within_the_limits_run(name: str, query: str) -> None:
    result = await execute(CLOSED, query)
    assert result.errors is None, (name, result.errors)
    assert result.data is not None


async def test_the_introspection_query_runs_when_introspection_is_on() -> None:
    # It is 14 deep, deeper than max_query_depth (10): introspection fields get more room.
    result = await execute(OPEN, get_introspection_query(descriptions=True))
    assert result.errors is None, result.errors
    assert result.data is not None
    names = {t["name"] for t in result.data["__schema"]["types"]}
    assert {"Task", "Query", "Mutation", "Subscription"} <= names
    refused = await execute(CLOSED, get_introspection_query(descriptions=True))
    assert "introspection has been disabled" in refusal(refused)[0]


async def test_introspection_cannot_nest_without_bound_when_on() -> None:
    levels = INTROSPECTION_MAX_DEPTH
    query = "{ __schema { types { " + "fields { type { " * levels + "name" + " } }" * levels
    result = await execute(OPEN, query + " } } }")
    assert refusal(result) == (
        f"Query is too deep (max {INTROSPECTION_MAX_DEPTH}).",
        "GRAPHQL_VALIDATION_FAILED",
    )
    # Ordinary fields keep the configured limit with introspection on.
    assert refusal(await execute(OPEN, nested(11)))[0] == "Query is too deep (max 10)."


@pytest.mark.parametrize(
    ("name", "query", "variables", "hint"),
    [
        ("field", "{ task(id: 1) { stauts } }", {}, "Did you mean 'status'?"),
        ("argument", "{ task(idd: 1) { id } }", {}, "Did you mean 'id'?"),
        (
            "type",
            "mutation($input: TaskInpt!) { createTask(input: $input) { id } }",
            {},
            "Did you mean 'TaskInput'",
        ),
        (
            "input field in a variable",
            "mutation($input: TaskInput!) { createTask(input: $input) { id } }",
            {"input": {"inputDta": "x"}},
            "Did you mean 'inputData'?",
        ),
    ],
)
async def test_suggestions_are_hidden_when_introspection_is_off(
    name: str, query: str, variables: dict[str, Any], hint: str
) -> None:
    shown = await execute(OPEN, query, **variables)
    assert hint in messages(shown), name
    for attempt in ("first", "cached"):
        hidden = await execute(CLOSED, query, **variables)
        assert hidden.errors is not None
        assert len(hidden.errors) == len(shown.errors or [])
        assert "Did you mean" not in messages(hidden), (name, attempt)
        for error in hidden.errors:
            code = (error.extensions or {}).get("code")
            assert code in ("GRAPHQL_VALIDATION_FAILED", "BAD_USER_INPUT"), (name, error)
            assert error.message.endswith((".", "}.")), "the rest of the message stays"
    assert hint in messages(await execute(OPEN, query, **variables)), "the cache is per schema"


async def test_suggestions_are_hidden_in_subscriptions_too() -> None:
    query = "subscription { taskUpdated(id: 1) { stauts } }"
    for schema, shown in ((OPEN, True), (CLOSED, False)):
        stream = await schema.subscribe(query)
        assert isinstance(stream, AsyncGenerator)
        # Read each result as it is yielded: that is when a websocket sends it on.
        refusals = [refusal(result) async for result in stream]
        assert len(refusals) == 1
        message, code = refusals[0]
        assert code == "GRAPHQL_VALIDATION_FAILED"
        assert ("Did you mean 'status'?" in message) is shown


async def test_the_token_limit_holds_on_a_cached_parse() -> None:
    # A document parsed and cached by a schema with a higher limit must still be refused by
    # one with a lower limit.
    query = tokens(400)
    lenient = make_schema(max_query_tokens=10_000)
    strict = make_schema(max_query_tokens=100)
    for _ in range(2):
        assert (await execute(lenient, query)).errors is None
        message, code = refusal(await execute(strict, query))
        assert code == "GRAPHQL_PARSE_FAILED"
        assert "more than 100 tokens" in message


async def test_the_validation_limits_hold_on_a_cached_validation() -> None:
    # A schema with other limits must not reuse a verdict.
    query = nested(5)
    lenient = make_schema()
    strict = make_schema(max_query_depth=3)
    for _ in range(2):
        assert (await execute(lenient, query)).errors is None
        assert refusal(await execute(strict, query))[0] == "Query is too deep (max 3)."


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Cannot query field 'stauts' on type 'Task'. Did you mean 'status'?",
            "Cannot query field 'stauts' on type 'Task'.",
        ),
        (
            "Unknown argument 'x' on field 'Query.task'. Did you mean 'a', 'b', or 'c'?",
            "Unknown argument 'x' on field 'Query.task'.",
        ),
        (
            "Value 'PENDNG' does not exist in 'TaskStatus' enum. "
            "Did you mean the enum value 'PENDING'?",
            "Value 'PENDNG' does not exist in 'TaskStatus' enum.",
        ),
        ("Query is too deep (max 10).", "Query is too deep (max 10)."),
    ],
)
def test_hide_suggestions(message: str, expected: str) -> None:
    assert hide_suggestions(message) == expected
