"""The one schema extension every GraphQL operation runs through: the request limits, a cache of
valid documents, the operation metrics, hidden suggestions and masked unexpected errors.

One extension rather than four (the limits, the masking, Strawberry's ParserCache and
ValidationCache): Strawberry builds every extension for every operation and wraps each of its
hooks in a new context manager, and a subscription keeps them all for its whole life. Each one
is CPU on every request and memory on every idle subscription.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from graphql import ASTValidationRule, DocumentNode, parse
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionContext

from graphql_api.errors import mask_result
from graphql_api.limits import count_operation, error_code, exception_code, hide_in, limit_rules
from taskwire.metrics import OK
from taskwire.settings import Settings

# Distinct documents a process keeps parsed and validated: clients send a handful each.
DOCUMENTS = 1024


class DocumentCache:
    """Valid documents by their text, most recently used last, for one schema's rules.

    Keyed on the text: Strawberry's ValidationCache keys on the parsed document, whose hash
    walks the whole tree on every request, where a string's hash is one pass over its bytes.
    Only documents that passed validation are kept, so no error object (which the error
    handling annotates per request) is ever shared between requests.
    """

    def __init__(self, size: int = DOCUMENTS) -> None:
        self.size = size
        self._valid: OrderedDict[str, DocumentNode] = OrderedDict()

    def __len__(self) -> int:
        return len(self._valid)

    def __contains__(self, query: object) -> bool:
        return query in self._valid

    def prepare(self, context: ExecutionContext) -> None:
        """Give the operation its parsed document and its validation errors, so Strawberry
        neither parses nor validates it again. A document that does not parse is left to
        Strawberry, which reports it where it reports every parse error."""
        query = context.query
        if query is None or context.graphql_document is not None:
            return
        document = self._valid.get(query)
        if document is not None:
            self._valid.move_to_end(query)
            context.graphql_document = document
            context.pre_execution_errors = []
            return
        try:
            document = parse(query, **context.parse_options)
        except Exception:
            return
        errors = validate_document(context.schema._schema, document, context.validation_rules)
        context.graphql_document = document
        context.pre_execution_errors = errors
        if not errors:
            self._valid[query] = document
            if len(self._valid) > self.size:
                self._valid.popitem(last=False)


class OperationGuard(SchemaExtension):
    """Limits, cached documents, metrics, hidden suggestions and masking for one operation."""

    # A streamed operation's outcome: its first error's code, if any.
    stream_outcome: str = OK

    def __init__(
        self,
        *,
        documents: DocumentCache,
        max_tokens: int,
        rules: tuple[type[ASTValidationRule], ...],
        hide_suggestions: bool,
    ) -> None:
        self.documents = documents
        self.max_tokens = max_tokens
        self.rules = rules
        self.hide_suggestions = hide_suggestions

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self.max_tokens
        context.validation_rules = (*context.validation_rules, *self.rules)
        self.documents.prepare(context)
        started = time.perf_counter()
        raised: str | None = None
        try:
            yield
        except Exception as exc:  # e.g. a syntax error: the result is made after this hook
            raised = exception_code(exc)
            raise
        finally:
            count_operation(context, started, raised or self.stream_outcome)
        # Counted before masking, as the codes the errors were raised with; hidden before
        # masking too, so a masked error (which has no suggestion) is made only once.
        if self.hide_suggestions:
            hide_in(context.result)
        mask_result(context.result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        mask_result(result)
        if self.stream_outcome == OK and getattr(result, "errors", None):
            self.stream_outcome = error_code(result.errors)
        if self.hide_suggestions:
            hide_in(result)
        yield None


def operation_extension(
    settings: Settings, documents: DocumentCache | None = None
) -> Callable[[], OperationGuard]:
    """The extension for a schema serving `settings`. Give each schema a document cache of its
    own: the verdicts depend on that schema's limits."""
    return partial(
        OperationGuard,
        documents=documents if documents is not None else DocumentCache(),
        max_tokens=settings.max_query_tokens,
        rules=limit_rules(settings),
        hide_suggestions=not settings.introspection,
    )
