"""The per-operation extension (graphql_api.operations): documents parsed and validated once per
text, nothing shared for refused ones, a bounded cache, and one extension per operation."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest
import strawberry
import strawberry.schema.schema as strawberry_schema
from graphql import DocumentNode
from strawberry.types import ExecutionResult

import graphql_api.operations
from graphql_api.operations import DocumentCache, OperationGuard
from tests.support.schemas import Query, Subscription, wired_schema


def make_schema(documents: DocumentCache) -> strawberry.Schema:
    return wired_schema(query=Query, subscription=Subscription, documents=documents)


READ = "query Read($id: ID!) { task(id: $id) { id status } }"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts parsed, by the cache or by Strawberry itself."""
    seen: list[str] = []

    def counting(parse: Callable[..., DocumentNode]) -> Callable[..., DocumentNode]:
        def parse_and_note(source: Any, **options: Any) -> DocumentNode:
            seen.append(str(source))
            return parse(source, **options)

        return parse_and_note

    for module in (graphql_api.operations, strawberry_schema):
        monkeypatch.setattr(module, "parse", counting(module.parse))
    return seen


async def read(schema: strawberry.Schema, query: str = READ) -> ExecutionResult:
    return await schema.execute(query, variable_values={"id": "7"})


async def test_a_valid_document_is_parsed_once_for_every_request(parses: list[str]) -> None:
    documents = DocumentCache()
    schema = make_schema(documents)
    for _ in range(3):
        result = await read(schema)
        assert result.errors is None
        assert result.data == {"task": {"id": "7", "status": "DONE"}}
    assert parses == [READ]
    assert READ in documents


async def test_a_refused_document_is_kept_by_nobody(parses: list[str]) -> None:
    documents = DocumentCache()
    schema = make_schema(documents)
    query = "{ task(id: 1) { stauts } }"
    first, second = await read(schema, query), await read(schema, query)
    assert first.errors
    assert second.errors
    assert first.errors[0].message == second.errors[0].message
    # Errors are annotated per request (request ids, hidden suggestions): never shared.
    assert first.errors[0] is not second.errors[0]
    assert len(documents) == 0
    assert parses == [query, query]


async def test_a_document_that_does_not_parse_is_reported_as_before(parses: list[str]) -> None:
    documents = DocumentCache()
    result = await read(make_schema(documents), "{ task(id: 1) { id }")
    assert result.errors is not None
    assert (result.errors[0].extensions or {}).get("code") == "GRAPHQL_PARSE_FAILED"
    assert len(documents) == 0


async def test_the_cache_keeps_the_most_recently_used_documents() -> None:
    documents = DocumentCache(size=2)
    schema = make_schema(documents)
    one, two, three = (f"{{ task(id: {n}) {{ id }} }}" for n in (1, 2, 3))
    for query in (one, two, one, three):
        assert (await read(schema, query)).errors is None
    assert (one in documents, two in documents, three in documents) == (True, False, True)
    assert len(documents) == 2


async def test_an_operation_runs_through_one_extension() -> None:
    # Strawberry builds every extension per operation and a subscription keeps them all.
    schema = make_schema(DocumentCache())
    built = schema.get_extensions()
    assert [type(extension) for extension in built] == [OperationGuard]


async def test_a_subscription_is_served_from_the_same_cache(parses: list[str]) -> None:
    documents = DocumentCache()
    schema = make_schema(documents)
    query = 'subscription { taskUpdated(id: "3") { id status } }'
    for _ in range(2):
        stream = await schema.subscribe(query)
        assert isinstance(stream, AsyncGenerator)
        results = [result async for result in stream]
        assert [result.data for result in results] == [
            {"taskUpdated": {"id": "3", "status": "DONE"}}
        ]
    assert parses == [query]
