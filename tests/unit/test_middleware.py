"""The ASGI middlewares (graphql_api.middleware) around small apps: request ids (and the
masked error that carries one), CORS, and the three wrapped as the app wraps them. The body
limit on its own is in test_body_limit.py."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx
import pytest
import strawberry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from graphql_api.middleware import (
    BodyLimit,
    RequestId,
    RequestIdFilter,
    cors,
    current_request_id,
)
from tests.support.schemas import wired_schema

UUID_HEX = re.compile(r"[0-9a-f]{32}")
ALLOWED = ("https://app.example.com", "http://localhost:5173")


async def whoami(request: Request) -> Response:
    """Echoes what the app sees of the request id, and how much body it got."""
    body = await request.body()
    return JSONResponse(
        {
            "current": current_request_id(),
            "state": getattr(request.state, "request_id", None),
            "bytes": len(body),
        },
        headers={"X-Request-ID": "set-by-the-app"},
    )


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(
        {"current": current_request_id(), "state": websocket.state.request_id}
    )
    await websocket.close()


ECHO = Starlette(
    routes=[Route("/", whoami, methods=["GET", "POST"]), WebSocketRoute("/ws", socket)]
)


def request_id_of(record: logging.LogRecord) -> object:
    return getattr(record, "request_id", None)


def client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


# --- request ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-123", True),
        ("A.b_c-9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("has space", False),
        ("semi;colon", False),
        ("new\\nline", False),
        ("ünïcode".encode(), False),
        (None, False),
    ],
)
async def test_a_request_gets_an_id(incoming: str | bytes | None, kept: bool) -> None:
    raw = incoming.encode() if isinstance(incoming, str) else incoming
    headers = [] if raw is None else [(b"X-Request-ID", raw)]
    async with client(RequestId(ECHO)) as http:
        response = await http.get("/", headers=headers)
    request_id = response.headers["X-Request-ID"]
    assert response.headers.get_list("X-Request-ID") == [request_id], "replaces the app's"
    if kept:
        assert request_id == incoming
    else:
        assert UUID_HEX.fullmatch(request_id), request_id
    assert response.json()["current"] == request_id
    assert response.json()["state"] == request_id
    assert current_request_id() is None, "reset after the request"


async def test_every_request_gets_its_own_id() -> None:
    async with client(RequestId(ECHO)) as http:
        ids = {(await http.get("/")).headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("incoming", [b"ws-1", b"bad id", None])
async def test_a_websocket_gets_an_id_too(incoming: bytes | None) -> None:
    scope: Scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [] if incoming is None else [(b"x-request-id", incoming)],
        "subprotocols": [],
    }
    inbox: list[Message] = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    await RequestId(ECHO)(scope, receive, send)
    [seen] = [json.loads(m["text"]) for m in sent if m["type"] == "websocket.send"]
    assert seen["state"] == seen["current"]
    if incoming == b"ws-1":
        assert seen["current"] == "ws-1"
    else:
        assert UUID_HEX.fullmatch(seen["current"])


async def test_the_lifespan_state_is_not_shared_between_requests() -> None:
    shared: dict[str, Any] = {"services": "the app's"}

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = shared  # a server that hands out the lifespan state itself
        await RequestId(ECHO)(scope, receive, send)

    async with client(with_state) as http:
        await http.get("/")
    assert shared == {"services": "the app's"}


def test_the_log_filter_adds_the_request_id() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert RequestIdFilter().filter(record)
    assert request_id_of(record) == "-"
    explicit = logging.makeLogRecord({"msg": "hello", "request_id": "given"})
    RequestIdFilter().filter(explicit)
    assert request_id_of(explicit) == "given"


async def test_the_log_filter_sees_the_current_request() -> None:
    seen: list[object] = []

    async def logging_app(scope: Scope, receive: Receive, send: Send) -> None:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
        RequestIdFilter().filter(record)
        seen.append(request_id_of(record))
        await Response("ok")(scope, receive, send)

    async with client(RequestId(logging_app)) as http:
        response = await http.get("/", headers={"X-Request-ID": "log-me"})
    assert seen == ["log-me"] == [response.headers["X-Request-ID"]]


# --- the masked error carries the request id -------------------------------------------------


async def explode() -> str:
    raise RuntimeError("password=hunter2 at db.internal:5432")


@strawberry.type
class Query:
    boom: str = strawberry.field(resolver=explode)


GRAPHQL_APP = Starlette(
    routes=[
        Route(
            "/graphql",
            GraphQL[None, None](wired_schema(query=Query)),
            methods=["POST"],
        )
    ]
)


@pytest.mark.parametrize("incoming", ["client-id-1", None])
async def test_a_masked_error_carries_the_request_id_of_its_log_line(
    incoming: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="graphql_api.errors")
    headers = {} if incoming is None else {"X-Request-ID": incoming}
    async with client(RequestId(GRAPHQL_APP)) as http:
        response = await http.post("/graphql", json={"query": "{ boom }"}, headers=headers)
    request_id = response.headers["X-Request-ID"]
    if incoming is not None:
        assert request_id == incoming
    [error] = response.json()["errors"]
    assert error["message"] == "Unexpected error."
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    assert "hunter2" not in response.text
    [record] = [r for r in caplog.records if r.name == "graphql_api.errors"]
    assert request_id_of(record) == request_id
    assert request_id in record.getMessage()
    assert record.exc_info is not None
    assert "hunter2" in str(record.exc_info[1])


async def test_a_masked_error_outside_a_request_still_matches_its_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="graphql_api.errors")
    result = await wired_schema(query=Query).execute("{ boom }")
    assert result.errors is not None
    request_id = (result.errors[0].extensions or {})["requestId"]
    assert UUID_HEX.fullmatch(request_id)
    [record] = [r for r in caplog.records if r.name == "graphql_api.errors"]
    assert request_id_of(record) == request_id


# --- CORS -----------------------------------------------------------------------------------


def preflight(origin: str, headers: str = "authorization, content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": headers,
    }


@pytest.mark.parametrize(
    ("configured", "origin", "allowed"),
    [
        (ALLOWED, "https://app.example.com", True),
        (ALLOWED, "http://localhost:5173", True),
        (("https://App.Example.com:443",), "https://app.example.com", True),
        (ALLOWED, "https://evil.example.com", False),
        (ALLOWED, "http://app.example.com", False),
        (ALLOWED, "https://app.example.com:8443", False),
        (ALLOWED, "null", False),
        (("*",), "https://anyone.example", True),
    ],
)
async def test_a_preflight_is_answered_for_allowed_origins_only(
    configured: tuple[str, ...], origin: str, allowed: bool
) -> None:
    async with client(cors(ECHO, configured)) as http:
        response = await http.options("/", headers=preflight(origin))
    headers = response.headers
    assert headers.get("access-control-allow-credentials") is None
    if not allowed:
        assert response.status_code == 400
        assert "access-control-allow-origin" not in headers
        return
    assert response.status_code == 200
    assert headers["access-control-allow-origin"] == ("*" if configured == ("*",) else origin)
    assert headers["access-control-allow-methods"] == "GET, POST"
    assert headers["access-control-max-age"] == "600"
    allowed_headers = {
        h.strip().lower() for h in headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "x-request-id"} <= allowed_headers


@pytest.mark.parametrize(
    ("method", "headers"),
    [("PUT", "content-type"), ("POST", "x-secret-header"), ("DELETE", "")],
)
async def test_a_preflight_for_other_methods_or_headers_is_refused(
    method: str, headers: str
) -> None:
    request = preflight("https://app.example.com", headers)
    request["Access-Control-Request-Method"] = method
    async with client(cors(ECHO, ALLOWED)) as http:
        response = await http.options("/", headers=request)
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("origin", "allowed"), [("https://app.example.com", True), ("https://evil.example", False)]
)
async def test_a_request_exposes_the_request_id_to_allowed_origins(
    origin: str, allowed: bool
) -> None:
    async with client(RequestId(cors(ECHO, ALLOWED))) as http:
        response = await http.post("/", headers={"Origin": origin}, content=b"{}")
    assert response.status_code == 200, "CORS is the browser's to enforce on requests"
    assert response.headers.get("access-control-allow-origin") == (origin if allowed else None)
    if allowed:
        exposed = {
            h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
        }
        assert exposed == {"x-request-id", "retry-after"}


async def test_no_origins_means_no_cors_headers_at_all() -> None:
    app = cors(ECHO, ())
    assert app is ECHO
    async with client(app) as http:
        answered = [
            await http.options("/", headers=preflight("https://app.example.com")),
            await http.post("/", headers={"Origin": "https://app.example.com"}, content=b"{}"),
        ]
    for response in answered:
        assert not [name for name in response.headers if name.startswith("access-control-")]


async def test_a_413_is_readable_by_an_allowed_origin_and_carries_the_request_id() -> None:
    # The wiring the lead uses: RequestId(cors(BodyLimit(app, max_bytes), origins)).
    limit = 1024
    app = RequestId(cors(BodyLimit(ECHO, limit), ALLOWED))
    async with client(app) as http:
        response = await http.post(
            "/",
            headers={"Origin": "https://app.example.com", "X-Request-ID": "big-1"},
            content=b"x" * (limit + 1),
        )
    assert response.status_code == 413
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert response.headers["x-request-id"] == "big-1"
