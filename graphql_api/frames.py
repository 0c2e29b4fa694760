"""Websocket frames and the socket they travel over, for both subprotocols' handlers
(graphql_api.websocket): the checks a frame must pass, a socket that closes once with a reason
that fits in a close frame, and the alarms that close it when the token expires or
connection_init is late (the uvicorn protocol underneath is in graphql_api.protocol).

Thousands of idle connections are the normal load, so what one holds while idle is kept small:
timers rather than sleeping tasks, nothing of the last frame once it is handled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from json import JSONDecodeError
from typing import Any, cast

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.async_base_view import AsyncWebSocketAdapter
from strawberry.http.exceptions import (
    NonJsonMessageReceived,
    NonTextMessageReceived,
    WebSocketDisconnected,
)

from taskwire import events
from taskwire.events import Timeouts
from taskwire.identity import Principal

log = logging.getLogger(__name__)

# RFC 6455 leaves 123 bytes for a close reason; a longer one (an echoed client id or type)
# makes the server's websocket library fail instead of closing.
MAX_REASON_BYTES = 123
# The names of the tasks that close a connection when its token expires or its
# connection_init does not arrive in time (they exist only while closing it).
EXPIRY = "taskwire.ws.token-expiry"
INIT_TIMEOUT = "taskwire.ws.init-timeout"


class ClosingSocket(AsyncWebSocketAdapter):
    """A websocket that closes once and drops whatever is sent after that, so that a close
    racing another (or an operation still yielding) neither raises nor leaks data."""

    # Slots, as the handlers' (graphql_api.websocket): one per connection, for its whole life.
    __slots__ = ("_inner", "closed", "view")

    def __init__(self, inner: AsyncWebSocketAdapter) -> None:
        super().__init__(inner.view)
        self._inner = inner
        self.closed = False

    def iter_json(  # type: ignore[override]
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncIterator[object]:
        # Strawberry's handlers only iterate over it (`async for`), which an iterator serves.
        if isinstance(self._inner, ASGIWebSocketAdapter):
            return _Frames(self._inner, ignore_parsing_errors=ignore_parsing_errors)
        return self._inner.iter_json(ignore_parsing_errors=ignore_parsing_errors)

    def forget_headers(self) -> None:
        """Empty the handshake's headers, once the connection is accepted: read to accept it
        (the origin check, the request id) and never after, they would be held for as long as
        it lasts (about 1 KiB). Emptied in place: Starlette's cached Headers is the same list."""
        if isinstance(self._inner, ASGIWebSocketAdapter):
            headers = self._inner.ws.scope.get("headers")
            if isinstance(headers, list):
                headers.clear()

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


class _Frames(AsyncIterator[object]):
    """Strawberry's ASGIWebSocketAdapter.iter_json, holding less while the connection waits
    (for minutes, usually) for the next frame: no local holds on to the last frame's text; the
    wait is on the server's receive itself, not through Starlette's receive_text and receive
    (two more suspended coroutines); and an iterator rather than an async generator (which the
    loop also tracks, with a weak reference each). Starlette's states are kept as its receive
    keeps them; in any other state than connected, its receive_text reads (and raises)."""

    __slots__ = ("_adapter", "_ended", "_ignore_parsing_errors")

    def __init__(self, adapter: ASGIWebSocketAdapter, *, ignore_parsing_errors: bool) -> None:
        self._adapter = adapter
        self._ignore_parsing_errors = ignore_parsing_errors
        self._ended = False

    async def __anext__(self) -> object:
        websocket = self._adapter.ws
        decode = self._adapter.view.decode_json
        connected = WebSocketState.CONNECTED
        while not self._ended and websocket.application_state != WebSocketState.DISCONNECTED:
            try:
                if websocket.client_state == connected == websocket.application_state:
                    return decode(_text(websocket, await websocket._receive()))
                return decode(await websocket.receive_text())
            except JSONDecodeError as exc:
                if not self._ignore_parsing_errors:
                    self._ended = True
                    raise NonJsonMessageReceived from exc
            except KeyError as exc:  # a binary frame has no "text"
                self._ended = True
                raise NonTextMessageReceived from exc
            except WebSocketDisconnect:
                self._ended = True
            except BaseException:
                self._ended = True
                raise
        self._ended = True
        raise StopAsyncIteration


def _text(websocket: WebSocket, message: Mapping[str, Any]) -> str:
    """The text of a message the server sent a connected Starlette websocket, as its
    receive_text would return it (or raise)."""
    kind = message["type"]
    if kind == "websocket.disconnect":
        websocket.client_state = WebSocketState.DISCONNECTED
        raise WebSocketDisconnect(message["code"], message.get("reason"))
    if kind != "websocket.receive":
        raise RuntimeError(
            f'Expected ASGI message "websocket.receive" or "websocket.disconnect", but got {kind!r}'
        )
    return cast("str", message["text"])


class Alarm:
    """Runs `action` once, `delay` seconds after `set`, unless cancelled first.

    A loop timer until it fires, and a task only while `action` runs: a task that sleeps out
    the delay would hold a task, two coroutine frames and a future for every idle connection
    (and, once cancelled, its CancelledError with the traceback and frames for as long as it
    is referenced), where a timer holds one handle. Given shared `timeouts` (one Timeouts for
    many connections), a long delay is an entry there instead: with uvloop, a loop timer is a
    handle, a libuv timer and the callback's arguments, about 0.7 KiB per connection."""

    __slots__ = ("_due", "_task", "_timer")

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        # Where it waits in shared Timeouts: them, its key and its entry.
        self._due: tuple[Timeouts, int, Callable[[], None]] | None = None

    @property
    def pending(self) -> bool:
        """Set and neither cancelled nor finished."""
        return (
            self._timer is not None
            or self._due is not None
            or (self._task is not None and not self._task.done())
        )

    def set(
        self,
        delay: float,
        action: Callable[[], Awaitable[None]],
        *,
        name: str,
        timeouts: Timeouts | None = None,
    ) -> None:
        """Arm it, unless it was armed before (an alarm goes off once)."""
        if self._timer is not None or self._task is not None or self._due is not None:
            return
        if timeouts is not None and delay >= events.COARSE_TIMEOUT_SECONDS:
            fire = partial(self._fire, action, name)
            key = timeouts.add(fire, delay)
            if key is not None:
                self._due = (timeouts, key, fire)
                return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._fire, action, name)

    def disarm(self) -> None:
        """Cancel without waiting: the timer, or the action if it is running."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        due, self._due = self._due, None
        if due is not None:
            timeouts, key, fire = due
            timeouts.discard(key, fire)
        if self._task is not None:
            self._task.cancel()

    async def cancel(self) -> None:
        """Cancel and wait until the action (if it was running) has ended."""
        self.disarm()
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task():
            return
        await asyncio.wait([task])

    def _fire(self, action: Callable[[], Awaitable[None]], name: str) -> None:
        self._timer = None
        self._due = None
        self._task = asyncio.create_task(_run(action, name), name=name)


async def _run(action: Callable[[], Awaitable[None]], name: str) -> None:
    try:
        await action()
    except Exception:
        log.exception("%s failed", name)


class Deadline(Alarm):
    """Runs `on_expiry` once when the token that opened the connection expires."""

    __slots__ = ()

    def arm(
        self,
        principal: Principal | None,
        on_expiry: Callable[[], Awaitable[None]],
        *,
        timeouts: Timeouts | None = None,
    ) -> None:
        if principal is None or principal.expires_at is None:
            return
        expires_at = principal.expires_at
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        delay = max(0.0, (expires_at - datetime.now(UTC)).total_seconds())
        self.set(delay, on_expiry, name=EXPIRY, timeouts=timeouts)


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


def shared_timeouts(view: object) -> Timeouts | None:
    """The Timeouts the view shares among its connections for their token deadlines, if it has
    any (its `timeouts` attribute): without them, a loop timer each."""
    timeouts = getattr(view, "timeouts", None)
    return timeouts if isinstance(timeouts, Timeouts) else None
