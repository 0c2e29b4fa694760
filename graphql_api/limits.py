"""Limits on what one GraphQL document may ask for (OWASP GraphQL cheat sheet): its size in
tokens, its depth, its aliases and, when introspection is off, no introspection and no
"Did you mean ...?" hints that would spell the schema out field by field.

Depth and aliases are our own validation rules rather than Strawberry's QueryDepthLimiter and
MaxAliasesLimiter: those walk every path through the fragments, so a ~200-token document
whose fragments each spread the next one eight times kept a core busy for 45 s, and a spread
of an undefined fragment raised KeyError (an internal error instead of a validation error).
These rules measure each fragment once. Both are built once per schema, as are the verdicts
cached on them (graphql_api.operations).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, ClassVar

from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSyntaxError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
)
from graphql.language.visitor import SKIP, VisitorAction
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType

from taskwire.metrics import Metrics
from taskwire.settings import Settings

VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
# The standard introspection query (graphql-core's, and GraphiQL 3.8.3's) nests `ofType` nine
# times and is 14 deep: introspection fields get this much room even when max_query_depth is
# lower, so GraphiQL keeps working where introspection is on, yet stays bounded there too.
INTROSPECTION_MAX_DEPTH = 14


def limit_rules(settings: Settings) -> tuple[type[ASTValidationRule], ...]:
    """The validation rules that enforce the settings' depth, alias and introspection limits
    (the token limit is a parse option: graphql_api.operations applies both)."""
    rules: list[type[ASTValidationRule]] = [
        depth_limit(settings.max_query_depth),
        alias_limit(settings.max_aliases),
    ]
    if not settings.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    return tuple(rules)


def count_operation(context: ExecutionContext, started: float, stream_outcome: str) -> None:
    """One operation in the metrics, by name and outcome, with its latency unless it streamed."""
    metrics = getattr(getattr(context.context, "services", None), "metrics", None)
    if not isinstance(metrics, Metrics):  # executed without the app (tests, scripts)
        return
    errors = getattr(context.result, "errors", None)
    outcome = error_code(errors) if errors else stream_outcome
    try:
        subscription = (
            context.graphql_document is not None
            and context.operation_type is OperationType.SUBSCRIPTION
        )
    except Exception:  # no such operation in the document: it failed, and it was no stream
        subscription = False
    seconds = None if subscription else time.perf_counter() - started
    metrics.operation(context.operation_name, outcome, seconds)


def exception_code(exc: Exception) -> str:
    if isinstance(exc, GraphQLSyntaxError):
        return PARSE_FAILED
    if isinstance(exc, GraphQLError):
        return error_code([exc])
    return "error"


def error_code(errors: list[GraphQLError]) -> str:
    code = (errors[0].extensions or {}).get("code")
    return code if isinstance(code, str) else "error"


class _LimitRule(ValidationRule):
    limit: ClassVar[int]

    def refuse(self, message: str, node: OperationDefinitionNode) -> None:
        self.report_error(GraphQLError(message, node, extensions={"code": VALIDATION_FAILED}))

    def fragments(self) -> dict[str, FragmentDefinitionNode]:
        return {
            definition.name.value: definition
            for definition in self.context.document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }


def depth_limit(max_depth: int) -> type[ASTValidationRule]:
    """A rule refusing operations nested deeper than max_depth: `{ task { id } }` is 1 deep
    (as with Strawberry's QueryDepthLimiter)."""

    class QueryDepthLimit(_DepthRule):
        limit = max_depth

    return QueryDepthLimit


def alias_limit(max_aliases: int) -> type[ASTValidationRule]:
    """A rule refusing operations with more than max_aliases aliases, counting a fragment's
    aliases each time it is spread."""

    class QueryAliasLimit(_AliasRule):
        limit = max_aliases

    return QueryAliasLimit


class _DepthRule(_LimitRule):
    def enter_operation_definition(
        self, node: OperationDefinitionNode, *_args: Any
    ) -> VisitorAction:
        # Runs after graphql-core's own check that fragments do not nest past its recursion
        # guard (it aborts validation first), so the recursion here is bounded; the guard
        # below is for a lower interpreter limit.
        fragments = self.fragments()
        try:
            own = _depth(node.selection_set, fragments, {}, introspection=False)
            total = _depth(node.selection_set, fragments, {}, introspection=True)
        except RecursionError:
            own = total = self.limit + 1
        if own - 1 > self.limit:
            self.refuse(f"Query is too deep (max {self.limit}).", node)
        elif total - 1 > max(self.limit, INTROSPECTION_MAX_DEPTH):
            self.refuse(f"Query is too deep (max {INTROSPECTION_MAX_DEPTH}).", node)
        return SKIP


class _AliasRule(_LimitRule):
    def enter_operation_definition(
        self, node: OperationDefinitionNode, *_args: Any
    ) -> VisitorAction:
        try:
            count = _aliases(node.selection_set, self.fragments(), {}, self.limit + 1)
        except RecursionError:
            count = self.limit + 1
        if count > self.limit:
            self.refuse(f"Query has too many aliases (max {self.limit}).", node)
        return SKIP


# Both walks visit each fragment once (memo). A spread of a fragment still being measured (a
# cycle) or of an unknown one counts 0: NoFragmentCyclesRule and KnownFragmentNamesRule report
# those, and the document is refused anyway.


def _depth(
    selections: SelectionSetNode,
    fragments: dict[str, FragmentDefinitionNode],
    memo: dict[str, int],
    *,
    introspection: bool,
) -> int:
    """The longest chain of nested fields; with introspection=False, `__` fields are skipped."""
    deepest = 0
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            if not introspection and selection.name.value.startswith("__"):
                continue
            below = selection.selection_set
            depth = 1 + (
                _depth(below, fragments, memo, introspection=introspection) if below else 0
            )
        elif isinstance(selection, InlineFragmentNode):
            depth = _depth(selection.selection_set, fragments, memo, introspection=introspection)
        elif isinstance(selection, FragmentSpreadNode):
            depth = _fragment(
                selection.name.value,
                fragments,
                memo,
                lambda spread: _depth(spread, fragments, memo, introspection=introspection),
            )
        else:  # pragma: no cover - graphql-core has no other selection kinds
            depth = 0
        deepest = max(deepest, depth)
    return deepest


def _aliases(
    selections: SelectionSetNode,
    fragments: dict[str, FragmentDefinitionNode],
    memo: dict[str, int],
    cap: int,
) -> int:
    """Aliases in the selections, fragments counted once per spread; stops counting at cap."""
    count = 0
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            if selection.alias is not None:
                count += 1
            if selection.selection_set:
                count += _aliases(selection.selection_set, fragments, memo, cap)
        elif isinstance(selection, InlineFragmentNode):
            count += _aliases(selection.selection_set, fragments, memo, cap)
        elif isinstance(selection, FragmentSpreadNode):
            count += _fragment(
                selection.name.value,
                fragments,
                memo,
                lambda spread: _aliases(spread, fragments, memo, cap),
            )
        if count >= cap:
            return cap
    return count


def _fragment(
    name: str,
    fragments: dict[str, FragmentDefinitionNode],
    memo: dict[str, int],
    measure: Callable[[SelectionSetNode], int],
) -> int:
    if name in memo:
        return memo[name]
    fragment = fragments.get(name)
    if fragment is None:
        return 0
    memo[name] = 0  # what a cycle back to this fragment sees
    memo[name] = measure(fragment.selection_set)
    return memo[name]


_SUGGESTION = re.compile(r" Did you mean [^?]*\?")


def hide_suggestions(message: str) -> str:
    """The message without graphql-core's " Did you mean 'x', or 'y'?" hints."""
    return _SUGGESTION.sub("", message)


def hide_in(result: object) -> None:
    # "Did you mean ...?" goes from every error (validation and variable coercion alike): with
    # introspection off those hints would still spell out field, type and argument names.
    # Results get new error objects rather than edited ones.
    errors: list[GraphQLError] | None = getattr(result, "errors", None)
    if errors:
        result.errors = [_without_suggestions(e) for e in errors]  # type: ignore[attr-defined]


def _without_suggestions(error: GraphQLError) -> GraphQLError:
    message = hide_suggestions(error.message)
    if message == error.message:
        return error
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=error.extensions,
    )
