"""The websocket protocols at the frame level: keep-alives and pings on each subprotocol."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.e2e.conftest import Deployment
from tests.support.auth import bearer
from tests.support.client import GRAPHQL_TRANSPORT_WS, LEGACY_GRAPHQL_WS

pytestmark = pytest.mark.timeout(60)


async def receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await ws.recv(decode=True))
    return message


async def test_legacy_protocol_sends_keep_alives(deployment: Deployment) -> None:
    async with connect(
        deployment.ws_url, subprotocols=[Subprotocol(LEGACY_GRAPHQL_WS)], open_timeout=5
    ) as ws:
        assert ws.subprotocol == LEGACY_GRAPHQL_WS
        await ws.send(json.dumps({"type": "connection_init", "payload": bearer()}))
        assert (await receive(ws))["type"] == "connection_ack"
        # KEEPALIVE_SECONDS is 0.5 in this deployment: two more arrive well within the timeout.
        assert [(await receive(ws))["type"] for _ in range(2)] == ["ka", "ka"]


async def test_transport_ws_answers_pings(deployment: Deployment) -> None:
    async with connect(
        deployment.ws_url, subprotocols=[Subprotocol(GRAPHQL_TRANSPORT_WS)], open_timeout=5
    ) as ws:
        assert ws.subprotocol == GRAPHQL_TRANSPORT_WS
        await ws.send(json.dumps({"type": "connection_init", "payload": bearer()}))
        assert (await receive(ws))["type"] == "connection_ack"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await receive(ws))["type"] == "pong"
        # WebSocket-level pings keep idle connections open through proxies on both protocols.
        latency = await ws.ping()
        assert await latency >= 0


async def test_an_unknown_subprotocol_is_closed_with_4406(deployment: Deployment) -> None:
    async with connect(deployment.ws_url, subprotocols=[Subprotocol("chat")], open_timeout=5) as ws:
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4406
