"""Liveness and readiness endpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from graphql_api.state import services_of

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 2.0


async def healthz(request: Request) -> Response:
    """The process is alive and serving; says nothing about its dependencies."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 when PostgreSQL, Redis and RabbitMQ all answer; 503 naming the ones that do not."""
    services = services_of(request)
    probes: dict[str, list[Callable[[], Awaitable[None]]]] = {
        "postgresql": [services.store.ping],
        "redis": [services.cache.ping, services.events.ping],
        "rabbitmq": [services.queue.ping],
    }
    results = await asyncio.gather(*(_reachable(name, p) for name, p in probes.items()))
    failing = [name for name, ok in zip(probes, results, strict=True) if not ok]
    if failing:
        return JSONResponse({"status": "unavailable", "failing": failing}, status_code=503)
    return JSONResponse({"status": "ready"})


async def _reachable(name: str, probes: list[Callable[[], Awaitable[None]]]) -> bool:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            for probe in probes:
                await probe()
    except Exception as exc:
        log.warning("readiness: %s is not reachable: %r", name, exc)
        return False
    return True
