"""Websocket frames and the socket they travel over, for both subprotocols' handlers
(graphql_api.websocket): the checks a frame must pass, a socket that closes once with a reason
that fits in a close frame, and the deadline that closes it when the token expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from starlette.websockets import WebSocketDisconnect
from strawberry.http.async_base_view import AsyncWebSocketAdapter
from strawberry.http.exceptions import WebSocketDisconnected

from taskwire.identity import Principal

log = logging.getLogger(__name__)

# RFC 6455 leaves 123 bytes for a close reason; a longer one (an echoed client id or type)
# makes the server's websocket library fail instead of closing.
MAX_REASON_BYTES = 123


class ClosingSocket(AsyncWebSocketAdapter):
    """A websocket that closes once and drops whatever is sent after that, so that a close
    racing another (or an operation still yielding) neither raises nor leaks data."""

    def __init__(self, inner: AsyncWebSocketAdapter) -> None:
        super().__init__(inner.view)
        self._inner = inner
        self.closed = False

    def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object, None]:
        return self._inner.iter_json(ignore_parsing_errors=ignore_parsing_errors)

    async def send_json(self, message: Mapping[str, object]) -> None:
        if not self.closed:
            await self._inner.send_json(message)

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._inner.close(code, fit_reason(reason))
        except (WebSocketDisconnect, WebSocketDisconnected, RuntimeError):
            log.debug("websocket gone before close %d", code)  # the peer left first


class Deadline:
    """Runs `on_expiry` once when the token that opened the connection expires."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def arm(self, principal: Principal | None, on_expiry: Callable[[], Awaitable[None]]) -> None:
        if self._task is not None or principal is None or principal.expires_at is None:
            return
        self._task = asyncio.create_task(
            self._expire_at(principal.expires_at, on_expiry), name="taskwire.ws.token-expiry"
        )

    async def cancel(self) -> None:
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        await asyncio.wait([task])

    @staticmethod
    async def _expire_at(expires_at: datetime, on_expiry: Callable[[], Awaitable[None]]) -> None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()))
        try:
            await on_expiry()
        except Exception:
            log.exception("closing a websocket whose token expired failed")


def fit_reason(reason: str) -> str:
    """`reason`, cut short with "..." when it would not fit in a close frame."""
    encoded = reason.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return reason
    return encoded[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


_TRANSPORT_TYPES = {"connection_init", "ping", "pong", "subscribe", "complete"}
_LEGACY_TYPES = {"connection_init", "connection_terminate", "start", "stop"}


def transport_message_problem(message: object) -> str | None:
    """Why a graphql-transport-ws frame must close the connection with 4400, if it must.
    (Strawberry's own checks raise TypeError on some of these instead of closing.)"""
    problem = _envelope_problem(message, _TRANSPORT_TYPES)
    if problem is not None:
        return problem
    message = cast("dict[str, Any]", message)
    if message["type"] in ("subscribe", "complete") and not isinstance(message.get("id"), str):
        return "Failed to parse message"
    if message["type"] == "subscribe":
        return _operation_payload_problem(message.get("payload"), "subscribe")
    return None


def legacy_message_problem(message: object) -> str | None:
    """Why a graphql-ws frame must close the connection with 4400, if it must."""
    problem = _envelope_problem(message, _LEGACY_TYPES)
    if problem is not None:
        return problem
    message = cast("dict[str, Any]", message)
    if message["type"] in ("start", "stop") and not isinstance(message.get("id"), str):
        return "Failed to parse message"
    if message["type"] == "start":
        return _operation_payload_problem(message.get("payload"), "start")
    return None


def _envelope_problem(message: object, known_types: set[str]) -> str | None:
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "Failed to parse message"
    if message["type"] not in known_types:
        return f"Unknown message type: {message['type']}"
    return None


def _operation_payload_problem(payload: object, kind: str) -> str | None:
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("query"), str)
        or not isinstance(payload.get("variables", {}), dict | None)
        or not isinstance(payload.get("operationName"), str | None)
        or not isinstance(payload.get("extensions", {}), dict | None)
    ):
        return f"Invalid {kind} message payload"
    return None
