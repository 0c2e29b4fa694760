"""Each task's attempt budget.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The budget rows from before this revision get (the old fixed MAX_ATTEMPTS default).
DEFAULT_ATTEMPT_LIMIT = 3


def upgrade() -> None:
    # NOT NULL with a constant default: both PostgreSQL and SQLite add it to existing rows in
    # place, without rewriting the table. The default stays so that a process still running the
    # previous release (which does not know the column) can go on inserting during a rollout.
    op.add_column(
        "tasks",
        sa.Column(
            "attempt_limit",
            sa.Integer(),
            nullable=False,
            server_default=sa.text(str(DEFAULT_ATTEMPT_LIMIT)),
        ),
    )
    # Takeovers and hand-backs were unbounded before, so old rows may have used up the default.
    # Keep what the store relies on: attempts <= attempt_limit, and a PENDING task always has an
    # attempt left (it gets one more go). A running one finishes normally; should its worker
    # be lost, the next claim gives it up instead of starting yet another attempt.
    tasks = sa.table(
        "tasks", sa.column("status"), sa.column("attempts"), sa.column("attempt_limit")
    )
    op.execute(
        tasks.update()
        .where(tasks.c.status == "PENDING", tasks.c.attempts >= DEFAULT_ATTEMPT_LIMIT)
        .values(attempt_limit=tasks.c.attempts + 1)
    )
    op.execute(
        tasks.update()
        .where(tasks.c.status != "PENDING", tasks.c.attempts > DEFAULT_ATTEMPT_LIMIT)
        .values(attempt_limit=tasks.c.attempts)
    )


def downgrade() -> None:
    # Batch mode: SQLite before 3.35 cannot drop a column in place; Alembic copies the table.
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("attempt_limit")
