"""Unit fixtures: the whole core on its embedded adapters (SQLite file, memory queue, cache and
events), no servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from processor.runner import run as run_processor
from taskwire.bootstrap import Services, connect
from taskwire.db import migrate
from taskwire.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'taskwire.db'}",
        task_delay_seconds=0.05,
        watch_recheck_seconds=5.0,
        lease_seconds=5.0,
        max_attempts=3,
        retry_base_seconds=0.01,
        retry_max_seconds=0.05,
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    await migrate(settings.database_url)
    async with connect(settings) as opened:
        yield opened


@pytest.fixture
async def processor(services: Services) -> AsyncIterator[None]:
    """An embedded processor working the memory queue, as in `taskwire dev`."""
    stop = asyncio.Event()
    job = asyncio.create_task(run_processor(services, stop))
    yield
    stop.set()
    await asyncio.wait_for(job, timeout=10)
