"""The typed context every resolver receives."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.types import Info as StrawberryInfo

from taskwire.bootstrap import Services


@dataclass(slots=True)
class Context:
    services: Services
    # None when the schema is executed directly (tests, scripts) rather than over HTTP.
    request: Request | WebSocket | None = None
    response: Response | WebSocket | None = None


Info = StrawberryInfo[Context, None]
