"""Restarting the API loses nothing: the work is in PostgreSQL and RabbitMQ, not in the API."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.e2e.conftest import Deployment
from tests.support.auth import bearer
from tests.support.client import GRAPHQL_TRANSPORT_WS, create_task, wait_for_status

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


async def read_until_closed(ws: ClientConnection) -> None:
    while True:
        await ws.recv()


async def test_sigterm_closes_open_websockets_with_a_close_code(deployment: Deployment) -> None:
    created = await create_task(deployment.http_url, "interrupted")
    async with connect(
        deployment.ws_url, subprotocols=[Subprotocol(GRAPHQL_TRANSPORT_WS)], open_timeout=5
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": bearer()}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        deployment.api.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(read_until_closed(ws), 15)
    assert caught.value.rcvd is not None
    # 1012 "service restart": clients know to reconnect, not that they did something wrong.
    assert caught.value.rcvd.code == 1012
    assert deployment.api.stop() == 0
    await deployment.start_api()
    final = await wait_for_status(deployment.http_url, created["id"], {"COMPLETED"})
    assert final["result"] == "detpurretni"
