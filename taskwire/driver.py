"""The store's statements compiled once to asyncpg's SQL, run on the pooled connection's driver.

SQLAlchemy keeps everything it is good at here: the table, the migrations, building the
statements, the pool with its pre-ping. What it skips is the per-call work that a hot path pays
for nothing: the execution context, the greenlet hop, and result processing per row and column
(a claim of 256 tasks is 3,328 values, each through a type processor that changes nothing on
asyncpg: timestamps already come back as aware UTC datetimes, UUIDs as uuid.UUID).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    sql: str
    # Positional parameters in order: a caller's name, or a value fixed in the statement.
    names: tuple[str, ...]
    fixed: Mapping[str, Any]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments; every value a caller passes must be of the driver's own
        type (aware datetimes, UUIDs, lists for arrays), since no bind processor runs."""
        fixed = self.fixed
        return [params[name] if name in params else fixed[name] for name in self.names]


class StatementCache:
    """Compiled statements of one dialect, by statement object (the statements are built once
    at import, see taskwire.statements)."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._compiled: dict[int, tuple[sa.Executable, CompiledStatement]] = {}

    def get(self, statement: sa.Executable) -> CompiledStatement:
        entry = self._compiled.get(id(statement))
        if entry is not None and entry[0] is statement:
            return entry[1]
        if not isinstance(statement, sa.ClauseElement):
            raise TypeError(f"not a compilable statement: {statement!r}")
        compiled = statement.compile(dialect=self._dialect)
        if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
            raise TypeError(f"{self._dialect.name} does not compile to positional parameters")
        names = tuple(compiled.positiontup)
        # Binds a caller names start with "p_" (taskwire.statements); the rest are literals
        # that SQLAlchemy turned into parameters, with their value in the statement.
        every = compiled.construct_params(_check=False)
        fixed = {name: value for name, value in every.items() if not name.startswith("p_")}
        result = CompiledStatement(sql=str(compiled), names=names, fixed=fixed)
        # The statement is kept alongside: its id can then never be reused by another object.
        self._compiled[id(statement)] = (statement, result)
        return result
