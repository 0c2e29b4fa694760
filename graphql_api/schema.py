"""The GraphQL schema. Resolvers decode, call one taskwire.service function, and convert."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from typing import Any, cast

import strawberry
from graphql import GraphQLError
from starlette.responses import Response
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from graphql_api.context import Info
from graphql_api.errors import classify
from graphql_api.operations import operation_extension
from graphql_api.types import CreateTaskInput, QueueStatsType, TaskType
from taskwire import service, stats
from taskwire.errors import RateLimited
from taskwire.settings import Settings


async def resolve_task(info: Info, id: strawberry.ID) -> TaskType | None:
    context = info.context
    task = await service.get_task(context.services, context.caller, service.parse_task_id(id))
    return TaskType.from_model(task) if task is not None else None


async def resolve_queue_stats(info: Info) -> QueueStatsType:
    context = info.context
    return QueueStatsType.from_model(await stats.queue_stats(context.services, context.caller))


async def resolve_create_task(info: Info, input: CreateTaskInput) -> TaskType:
    context = info.context
    try:
        task = await service.create_task(
            context.services,
            context.caller,
            input.input_data,
            idempotency_key=input.idempotency_key,
        )
    except RateLimited as exc:
        if isinstance(context.response, Response):
            context.response.headers["Retry-After"] = str(exc.details["retryAfter"])
        raise
    return TaskType.from_model(task)


async def resolve_cancel_task(info: Info, id: strawberry.ID) -> TaskType:
    context = info.context
    task = await service.cancel_task(context.services, context.caller, service.parse_task_id(id))
    return TaskType.from_model(task)


async def resolve_retry_task(info: Info, id: strawberry.ID) -> TaskType:
    context = info.context
    task = await service.retry_task(context.services, context.caller, service.parse_task_id(id))
    return TaskType.from_model(task)


def resolve_task_updated(info: Info, id: strawberry.ID) -> AsyncGenerator[TaskType, None]:
    # The service's generator itself, presenting each state as a TaskType and counting the
    # subscription and its deliveries: no generator of ours wrapping it for the subscription's
    # whole life.
    context = info.context
    try:
        caller, task_id = context.caller, service.parse_task_id(id)
    except Exception as error:
        problem = error

        # Raised by the stream, as before, not by the resolver: graphql-transport-ws answers a
        # resolver's error with `error` where the stream's is a `next` with errors.
        async def failing() -> AsyncGenerator[TaskType, None]:
            raise problem
            yield  # a generator: raises when the subscription starts

        return failing()
    updates = service.watch_task(context.services, caller, task_id, TaskType.from_model)
    return cast("AsyncGenerator[TaskType, None]", updates)


# Resolvers are passed with resolver= rather than decorated: the decorator form is untyped.
@strawberry.type
class Query:
    task: TaskType | None = strawberry.field(
        resolver=resolve_task, description="The task with this id, or null when there is none."
    )
    queue_stats: QueueStatsType = strawberry.field(
        resolver=resolve_queue_stats,
        description=(
            "Operators' numbers over every owner's tasks (counts only). Any full token may ask; "
            "a watch token is FORBIDDEN. A database outage fails it with SERVICE_UNAVAILABLE; "
            "a broker outage does not: brokerReachable is false and the queue fields are null."
        ),
    )


@strawberry.type
class Mutation:
    create_task: TaskType = strawberry.mutation(
        resolver=resolve_create_task,
        description=(
            "Submit work. Returns once the task is stored and cached; it is queued at the same "
            "time (and by the dispatcher, should that fail)."
        ),
    )
    cancel_task: TaskType = strawberry.mutation(
        resolver=resolve_cancel_task,
        description="PENDING -> CANCELLED. Any other state is a CONFLICT error.",
    )
    retry_task: TaskType = strawberry.mutation(
        resolver=resolve_retry_task,
        description=(
            "FAILED -> PENDING with a new budget of attempts. Any other state is a CONFLICT error."
        ),
    )


@strawberry.type
class Subscription:
    task_updated: AsyncGenerator[TaskType, None] = strawberry.subscription(
        resolver=resolve_task_updated,
        description=("The task's current state, then every change; completes after a final state."),
    )


class TaskwireSchema(strawberry.Schema):
    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        # execute() serves HTTP, where Strawberry would run a subscription as if it were a query
        # (and fail on its generator). Subscriptions are served over websockets only, where the
        # token expiry and the per-connection cap apply; over HTTP they are a 400.
        allowed = set(allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES)
        allowed.discard(OperationType.SUBSCRIPTION)
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed,
            operation_extensions,
        )

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Expected errors (bad input, not found, ...) are answers, not incidents: only the
        # unexpected ones are logged, with their traceback.
        classify(errors)


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema, with the request limits of `settings` (the defaults when none are given)."""
    return TaskwireSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[operation_extension(settings if settings is not None else Settings())],
    )
