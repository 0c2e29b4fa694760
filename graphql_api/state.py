"""Typed access to what the lifespan put in the request state."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from taskwire.bootstrap import Services


def services_of(connection: HTTPConnection) -> Services:
    services = connection.state.services
    assert isinstance(services, Services)
    return services
