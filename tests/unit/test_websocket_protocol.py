"""Both websocket subprotocols under the same rules (graphql_api.websocket and .frames), over
a real uvicorn server on a free loopback port and the `websockets` client: close codes, the
subscription cap and token expiry."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import strawberry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types import Info
from strawberry.types.unset import UnsetType
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from graphql_api.frames import MAX_REASON_BYTES
from graphql_api.websocket import TOO_MANY_SUBSCRIPTIONS, LegacyWsHandler, TransportWsHandler
from taskwire.identity import Principal
from tests.support.uvicorn_server import websocket_server

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0  # the longest any single step may take before the test fails
GOOD = {"Authorization": "Bearer good"}


@dataclass
class Probe:
    """What the server side saw: how many `forever` subscriptions are running right now."""

    running: int = 0


@dataclass
class WsContext:
    probe: Probe
    principal: Principal | None = None
    connection_params: dict[str, Any] = field(default_factory=dict)


@strawberry.type
class Query:
    @strawberry.field
    def ok(self) -> bool:
        return True


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def forever(self, info: Info[WsContext, None]) -> AsyncGenerator[int, None]:
        probe = info.context.probe
        probe.running += 1
        try:
            yield 1
            await asyncio.Event().wait()  # until cancelled
        finally:
            probe.running -= 1

    @strawberry.subscription
    async def once(self) -> AsyncGenerator[int, None]:
        yield 1


SCHEMA = strawberry.Schema(query=Query, subscription=Subscription)


class View(GraphQL[WsContext, None]):
    graphql_transport_ws_handler_class = TransportWsHandler[WsContext, None]
    graphql_ws_handler_class = LegacyWsHandler[WsContext, None]

    def __init__(self, probe: Probe, *, expires_in: float | None, **options: Any) -> None:
        super().__init__(SCHEMA, **options)
        self.probe = probe
        self.expires_in = expires_in

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> WsContext:
        return WsContext(probe=self.probe)

    async def on_ws_connect(self, context: WsContext) -> UnsetType | dict[str, object] | None:
        if context.connection_params != GOOD:
            raise ConnectionRejectionError({"reason": "a secret the client must not see"})
        expires_at = None
        if self.expires_in is not None:
            expires_at = datetime.now(UTC) + timedelta(seconds=self.expires_in)
        context.principal = Principal(subject="tester", expires_at=expires_at)
        return UnsetType()  # the UNSET singleton, typed: ack without a payload


@dataclass(frozen=True)
class Dialect:
    """The same conversation in each subprotocol's words."""

    protocol: str
    subscribe: str
    stop: str
    data: str

    def start(self, operation_id: str, field_name: str = "forever") -> dict[str, Any]:
        query = f"subscription {{ {field_name} }}"
        return {"type": self.subscribe, "id": operation_id, "payload": {"query": query}}


TRANSPORT = Dialect(GRAPHQL_TRANSPORT_WS_PROTOCOL, "subscribe", "complete", "next")
LEGACY = Dialect(GRAPHQL_WS_PROTOCOL, "start", "stop", "data")
BOTH = [pytest.param(TRANSPORT, id="transport-ws"), pytest.param(LEGACY, id="legacy-ws")]


@dataclass
class Served:
    url: str
    probe: Probe


@contextlib.asynccontextmanager
async def serving(*, expires_in: float | None = None, **options: Any) -> AsyncIterator[Served]:
    probe = Probe()
    app = Starlette(
        routes=[WebSocketRoute("/graphql", View(probe, expires_in=expires_in, **options))]
    )
    async with websocket_server(app) as url:
        yield Served(f"{url}/graphql", probe)


@contextlib.asynccontextmanager
async def client(served: Served, dialect: Dialect) -> AsyncIterator[ClientConnection]:
    async with connect(
        served.url, subprotocols=[Subprotocol(dialect.protocol)], open_timeout=WAIT
    ) as ws:
        assert ws.subprotocol == dialect.protocol
        yield ws


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def receive(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        message: dict[str, Any] = json.loads(await ws.recv(decode=True))
    return message


async def initialise(ws: ClientConnection, payload: dict[str, Any] | None = None) -> None:
    await send(ws, {"type": "connection_init", "payload": GOOD if payload is None else payload})
    assert await receive(ws) == {"type": "connection_ack"}


async def closing(ws: ClientConnection) -> tuple[int, str, list[dict[str, Any]]]:
    """The close code and reason the server sent, and the messages that came before it."""
    before: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                before.append(json.loads(raw))
    assert ws.protocol.close_rcvd is not None, "the server dropped the connection unclosed"
    return ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason, before


async def running(probe: Probe, count: int) -> None:
    async with asyncio.timeout(WAIT):
        while probe.running != count:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("dialect", BOTH)
@pytest.mark.parametrize(
    "payload", [{"Authorization": "Bearer bad"}, {}], ids=["bad-token", "no-token"]
)
async def test_a_rejected_connection_init_closes_4403(
    dialect: Dialect, payload: dict[str, Any]
) -> None:
    async with serving() as served, client(served, dialect) as ws:
        await send(ws, {"type": "connection_init", "payload": payload})
        code, reason, before = await closing(ws)
    assert (code, reason) == (4403, "Forbidden")
    if dialect is LEGACY:
        # on_ws_connect's own payload is not passed on.
        assert before == [{"type": "connection_error", "payload": {"message": "Forbidden"}}]
    else:
        assert before == []


@pytest.mark.parametrize("dialect", BOTH)
async def test_no_connection_init_closes_4408_after_the_views_timeout(dialect: Dialect) -> None:
    timeout = timedelta(seconds=0.3)
    async with (
        serving(connection_init_wait_timeout=timeout) as served,
        client(served, dialect) as ws,
    ):
        started = asyncio.get_running_loop().time()
        code, reason, _ = await closing(ws)
        waited = asyncio.get_running_loop().time() - started
    assert (code, reason) == (4408, "Connection initialisation timeout")
    assert 0.2 <= waited < 3.0


@pytest.mark.parametrize("dialect", BOTH)
async def test_an_initialised_connection_outlives_the_init_timeout(dialect: Dialect) -> None:
    timeout = timedelta(seconds=0.2)
    async with (
        serving(connection_init_wait_timeout=timeout) as served,
        client(served, dialect) as ws,
    ):
        await initialise(ws)
        await asyncio.sleep(0.4)  # past the timeout: nothing to poll for, it must not fire
        await send(ws, dialect.start("1", "once"))
        assert (await receive(ws))["payload"] == {"data": {"once": 1}}


@pytest.mark.parametrize("dialect", BOTH)
@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param(["start-unanswered"], 4401, id="operation-before-ack"),
        pytest.param(["init", "init-unanswered"], 4429, id="second-init"),
        pytest.param(["init", "not json"], 4400, id="non-json"),
        pytest.param(["init", b"\x00binary"], 4400, id="binary"),
        pytest.param(["init", '{"type": "bogus"}'], 4400, id="unknown-type"),
        pytest.param(["init", '{"id": "1"}'], 4400, id="missing-type"),
        pytest.param(["init", "[1, 2]"], 4400, id="not-an-object"),
        pytest.param(["init", '{"type": "start", "id": "1", "payload": "x"}'], 4400, id="bad-body"),
        pytest.param(["init", "start", "start-unanswered"], 4409, id="duplicate-id"),
        pytest.param(['{"type": "connection_init", "payload": 5}'], 4400, id="bad-init-payload"),
    ],
)
async def test_protocol_violations_close_the_connection(
    dialect: Dialect, frames: list[str | bytes], code: int
) -> None:
    async with serving() as served, client(served, dialect) as ws:
        for frame in frames:
            if frame == "init":
                await initialise(ws)
            elif frame == "init-unanswered":
                await send(ws, {"type": "connection_init", "payload": GOOD})
            elif frame in ("start", "start-unanswered"):
                await send(ws, dialect.start("same"))
                if frame == "start":
                    assert (await receive(ws))["type"] == dialect.data
            elif isinstance(frame, str) and '"start"' in frame:
                await ws.send(frame.replace('"start"', f'"{dialect.subscribe}"'))
            else:
                await ws.send(frame)
        closed_with, reason, _ = await closing(ws)
    assert closed_with == code, reason
    assert served.probe.running == 0


@pytest.mark.parametrize("dialect", BOTH)
async def test_a_long_echoed_reason_is_cut_to_fit_a_close_frame(dialect: Dialect) -> None:
    async with serving() as served, client(served, dialect) as ws:
        await initialise(ws)
        await send(ws, {"type": "é" * 200})
        code, reason, _ = await closing(ws)
    assert code == 4400
    assert reason.startswith("Unknown message type: é")
    assert len(reason.encode()) <= MAX_REASON_BYTES


@pytest.mark.parametrize("dialect", BOTH)
async def test_past_the_cap_an_operation_gets_an_error_and_the_connection_stays(
    dialect: Dialect,
) -> None:
    async with serving(max_subscriptions_per_connection=2) as served, client(served, dialect) as ws:
        await initialise(ws)
        for operation_id in ("a", "b"):
            await send(ws, dialect.start(operation_id))
            assert (await receive(ws))["id"] == operation_id
        await send(ws, dialect.start("c"))
        refused = await receive(ws)
        assert refused["type"] == "error"
        assert refused["id"] == "c"
        # graphql-transport-ws sends a list of errors, graphql-ws one error.
        error = refused["payload"][0] if dialect is TRANSPORT else refused["payload"]
        assert error["extensions"] == {"code": TOO_MANY_SUBSCRIPTIONS}
        assert "at most 2 " in error["message"]
        assert served.probe.running == 2

        # Stopping one frees its place: only running operations count.
        await send(ws, {"type": dialect.stop, "id": "a"})
        await running(served.probe, 1)
        await send(ws, dialect.start("c"))
        answer = await receive(ws)
        if dialect is LEGACY:  # graphql-ws confirms the stop
            assert answer == {"type": "complete", "id": "a"}
            answer = await receive(ws)
        assert (answer["type"], answer["id"]) == (dialect.data, "c")
        assert served.probe.running == 2


@pytest.mark.parametrize("dialect", BOTH)
async def test_operations_that_completed_do_not_count(dialect: Dialect) -> None:
    async with serving(max_subscriptions_per_connection=1) as served, client(served, dialect) as ws:
        await initialise(ws)
        for operation_id in ("1", "2", "1"):  # an id is free again once its operation is over
            await send(ws, dialect.start(operation_id, "once"))
            assert (await receive(ws))["type"] == dialect.data
            assert await receive(ws) == {"type": "complete", "id": operation_id}


@pytest.mark.parametrize("dialect", BOTH)
async def test_an_expiring_token_closes_4403_and_ends_every_subscription(
    dialect: Dialect,
) -> None:
    async with serving(expires_in=0.6) as served, client(served, dialect) as ws:
        await initialise(ws)
        for operation_id in ("a", "b"):
            await send(ws, dialect.start(operation_id))
            assert (await receive(ws))["type"] == dialect.data
        assert served.probe.running == 2
        started = asyncio.get_running_loop().time()
        code, reason, before = await closing(ws)
        waited = asyncio.get_running_loop().time() - started
        await running(served.probe, 0)
    assert (code, reason) == (4403, "Token expired")
    assert before == []  # nothing, not even `complete`, after the token expired
    assert waited < 3.0


@pytest.mark.parametrize("dialect", BOTH)
async def test_a_token_expired_on_arrival_is_closed_right_after_the_ack(dialect: Dialect) -> None:
    async with serving(expires_in=-1) as served, client(served, dialect) as ws:
        await initialise(ws)
        code, reason, _ = await closing(ws)
    assert (code, reason) == (4403, "Token expired")


async def test_legacy_keep_alives_keep_coming() -> None:
    async with (
        serving(keep_alive=True, keep_alive_interval=0.05) as served,
        client(served, LEGACY) as ws,
    ):
        await initialise(ws)
        assert [(await receive(ws))["type"] for _ in range(3)] == ["ka", "ka", "ka"]


async def test_transport_ws_still_answers_pings() -> None:
    async with serving() as served, client(served, TRANSPORT) as ws:
        await initialise(ws)
        await send(ws, {"type": "ping"})
        assert await receive(ws) == {"type": "pong"}
