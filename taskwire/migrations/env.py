"""Alembic environment, driven by `taskwire.db.migrate` (there is no alembic.ini).

Online migrations run on the connection that `migrate` hands over in `config.attributes`, so the
async engine, its URL handling and the PostgreSQL migration lock stay in one place. Offline mode
(`command.upgrade(config, "head", sql=True)` with `sqlalchemy.url` set) prints the SQL instead.
"""

from __future__ import annotations

from alembic import context

from taskwire.db import metadata

config = context.config


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("offline migrations need the `sqlalchemy.url` main option")
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `taskwire migrate` (taskwire.db.migrate)")
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
