"""The uvicorn websocket protocol the API serves with: uvicorn's own, holding less for each
open connection (thousands of mostly idle ones are the normal load), and the two small
primitives it uses instead of an asyncio.Queue and an asyncio.Event: neither holds a container
or a waiter list while idle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, cast

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol (its default with `websockets` installed), holding
    less for each open connection. Thousands of mostly idle connections are the norm here, and
    per connection uvicorn's keeps an asyncio.Queue (three deques and an Event with a fourth,
    each deque a 64-slot block), an Event for write flow control with a fifth deque, and the
    parsed handshake request and response with their header maps after the handshake, about
    8 KiB in all. Here the queue and the flow-control gate hold nothing while idle and the
    handshake is dropped once answered; the protocol itself is uvicorn's, unchanged.

    Its attributes are slots: uvicorn's protocol sets 37 of them, past the 30 keys an instance
    dict shares with its class's other instances, so each connection had a dict of its own
    (1.5 KiB). The scope's headers are emptied once the handshake is answered (see `send`), and
    the app awaits the receive queue directly (see `receive`)."""

    # Every attribute uvicorn's protocol (or this class) sets: test_ws_memory_parts checks that
    # none is left to an instance dict.
    __slots__ = (
        "app",
        "app_state",
        "asgi_version",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "last_ping_rtt",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "request",
        "response",
        "root_path",
        "scheme",
        "scope",
        "server",
        "tasks",
        "transport",
        "writable",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.queue = ReceiveQueue()  # type: ignore[assignment]
        self.writable = Gate()  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # uvicorn reads the request only here (the app has its headers in the scope). Emptied
        # too, not just dropped: the `websockets` parser keeps it in a local until the end.
        self.request = None  # type: ignore[assignment]
        event.headers.clear()

    async def send(self, message: ASGISendEvent) -> None:
        answering = not self.handshake_complete
        await super().send(message)
        if answering and self.handshake_complete:
            # Read only to answer the handshake, which is done.
            self.response = None  # type: ignore[assignment]
            # The headers are read while the connection is accepted (the origin check, the
            # request id), never after: the list is emptied in place, for the app's scope and
            # the copies of it the middleware made share it. About 1 KiB per connection.
            headers = self.scope.get("headers")
            if isinstance(headers, list):
                headers.clear()

    def receive(self) -> Coroutine[Any, Any, ASGIReceiveEvent]:
        # uvicorn's receive is a coroutine awaiting the queue's: here the app awaits the
        # queue's own, one suspended coroutine less on every idle connection.
        return cast("ReceiveQueue", self.queue).get(self._received)

    def _received(self) -> None:
        # What uvicorn's receive does after taking a message: reading was paused while one
        # was queued.
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self.transport.resume_reading()


class ReceiveQueue:
    """What uvicorn's protocol needs of its asyncio.Queue (unbounded: put_nowait, get, empty),
    with no container while empty. (uvicorn pauses reading while anything is queued, so it
    rarely holds more than one message.)"""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        _wake_one(self._getters)

    async def get(self, then: Callable[[], None] | None = None) -> Any:
        """The first item, once there is one; `then` is called right after it is taken."""
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            getters = self._getters
            if getters is None:
                getters = self._getters = []
            getters.append(getter)
            try:
                await getter
            except BaseException:
                _forget(getters, getter)
                # A wake-up meant for this cancelled getter goes to the next one.
                if self._items and not getter.cancelled():
                    _wake_one(self._getters)
                raise
            finally:
                if not getters and self._getters is getters:
                    self._getters = None
        item = self._items.pop(0)
        if not self._items:
            self._items = None
        if then is not None:
            then()
        return item


class Gate:
    """What uvicorn's protocol needs of the asyncio.Event it uses for write flow control (wait,
    set, clear), open from the start and holding no waiter list while open."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> None:
        if self._open:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None:
                _forget(self._waiters, waiter)


def _wake_one(waiters: list[asyncio.Future[None]] | None) -> None:
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            return


def _forget(waiters: list[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
    with contextlib.suppress(ValueError):
        waiters.remove(waiter)
