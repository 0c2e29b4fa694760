"""Small test schemas wired like the real one (graphql_api.schema): errors classified as the
API's schema classifies them, and the one extension every operation runs through; and a toy
task schema (a task that nests, a create mutation, a one-state subscription) to wire."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.types import ExecutionContext

from graphql_api.errors import classify
from graphql_api.operations import DocumentCache, operation_extension
from taskwire.settings import Settings


@strawberry.type
class Task:
    id: strawberry.ID
    status: str

    @strawberry.field
    def parent(self) -> Task:
        return Task(id=strawberry.ID("parent"), status="DONE")


@strawberry.input
class TaskInput:
    input_data: str


@strawberry.type
class Query:
    @strawberry.field
    def task(self, id: strawberry.ID) -> Task:
        return Task(id=id, status="DONE")


@strawberry.type
class Mutation:
    @strawberry.mutation
    def create_task(self, input: TaskInput) -> Task:
        return Task(id=strawberry.ID("new"), status="PENDING")


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def task_updated(self, id: strawberry.ID) -> AsyncGenerator[Task, None]:
        yield Task(id=id, status="DONE")


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
