"""The request body limit (graphql_api.middleware.BodyLimit) around a small app that reads
whatever it is given: refused bodies never reach the app and are left unread."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphql_api.middleware import BodyLimit

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
    transport = httpx.ASGITransport(app=BodyLimit(spy, LIMIT))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post("/", content=stream())
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert spy.calls == 0
    assert pulled <= 4
