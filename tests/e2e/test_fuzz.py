"""Schema fuzzing of the running API with schemathesis (issue 4, "Proof"): queries and
mutations generated from schema.graphql, valid and invalid, sent with a bearer token to a
running `taskwire api`; not one server error and not one answer that breaks the schema.

Reproducible: examples are derandomized (a fixed seed per test), so CI runs the same ones.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import APIOperation
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.graphql.checks import GraphQLServerError
from schemathesis.specs.graphql.schemas import GraphQLSchema

from tests.e2e.conftest import Deployment
from tests.e2e.hardened import (
    TaskRows,
    assert_nothing_leaked,
    fresh_subject,
    wait_for_row_status,
)
from tests.support.auth import token_for

pytestmark = pytest.mark.timeout(120)

SCHEMA = Path(__file__).parents[2] / "schema.graphql"
EXAMPLES_PER_OPERATION = 80
POISON = "!poison!"
# The module's deployment (the `api` fixture of tests/e2e/conftest.py).
PROCESSORS = 1
SETTINGS = {
    # Fuzzing creates many tasks from one owner: the rate limit would answer most of them.
    "RATE_LIMIT_PER_MINUTE": "0",
    "TASK_DELAY_SECONDS": "0",
    "POISON_MARKER": POISON,
    "MAX_ATTEMPTS": "1",
}
# schemathesis generates queries and mutations only: Subscription.taskUpdated is served over
# websockets alone (test_bad_input_ws.py), and a subscription sent over POST is refused.
OPERATIONS = (
    "Query.task",
    "Query.queueStats",
    "Mutation.createTask",
    "Mutation.cancelTask",
    "Mutation.retryTask",
)
# Errors that are the API's documented answers to what a generated request asks. schemathesis
# counts any error raised by a resolver (it has a `path`) whose code it does not know as a
# server error; an error with one of these codes is an answer. Any other code (or none, or
# INTERNAL_SERVER_ERROR) still fails.
ANSWERS = frozenset({"BAD_USER_INPUT", "NOT_FOUND", "CONFLICT"})


@pytest.fixture(scope="module")
def fuzzer() -> str:
    return fresh_subject("fuzzer")


@pytest.fixture(scope="module")
async def seed_ids(api: Deployment, rows: TaskRows, fuzzer: str) -> list[str]:
    """Ids worth trying besides random strings: the fuzzer's COMPLETED and FAILED tasks
    (cancel and retry then reach the database), another owner's task and an unknown UUID."""
    created: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for owner, text, status in (
            (fuzzer, "seed", "COMPLETED"),
            (fuzzer, f"seed {POISON}", "FAILED"),
            (fresh_subject("other"), "not the fuzzer's", "COMPLETED"),
        ):
            response = await http.post(
                api.http_url,
                json={
                    "query": "mutation($i: String!) { createTask(input: {inputData: $i}) { id } }",
                    "variables": {"i": text},
                },
                headers={"Authorization": f"Bearer {token_for(owner)}"},
            )
            task_id = response.json()["data"]["createTask"]["id"]
            created[task_id] = status
    for task_id, status in created.items():
        await wait_for_row_status(rows, task_id, status)
    return [*created, str(uuid.uuid4())]


def load_schema(seed_ids: list[str]) -> GraphQLSchema:
    config = SchemathesisConfig.from_dict(
        {
            "dictionaries": {"task-ids": {"values": seed_ids}},
            # Half of the generated `id` arguments are real ids; the rest stay random strings.
            "parameters": {"*.*.id": {"dictionary": "task-ids", "probability": 0.5}},
        }
    )
    return schemathesis.graphql.from_path(SCHEMA, config=config)


def operations_of(schema: GraphQLSchema) -> dict[str, APIOperation[Any, Any, Any, Any]]:
    """The operations schemathesis will fuzz, by label; a schema it cannot read fails here."""
    found: dict[str, APIOperation[Any, Any, Any, Any]] = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found[result.ok().label] = result.ok()
    return found


def no_server_error(ctx: Any, response: Any, case: schemathesis.Case[Any]) -> None:
    """schemathesis' not_a_server_error (no 5xx, no error that is the server's fault), where
    an error carrying one of the API's documented answer codes is not the server's fault."""
    try:
        not_a_server_error(ctx, response, case)
    except GraphQLServerError as failure:
        codes = {str((error.get("extensions") or {}).get("code")) for error in failure.errors}
        if not codes <= ANSWERS:
            raise


def test_the_fuzzed_operations_are_all_but_the_subscription(seed_ids: list[str]) -> None:
    assert set(operations_of(load_schema(seed_ids))) == set(OPERATIONS)
    assert "taskUpdated" in SCHEMA.read_text()  # the one operation not fuzzed over HTTP


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzzed_requests_get_no_server_error_and_follow_the_schema(
    api: Deployment, seed_ids: list[str], fuzzer: str, label: str, mode: GenerationMode
) -> None:
    operation = operations_of(load_schema(seed_ids))[label]
    headers = {"Authorization": f"Bearer {token_for(fuzzer)}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(
            base_url=api.http_url,
            headers=headers,
            checks=[no_server_error, response_schema_conformance],
        )
        assert_nothing_leaked(response.text, api)

    check()
