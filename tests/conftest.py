"""Root fixtures: where the real servers are.

The URLs come from TASKWIRE_TEST_POSTGRES_URL / TASKWIRE_TEST_REDIS_URL / TASKWIRE_TEST_RABBITMQ_URL.
Without them a test that needs a server is skipped locally; with CI=true it fails instead, so a
missing service can never turn into a green run.
"""

from __future__ import annotations

import os

import pytest


def _server_url(kind: str) -> str:
    url = os.environ.get(f"TASKWIRE_TEST_{kind.upper()}_URL")
    if url:
        return url
    message = f"no {kind} server: set TASKWIRE_TEST_{kind.upper()}_URL or use scripts/test.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """SQLAlchemy URL (postgresql+asyncpg://) of a superuser on the test PostgreSQL server."""
    return _server_url("postgres")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _server_url("redis")


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    return _server_url("rabbitmq")
