"""/healthz and /readyz on the embedded adapters, and with each dependency down."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from graphql_api.health import healthz, readyz
from taskwire.bootstrap import Services
from taskwire.errors import ServiceUnavailable


class DownPing:
    async def ping(self) -> None:
        raise ServiceUnavailable("down")


async def get(services: Services, path: str) -> httpx.Response:
    app = Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz)])

    async def with_services(scope: Any, receive: Any, send: Any) -> None:
        # What the real app's lifespan puts in every request's state.
        scope["state"] = {"services": services}
        await app(scope, receive, send)

    transport = httpx.ASGITransport(app=with_services)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


async def test_everything_up_is_ready(services: Services) -> None:
    assert (await get(services, "/healthz")).json() == {"status": "ok"}
    ready = await get(services, "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


@pytest.mark.parametrize(
    ("port", "name"),
    [("queue", "rabbitmq"), ("cache", "redis"), ("events", "redis"), ("store", "postgresql")],
)
async def test_a_dependency_down_is_named(services: Services, port: str, name: str) -> None:
    changes: dict[str, Any] = {port: DownPing()}
    broken = dataclasses.replace(services, **changes)
    ready = await get(broken, "/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "failing": [name]}
    assert (await get(broken, "/healthz")).status_code == 200, "alive even when not ready"
