"""Fixtures shared by the Redis integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from taskwire.cache import redis_client

# Nothing listens on port 1: connections are refused at once.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
async def redis_admin(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client on the shared Redis, to look at what an adapter did."""
    client = redis_client(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
