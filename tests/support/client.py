"""The `gql` client as a user would hold it, pinned to one websocket subprotocol."""

from __future__ import annotations

import asyncio
from typing import Any

from gql import Client, GraphQLRequest, gql
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.websockets import WebsocketsTransport

from tests.support.auth import token_for

GRAPHQL_TRANSPORT_WS = WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL  # "graphql-transport-ws"
LEGACY_GRAPHQL_WS = WebsocketsTransport.APOLLO_SUBPROTOCOL  # "graphql-ws"
SUBPROTOCOLS = [GRAPHQL_TRANSPORT_WS, LEGACY_GRAPHQL_WS]

TASK_FIELDS = (
    "id status inputData result error attempts version createdAt updatedAt startedAt finishedAt"
)
CREATE = gql(
    f"mutation($input: String!) {{ createTask(input: {{inputData: $input}}) {{ {TASK_FIELDS} }} }}"
)
GET = gql(f"query($id: ID!) {{ task(id: $id) {{ {TASK_FIELDS} }} }}")
WATCH = gql(f"subscription($id: ID!) {{ taskUpdated(id: $id) {{ {TASK_FIELDS} }} }}")


def http_transport(http_url: str, token: str | None = None) -> AIOHTTPTransport:
    return AIOHTTPTransport(
        url=http_url, headers={"Authorization": f"Bearer {token or token_for()}"}
    )


def ws_transport(ws_url: str, subprotocol: str, token: str | None = None) -> WebsocketsTransport:
    return WebsocketsTransport(
        url=ws_url,
        subprotocols=[subprotocol],
        init_payload={"Authorization": f"Bearer {token or token_for()}"},
    )


async def create_task(http_url: str, text: str, token: str | None = None) -> dict[str, Any]:
    async with Client(transport=http_transport(http_url, token)) as session:
        result = await session.execute(GraphQLRequest(CREATE, variable_values={"input": text}))
    task: dict[str, Any] = result["createTask"]
    return task


async def get_task(http_url: str, task_id: str, token: str | None = None) -> dict[str, Any] | None:
    async with Client(transport=http_transport(http_url, token)) as session:
        result = await session.execute(GraphQLRequest(GET, variable_values={"id": task_id}))
    task: dict[str, Any] | None = result["task"]
    return task


async def follow(
    ws_url: str, task_id: str, subprotocol: str, timeout: float = 30.0, token: str | None = None
) -> list[dict[str, Any]]:
    """Every taskUpdated result until the server completes the subscription."""
    transport = ws_transport(ws_url, subprotocol, token)
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout), Client(transport=transport) as session:
        assert transport.subprotocol == subprotocol
        async for result in session.subscribe(
            GraphQLRequest(WATCH, variable_values={"id": task_id})
        ):
            seen.append(result["taskUpdated"])
    return seen


async def wait_for_status(
    http_url: str, task_id: str, statuses: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        task = await get_task(http_url, task_id)
        if task is not None and task["status"] in statuses:
            return task
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"task {task_id} never reached {statuses}: {task}")
        await asyncio.sleep(0.1)
