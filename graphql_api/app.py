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
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.schema.base import BaseSchema
from strawberry.types.unset import UNSET, UnsetType

from graphql_api.auth import Authenticator, unauthenticated_response
from graphql_api.console import console_routes
from graphql_api.context import Context
from graphql_api.graphiql import GRAPHIQL_STATIC_DIR, graphiql_html
from graphql_api.health import healthz, readyz
from graphql_api.middleware import BodyLimit, RequestId, cors
from graphql_api.schema import build_schema
from graphql_api.state import services_of
from graphql_api.websocket import LegacyWsHandler, TransportWsHandler
from taskwire.bootstrap import Services, connect
from taskwire.errors import Unauthenticated
from taskwire.identity import Principal
from taskwire.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from taskwire.settings import Settings

log = logging.getLogger(__name__)

# Work that lives as long as the app, e.g. the embedded processor of `taskwire dev`. It gets the
# app's services and must return soon after the event is set.
Background = Callable[[Services, asyncio.Event], Coroutine[Any, Any, None]]

GRAPHQL_PATH = "/graphql"
GRAPHIQL_PREFIX = "/static/graphiql"
BACKGROUND_GRACE_SECONDS = 10.0
# Where the authenticated principal of an HTTP request waits for get_context.
PRINCIPAL_STATE = "taskwire_principal"


class TaskwireGraphQL(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWsHandler[Context, None]
    graphql_ws_handler_class = LegacyWsHandler[Context, None]

    def __init__(self, schema: BaseSchema, auth: Authenticator, **options: Any) -> None:
        super().__init__(schema, **options)
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every POST is authenticated before its body is read; GET serves GraphiQL, which
        # holds no data (queries over GET are refused).
        if scope["type"] == "http" and scope["method"] == "POST":
            authorization = Headers(scope=scope).get("authorization")
            try:
                principal = self.auth.from_header(authorization)
            except Unauthenticated as error:
                response = unauthenticated_response(error, token_sent=bool(authorization))
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        if scope["type"] == "websocket":
            websockets = services_of(WebSocket(scope, receive, send)).metrics.websockets
            websockets.inc()
            try:
                await super().__call__(scope, receive, send)
            finally:
                websockets.dec()
            return
        await super().__call__(scope, receive, send)

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        principal = request.scope.get("state", {}).get(PRINCIPAL_STATE)
        return Context(
            services=services_of(request),
            auth=self.auth,
            principal=principal if isinstance(principal, Principal) else None,
            request=request,
            response=response,
        )

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        try:
            context.principal = self.auth.from_connection_params(context.connection_params)
        except Unauthenticated as error:
            raise ConnectionRejectionError({"message": error.message}) from None
        unset: UnsetType = UNSET
        return unset

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(graphiql_html(GRAPHIQL_PREFIX))

    def decode_json(self, data: str | bytes) -> object:
        # Strawberry maps only JSONDecodeError to a 400 (HTTP) or a 4400 close (websocket): a
        # body that is not UTF-8 or is nested past the recursion limit would be a 500.
        try:
            return json.loads(data)
        except UnicodeDecodeError as exc:
            raise HTTPException(400, "The request body must be UTF-8 encoded JSON.") from exc
        except RecursionError:
            text = data if isinstance(data, str) else ""
            raise json.JSONDecodeError("JSON nested too deeply", text, 0) from None

    def parse_json(self, data: str | bytes) -> Any:
        # HTTP bodies only (websocket frames have their own shape checks): Strawberry reads
        # fields off the body and fails with a 500 on a string, a number or null.
        decoded = super().parse_json(data)
        if not isinstance(decoded, dict | list):
            raise HTTPException(400, "The request body must be a JSON object.")
        return decoded


def create_app(settings: Settings, *, background: Sequence[Background] = ()) -> ASGIApp:
    graphiql_html(GRAPHIQL_PREFIX)  # a missing or altered asset stops the start, not a page view
    graphql = TaskwireGraphQL(
        build_schema(settings),
        Authenticator(settings),
        allow_queries_via_get=False,
        multipart_uploads_enabled=False,
        keep_alive=True,
        keep_alive_interval=settings.keepalive_seconds,
        connection_init_wait_timeout=timedelta(seconds=settings.ws_init_timeout_seconds),
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
        # Browsers send an Origin with a websocket handshake; a page on any other site could
        # otherwise open one (cross-site websocket hijacking). Same-origin and clients without
        # an Origin are always let in.
        allowed_origins=settings.allowed_origins,
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

    app = Starlette(
        routes=[
            Route(GRAPHQL_PATH, graphql, methods=["GET", "POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *([Route("/metrics", metrics)] if settings.metrics_enabled else []),
            Mount(GRAPHIQL_PREFIX, StaticFiles(directory=GRAPHIQL_STATIC_DIR)),
            *console_routes(),
        ],
        lifespan=lifespan,
    )
    # Outermost first: the request id is there for every log line, CORS answers preflights
    # before anything reads a body, and no handler ever sees more than the body limit.
    limited = BodyLimit(app, max_bytes=settings.max_request_bytes)
    return RequestId(GraphQLWebSockets(cors(limited, settings.allowed_origins), graphql))


class GraphQLWebSockets:
    """Hands the GraphQL websockets straight to the GraphQL app, past CORS, the body limit and
    Starlette's router and middleware (none of which act on a websocket). A websocket holds
    its whole ASGI call chain, one suspended coroutine per layer, for as long as it is open:
    the layers skipped are memory saved on every idle connection."""

    def __init__(self, app: ASGIApp, graphql: ASGIApp) -> None:
        self.app = app
        self.graphql = graphql

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and _route_path(scope) == GRAPHQL_PATH:
            await self.graphql(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    # As Starlette's router matches it: the path below the root path the app is mounted at.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def metrics(request: Request) -> Response:
    """Prometheus text format. Not authenticated: scrape it from a private network only."""
    body = await services_of(request).metrics.exposition()
    return Response(body, media_type=METRICS_CONTENT_TYPE)


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
