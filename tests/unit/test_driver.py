"""StatementCache: the store's statements as asyncpg SQL with their parameters in order."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from taskwire import statements
from taskwire.driver import StatementCache


def test_caller_values_and_fixed_literals_land_in_their_positions() -> None:
    cache = StatementCache(postgresql.asyncpg.dialect())  # type: ignore[no-untyped-call]
    compiled = cache.get(statements.CLAIM_MANY)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    ids = [uuid4(), uuid4()]

    arguments = compiled.arguments(
        {"p_ids": ids, statements.NOW: now, "p_worker": "w1", "p_lease_until": now}
    )

    assert "$1" in compiled.sql
    assert "= ANY ($" in compiled.sql
    assert len(arguments) == len(compiled.names)
    assert arguments[compiled.names.index("p_ids")] == ids
    assert arguments[compiled.names.index("p_worker")] == "w1"
    # The statuses written as Python literals in taskwire.statements travel as parameters.
    assert "PENDING" in arguments
    assert "PROCESSING" in arguments


def test_a_statement_is_compiled_once() -> None:
    cache = StatementCache(postgresql.asyncpg.dialect())  # type: ignore[no-untyped-call]
    assert cache.get(statements.GET) is cache.get(statements.GET)


def test_a_missing_caller_value_is_an_error_not_a_null() -> None:
    compiled = StatementCache(postgresql.asyncpg.dialect()).get(statements.GET)  # type: ignore[no-untyped-call]
    with pytest.raises(KeyError, match="p_id"):
        compiled.arguments({})


def test_a_dialect_without_positional_parameters_is_refused() -> None:
    # psycopg2 binds by name (pyformat): a name-to-position table would not apply.
    cache = StatementCache(postgresql.psycopg2.dialect())  # type: ignore[no-untyped-call]
    with pytest.raises(TypeError, match="positional"):
        cache.get(sa.select(sa.literal(1)))
