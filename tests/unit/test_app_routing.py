"""GraphQLWebSockets: which connections go straight to the GraphQL app."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from graphql_api.app import GraphQLWebSockets


class Recorder:
    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)


async def nothing() -> dict[str, Any]:
    return {}


async def discard(message: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("kind", "path", "root_path", "to_graphql"),
    [
        ("websocket", "/graphql", "", True),
        ("websocket", "/api/graphql", "/api", True),
        ("websocket", "/graphql/", "", False),
        ("websocket", "/other", "", False),
        ("websocket", "/api/graphql", "", False),
        ("http", "/graphql", "", False),
        ("lifespan", "", "", False),
    ],
)
async def test_only_graphql_websockets_skip_the_router(
    kind: str, path: str, root_path: str, to_graphql: bool
) -> None:
    rest, graphql = Recorder(), Recorder()
    scope: Scope = {"type": kind, "path": path, "root_path": root_path}
    await GraphQLWebSockets(rest, graphql)(scope, nothing, discard)
    assert (len(graphql.scopes), len(rest.scopes)) == ((1, 0) if to_graphql else (0, 1))
