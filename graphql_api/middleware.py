"""Pure ASGI middlewares around the API: a request id on everything, a cap on request bodies,
and CORS for the browser origins allowed. (The websocket Origin check is the Strawberry view's,
given the same allowed origins.)

Wrap the app as RequestId(cors(BodyLimit(app, max_bytes), origins)): the id goes outermost so
every response carries it (413s and preflights included), and CORS goes outside the body
limit so a browser can read a 413.
"""

from __future__ import annotations

import logging
import re
import uuid
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskwire.logs import REQUEST_ID, accepted_request_id

REQUEST_ID_HEADER = "X-Request-ID"
_DIGITS = re.compile(r"[0-9]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# The id of the request being served, for the error masking and the log filters. A ContextVar
# (not a global value): each request runs in its own context, and tasks started while serving
# it (a websocket's subscriptions) inherit it. It lives in taskwire.logs, whose filter (in the
# core, which cannot import this package) puts it on every log line.
_request_id = REQUEST_ID


def current_request_id() -> str | None:
    """The id of the HTTP request or websocket being served, None outside of one."""
    return _request_id.get()


class RequestId:
    """Gives every HTTP request and websocket an id: the client's X-Request-ID when acceptable,
    else a new uuid4 hex. It is in current_request_id(), in scope["state"]["request_id"], and
    echoed in the X-Request-ID response header (HTTP)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = accepted_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        request_id = incoming or uuid.uuid4().hex
        # A new state dict: the server's may be the lifespan state shared by all requests.
        scope = {**scope, "state": {**scope.get("state", {}), "request_id": request_id}}
        if scope["type"] == "http":
            send = _echoing(send, request_id)
        token = _request_id.set(request_id)
        try:
            await self.app(scope, receive, send)
        finally:
            _request_id.reset(token)


def _echoing(send: Send, request_id: str) -> Send:
    header = (REQUEST_ID_HEADER.lower().encode("latin-1"), request_id.encode("latin-1"))

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value)
                for name, value in message.get("headers", [])
                if name.lower() != header[0]
            ]
            message = {**message, "headers": [*headers, header]}
        await send(message)

    return send_with_id


class RequestIdFilter(logging.Filter):
    """Adds record.request_id (the current request's id, "-" outside of one) for the log
    format. Attach it to the handler: a logger's filters miss records propagated to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):  # an explicit extra={"request_id": ...} wins
            record.request_id = current_request_id() or "-"
        return True


class BodyLimit:
    """Refuses HTTP request bodies over max_bytes with 413, by Content-Length before reading
    anything, or while reading a body sent without one (chunked); a Content-Length that is not
    a number gets 400. The body (at most max_bytes) is read here, before the app runs, so the
    app never sees more than max_bytes and never runs for a refused request."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = Headers(scope=scope).getlist("content-length")
        if (
            any(not _DIGITS.fullmatch(value.strip()) for value in lengths)
            or len({int(value) for value in lengths}) > 1
        ):
            await _refuse(scope, receive, send, 400, "BAD_REQUEST", _BAD_LENGTH)
            return
        if lengths and int(lengths[0]) > self.max_bytes:
            await _refuse(scope, receive, send, 413, "PAYLOAD_TOO_LARGE", self._too_large())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(scope, receive, send, 413, "PAYLOAD_TOO_LARGE", self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replaying(b"".join(chunks), receive), send)

    def _too_large(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes."


_BAD_LENGTH = "The Content-Length header must be a whole number of bytes."


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The whole body as one message, then the server's own messages (http.disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
) -> None:
    # Connection: close, since the rest of the body is left unread on the connection.
    response = JSONResponse(
        {"errors": [{"message": message, "extensions": {"code": code}}]},
        status_code=status,
        headers={"Connection": "close"},
    )
    await response(scope, receive, send)


def cors(app: ASGIApp, allowed_origins: tuple[str, ...]) -> ASGIApp:
    """CORS for the allowed browser origins ("*" for any); no origins, no CORS headers at all.

    Credentials are not allowed: the API takes bearer tokens, not cookies."""
    if not allowed_origins:
        return app
    origins = ["*"] if "*" in allowed_origins else sorted(map(_normalised, allowed_origins))
    return CORSMiddleware(
        app,
        allow_origins=origins,
        allow_methods=("GET", "POST"),
        allow_headers=("Authorization", "Content-Type", REQUEST_ID_HEADER),
        expose_headers=(REQUEST_ID_HEADER, "Retry-After"),
        allow_credentials=False,
        max_age=600,
    )


def _parse_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, lowercase with the port filled in."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (
        scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _normalised(origin: str) -> str:
    """An origin as browsers send it: lowercase, no default port (CORSMiddleware compares the
    Origin header as a string)."""
    parsed = _parse_origin(origin)
    if parsed is None:
        return origin
    scheme, host, port = parsed
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scheme}://{host}" if port == _DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"
