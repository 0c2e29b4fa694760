"""How errors leave the API: expected ones keep their message and code, request errors
(parse, validation, variables) get a code, and anything unexpected is masked for the client
and logged in full on the server, both with the same request id to match them."""

from __future__ import annotations

import logging
import re
import uuid

from graphql import GraphQLError

from graphql_api.middleware import current_request_id
from taskwire.errors import TaskwireError

log = logging.getLogger(__name__)

MASKED_MESSAGE = "Unexpected error."
# The extension a masked error carries: the id the server's log line has too.
REQUEST_ID = "requestId"


def is_unexpected(error: GraphQLError) -> bool:
    original = error.original_error
    if original is None or isinstance(original, TaskwireError):
        return False
    # graphql-core 3.3 reports a variable value it cannot coerce ("Variable '$id' has invalid
    # value: ...") as an error wrapping another GraphQLError, before execution (no path): the
    # client's mistake, not an incident. Errors with a path come from resolving a field.
    return not (isinstance(original, GraphQLError) and error.path is None)


def classify(errors: list[GraphQLError]) -> None:
    """Give request errors a code and log unexpected ones, in place, before any masking.

    Runs from Schema.process_errors, which Strawberry calls on every error path (parse
    errors included, which never reach an extension's on_operation)."""
    for error in errors:
        if is_unexpected(error):
            request_id = request_id_of(error)
            log.error(
                "unexpected error at %s (request %s)",
                error.path,
                request_id,
                exc_info=error.original_error,
                extra={"request_id": request_id},
            )
        elif not (error.extensions or {}).get("code"):
            error.extensions = {
                **(error.extensions or {}),
                "code": _request_error_code(error.message),
            }


def request_id_of(error: GraphQLError) -> str:
    """The id under which an unexpected error is logged and shown: the request's, or a new
    one outside of a request (schema.execute from a test or script). Kept on the error so its
    log line and its masked copy agree whichever comes first."""
    extensions = error.extensions or {}
    known = extensions.get(REQUEST_ID)
    if isinstance(known, str):
        return known
    request_id = current_request_id() or uuid.uuid4().hex
    # Only on the unexpected (original) error, which never reaches the client.
    error.extensions = {**extensions, REQUEST_ID: request_id}
    return request_id


_BAD_VARIABLE_VALUE = re.compile(r"Variable '\$\w+' (has|got) invalid value")


def _request_error_code(message: str) -> str:
    # Includes the token limit ("Syntax Error: Document contains more than N tokens."): the
    # document was refused while being parsed.
    if message.startswith("Syntax Error"):
        return "GRAPHQL_PARSE_FAILED"
    # A variable's value that does not fit its type is the caller's input; a document that
    # declares or uses variables wrongly ("is never used", "is not defined") is not valid.
    if _BAD_VARIABLE_VALUE.match(message):
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
        extensions={"code": "INTERNAL_SERVER_ERROR", REQUEST_ID: request_id_of(error)},
    )


def mask_result(result: object) -> None:
    """Replaces unexpected errors in a result, streamed subscription results included.
    (Strawberry's MaskErrors with no predicate would mask validation errors too.)"""
    errors = getattr(result, "errors", None)
    if errors:
        result.errors = [_masked(e) for e in errors]  # type: ignore[attr-defined]
