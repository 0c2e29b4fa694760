"""The ASGI middlewares (graphql_api.middleware) around small apps: request ids (and the
masked error that carries one), the body limit, CORS, and the websocket origin check."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import strawberry
from graphql import GraphQLError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.types import ExecutionContext

from graphql_api.errors import MaskUnexpectedErrors, classify
from graphql_api.middleware import (
    BodyLimit,
    RequestId,
    RequestIdFilter,
    cors,
    current_request_id,
    origin_allowed,
)

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


class ClassifyingSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        classify(errors)


GRAPHQL_APP = Starlette(
    routes=[
        Route(
            "/graphql",
            GraphQL[None, None](ClassifyingSchema(query=Query, extensions=[MaskUnexpectedErrors])),
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
    result = await ClassifyingSchema(query=Query, extensions=[MaskUnexpectedErrors]).execute(
        "{ boom }"
    )
    assert result.errors is not None
    request_id = (result.errors[0].extensions or {})["requestId"]
    assert UUID_HEX.fullmatch(request_id)
    [record] = [r for r in caplog.records if r.name == "graphql_api.errors"]
    assert request_id_of(record) == request_id


# --- the body limit -------------------------------------------------------------------------

LIMIT = 1024


class Spy:
    """An inner app that reads the whole body and records what it got."""

    def __init__(self) -> None:
        self.calls = 0
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await Response("ok")(scope, receive, send)


async def call(
    app: ASGIApp, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[list[Message], int]:
    """Calls the ASGI app directly (any headers, any chunks); returns what it sent and how many
    body chunks it pulled."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            more = pulled < len(chunks)
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": more}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent, pulled


def answer(sent: list[Message]) -> tuple[int, Headers, dict[str, Any]]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], Headers(raw=start["headers"]), json.loads(body)


def refused(status: int, code: str, message: str) -> tuple[int, str, dict[str, Any]]:
    return (
        status,
        "application/json",
        {"errors": [{"message": message, "extensions": {"code": code}}]},
    )


TOO_LARGE = refused(413, "PAYLOAD_TOO_LARGE", f"The request body is larger than {LIMIT} bytes.")
BAD_LENGTH = refused(
    400, "BAD_REQUEST", "The Content-Length header must be a whole number of bytes."
)


@pytest.mark.parametrize(
    ("name", "length", "chunks", "expected", "most_pulled"),
    [
        ("declared too large", [str(LIMIT + 1)], [b"x" * (LIMIT + 1)], TOO_LARGE, 0),
        ("declared huge", ["9" * 30], [b"x"], TOO_LARGE, 0),
        ("declared small, sent large", ["10"], [b"x" * 600, b"x" * 600, b"x" * 600], TOO_LARGE, 2),
        ("chunked too large", [], [b"x" * 600] * 10, TOO_LARGE, 2),
        ("chunked in bytes", [], [b"x"] * (LIMIT + 50), TOO_LARGE, LIMIT + 1),
        ("not a number", ["abc"], [b"{}"], BAD_LENGTH, 0),
        ("negative", ["-1"], [b"{}"], BAD_LENGTH, 0),
        ("two different lengths", ["2", "3"], [b"{}"], BAD_LENGTH, 0),
    ],
)
async def test_a_body_over_the_limit_is_refused_before_the_app_runs(
    name: str,
    length: list[str],
    chunks: list[bytes],
    expected: tuple[int, str, dict[str, Any]],
    most_pulled: int,
) -> None:
    spy = Spy()
    headers = [(b"content-length", value.encode()) for value in length]
    sent, pulled = await call(BodyLimit(spy, LIMIT), headers, chunks)
    status, response_headers, body = answer(sent)
    assert (status, response_headers["content-type"], body) == expected, name
    assert response_headers["connection"] == "close"
    assert spy.calls == 0, "the app never runs for a refused body"
    assert pulled <= most_pulled, "the rest of the body is left unread"


@pytest.mark.parametrize(
    ("name", "length", "chunks"),
    [
        ("exactly the limit", [str(LIMIT)], [b"x" * LIMIT]),
        ("exactly the limit, chunked", [], [b"x" * 512, b"x" * 512]),
        ("no body", [], [b""]),
        ("two equal lengths", ["2", "2"], [b"{}"]),
    ],
)
async def test_a_body_within_the_limit_reaches_the_app_whole(
    name: str, length: list[str], chunks: list[bytes]
) -> None:
    spy = Spy()
    headers = [(b"content-length", value.encode()) for value in length]
    sent, _ = await call(BodyLimit(spy, LIMIT), headers, chunks)
    assert answer_status(sent) == 200, name
    assert spy.calls == 1
    assert spy.body == b"".join(chunks)


def answer_status(sent: list[Message]) -> int:
    start = next(m for m in sent if m["type"] == "http.response.start")
    status: int = start["status"]
    return status


async def test_a_client_that_leaves_mid_body_gets_nothing() -> None:
    spy = Spy()
    sent: list[Message] = []
    messages: list[Message] = [
        {"type": "http.request", "body": b"x", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await BodyLimit(spy, LIMIT)({"type": "http", "headers": []}, receive, send)
    assert spy.calls == 0
    assert sent == []


async def test_a_streamed_body_over_the_limit_is_refused_over_http() -> None:
    pulled = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(100):
            pulled += 1
            yield b"x" * 512

    spy = Spy()
    async with client(BodyLimit(spy, LIMIT)) as http:
        response = await http.post("/", content=stream())
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert spy.calls == 0
    assert pulled <= 4


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
    app = RequestId(cors(BodyLimit(ECHO, LIMIT), ALLOWED))
    async with client(app) as http:
        response = await http.post(
            "/",
            headers={"Origin": "https://app.example.com", "X-Request-ID": "big-1"},
            content=b"x" * (LIMIT + 1),
        )
    assert response.status_code == 413
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert response.headers["x-request-id"] == "big-1"


# --- websocket origins ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed_origins", "scheme", "allowed"),
    [
        ({}, (), None, True),  # not a browser
        ({"Host": "api.example.com"}, (), "wss", True),
        ({"Origin": "https://api.example.com", "Host": "api.example.com"}, (), "wss", True),
        ({"Origin": "https://API.Example.com", "Host": "api.example.COM"}, (), "wss", True),
        ({"Origin": "https://api.example.com:443", "Host": "api.example.com"}, (), "wss", True),
        ({"Origin": "https://api.example.com", "Host": "api.example.com:443"}, (), "wss", True),
        ({"Origin": "http://api.example.com", "Host": "api.example.com"}, (), "wss", False),
        ({"Origin": "https://api.example.com", "Host": "api.example.com"}, (), "ws", False),
        ({"Origin": "http://localhost:8000", "Host": "localhost:8000"}, (), "ws", True),
        ({"Origin": "http://localhost:8000", "Host": "localhost:8001"}, (), "ws", False),
        ({"Origin": "http://[::1]:8000", "Host": "[::1]:8000"}, (), "ws", True),
        ({"Origin": "https://api.example.com", "Host": "api.example.com"}, (), None, True),
        ({"Origin": "http://api.example.com", "Host": "api.example.com"}, (), None, True),
        ({"Origin": "https://api.example.com", "Host": "api.example.com:8443"}, (), None, False),
        ({"Origin": "https://evil.example", "Host": "api.example.com"}, (), "wss", False),
        ({"Origin": "https://evil.example"}, (), "wss", False),
        ({"Origin": "https://app.example.com", "Host": "api.example.com"}, ALLOWED, "wss", True),
        ({"origin": "https://app.example.com"}, ALLOWED, "wss", True),
        ({"Origin": "https://APP.example.com:443"}, ALLOWED, "wss", True),
        ({"Origin": "https://app.example.com:444"}, ALLOWED, "wss", False),
        ({"Origin": "http://app.example.com"}, ALLOWED, "wss", False),
        ({"Origin": "https://evil.example", "Host": "api.example.com"}, ("*",), "wss", True),
        ({"Origin": "null", "Host": "api.example.com"}, ALLOWED, "wss", False),
        ({"Origin": "", "Host": "api.example.com"}, ALLOWED, "wss", False),
        ({"Origin": "https://api.example.com/path", "Host": "api.example.com"}, (), "wss", False),
        ({"Origin": "https://user@api.example.com", "Host": "api.example.com"}, (), "wss", False),
        ({"Origin": "https://api.example.com:99999", "Host": "api.example.com"}, (), "wss", False),
        ({"Origin": "https://api.example.com", "Host": "api.example.com/x"}, (), "wss", False),
        (
            {"Origin": "https://evil.example", "Host": "api.example.com@evil.example"},
            (),
            None,
            False,
        ),
    ],
)
def test_origin_allowed(
    headers: dict[str, str], allowed_origins: tuple[str, ...], scheme: str | None, allowed: bool
) -> None:
    assert origin_allowed(headers, allowed_origins, scheme=scheme) is allowed
    starlette_headers = Headers(headers={k.lower(): v for k, v in headers.items()})
    assert origin_allowed(starlette_headers, allowed_origins, scheme=scheme) is allowed
