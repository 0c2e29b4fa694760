"""uvicorn inside a test's event loop, serving an ASGI app on a free loopback port with the
websocket protocol the API serves with."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn

from graphql_api.protocol import LeanWebSocketProtocol

WAIT_SECONDS = 5.0


class QuietServer(uvicorn.Server):
    """Leaves the test process's signals alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def websocket_server(app: Any, **options: Any) -> AsyncIterator[str]:
    """Serve `app` until the block ends; yields the ws:// base URL. `options` go to
    uvicorn.Config."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = {"ws": LeanWebSocketProtocol, **options}
    server = QuietServer(uvicorn.Config(app, lifespan="off", log_level="warning", **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            while not server.started:
                assert not task.done(), "uvicorn stopped before it started"
                await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT_SECONDS)
        sock.close()
