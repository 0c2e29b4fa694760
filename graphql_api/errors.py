"""How errors leave the API: expected ones keep their message and code, request errors
(parse, validation, variables) get a code, and anything unexpected is masked for the client
and logged in full on the server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from taskwire.errors import TaskwireError

log = logging.getLogger(__name__)

MASKED_MESSAGE = "Unexpected error."


def is_unexpected(error: GraphQLError) -> bool:
    original = error.original_error
    return original is not None and not isinstance(original, TaskwireError)


def classify(errors: list[GraphQLError]) -> None:
    """Give request errors a code and log unexpected ones, in place, before any masking.

    Runs from Schema.process_errors, which Strawberry calls on every error path (parse
    errors included, which never reach an extension's on_operation)."""
    for error in errors:
        if is_unexpected(error):
            log.error("unexpected error at %s", error.path, exc_info=error.original_error)
        elif error.original_error is None and not (error.extensions or {}).get("code"):
            error.extensions = {"code": _request_error_code(error.message)}


def _request_error_code(message: str) -> str:
    if message.startswith("Syntax Error"):
        return "GRAPHQL_PARSE_FAILED"
    if message.startswith("Variable '$"):
        return "BAD_USER_INPUT"
    return "GRAPHQL_VALIDATION_FAILED"


def _masked(error: GraphQLError) -> GraphQLError:
    if not is_unexpected(error):
        return error
    return GraphQLError(
        MASKED_MESSAGE,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": "INTERNAL_SERVER_ERROR"},
    )


class MaskUnexpectedErrors(SchemaExtension):
    """Replaces unexpected errors in every result, streamed subscription results included.
    (Strawberry's MaskErrors with no predicate would mask validation errors too.)"""

    def on_operation(self) -> Iterator[None]:
        yield
        _mask_result(self.execution_context.result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        _mask_result(result)
        yield None


def _mask_result(result: object) -> None:
    errors = getattr(result, "errors", None)
    if errors:
        result.errors = [_masked(e) for e in errors]  # type: ignore[attr-defined]
