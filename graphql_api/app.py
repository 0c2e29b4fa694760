"""The Starlette application factory. Connections are opened by the lifespan, never at import."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from cross_web import HTTPException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from graphql_api.context import Context
from graphql_api.graphiql import GRAPHIQL_STATIC_DIR, graphiql_html
from graphql_api.health import healthz, readyz
from graphql_api.schema import build_schema
from graphql_api.state import services_of
from taskwire.bootstrap import Services, connect
from taskwire.settings import Settings

log = logging.getLogger(__name__)

# Work that lives as long as the app, e.g. the embedded processor of `taskwire dev`. It gets the
# app's services and must return soon after the event is set.
Background = Callable[[Services, asyncio.Event], Coroutine[Any, Any, None]]

GRAPHIQL_PREFIX = "/static/graphiql"
BACKGROUND_GRACE_SECONDS = 10.0


class TaskwireGraphQL(GraphQL[Context, None]):
    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        return Context(services=services_of(request), request=request, response=response)

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(graphiql_html(GRAPHIQL_PREFIX))

    def decode_json(self, data: str | bytes) -> object:
        try:
            return json.loads(data)
        except UnicodeDecodeError as exc:
            # Strawberry only maps JSONDecodeError to 400; a body that is not UTF-8 would be a 500.
            raise HTTPException(400, "The request body must be UTF-8 encoded JSON.") from exc


def create_app(settings: Settings, *, background: Sequence[Background] = ()) -> Starlette:
    graphiql_html(GRAPHIQL_PREFIX)  # a missing or altered asset stops the start, not a page view
    graphql = TaskwireGraphQL(
        build_schema(),
        allow_queries_via_get=False,
        keep_alive=True,
        keep_alive_interval=settings.keepalive_seconds,
        connection_init_wait_timeout=timedelta(seconds=10),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with connect(settings) as services:
            stop = asyncio.Event()
            workers = [asyncio.create_task(job(services, stop)) for job in background]
            try:
                yield {"services": services}
            finally:
                stop.set()
                await _finish(workers)

    return Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Mount(GRAPHIQL_PREFIX, StaticFiles(directory=GRAPHIQL_STATIC_DIR)),
        ],
        lifespan=lifespan,
    )


async def _finish(workers: list[asyncio.Task[None]]) -> None:
    if not workers:
        return
    done, pending = await asyncio.wait(workers, timeout=BACKGROUND_GRACE_SECONDS)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("background job failed", exc_info=task.exception())
