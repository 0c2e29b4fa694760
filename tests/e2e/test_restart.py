"""Restarting the API loses nothing: the work is in PostgreSQL and RabbitMQ, not in the API."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import Deployment
from tests.support.client import create_task, wait_for_status

pytestmark = pytest.mark.timeout(120)


async def test_an_api_restart_loses_no_task(deployment: Deployment) -> None:
    created = await asyncio.gather(
        *(create_task(deployment.http_url, f"kept {n}") for n in range(20))
    )
    assert deployment.api.stop() == 0
    await deployment.start_api()
    finals = await asyncio.gather(
        *(wait_for_status(deployment.http_url, c["id"], {"COMPLETED"}) for c in created)
    )
    assert [f["result"] for f in finals] == [f"kept {n}"[::-1] for n in range(20)]
    assert all(f["attempts"] == 1 for f in finals)
