"""The typed context every resolver receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.types import Info as StrawberryInfo

from graphql_api.auth import Authenticator
from taskwire.bootstrap import Services
from taskwire.errors import Unauthenticated
from taskwire.identity import Principal


@dataclass(slots=True)
class Context:
    services: Services
    auth: Authenticator
    # Who is asking: set from the Authorization header for HTTP, from connection_init for a
    # websocket (None until then). Resolvers read it through `caller`.
    principal: Principal | None = None
    # None when the schema is executed directly (tests, scripts) rather than over HTTP.
    request: Request | WebSocket | None = None
    response: Response | WebSocket | None = None
    # A websocket's connection_init payload; Strawberry sets it.
    connection_params: dict[str, Any] = field(default_factory=dict)

    @property
    def caller(self) -> Principal:
        if self.principal is None:
            raise Unauthenticated()
        # A websocket outlives its token: each operation on it checks again.
        if self.principal.expired(datetime.now(UTC)):
            raise Unauthenticated("The token has expired.")
        return self.principal


Info = StrawberryInfo[Context, None]
