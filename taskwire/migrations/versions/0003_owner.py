"""Each task's owner, and idempotency keys scoped to it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows from before owners existed get "": no token's `sub` can be empty, so only an
    # AUTH_MODE=none caller still sees them. The default also keeps a previous release
    # inserting during a rollout.
    # Batch mode: SQLite cannot drop a constraint in place (Alembic copies the table there);
    # on PostgreSQL these are plain ALTERs.
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("owner", sa.String(200), nullable=False, server_default=sa.text("''"))
        )
        batch.drop_constraint("uq_tasks_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_tasks_owner_idempotency_key", ["owner", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint("uq_tasks_owner_idempotency_key", type_="unique")
        # Fails if two owners used the same key meanwhile: that data has no pre-0003 shape.
        batch.create_unique_constraint("uq_tasks_idempotency_key", ["idempotency_key"])
        batch.drop_column("owner")
