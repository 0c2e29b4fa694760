"""Small test schemas wired like the real one (graphql_api.schema): errors classified as the
API's schema classifies them, and the one extension every operation runs through."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.types import ExecutionContext

from graphql_api.errors import classify
from graphql_api.operations import DocumentCache, operation_extension
from taskwire.settings import Settings


class ClassifyingSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        classify(errors)


def wired_schema(
    *,
    query: type[Any],
    mutation: type[Any] | None = None,
    subscription: type[Any] | None = None,
    settings: Settings | None = None,
    documents: DocumentCache | None = None,
) -> strawberry.Schema:
    return ClassifyingSchema(
        query=query,
        mutation=mutation,
        subscription=subscription,
        extensions=[operation_extension(settings or Settings(), documents)],
    )
