"""Browser tests: Debian's headless Chromium driven by Playwright, against real deployments.

One browser for the session, one deployment per module (real `taskwire api` and processor
processes on the session's PostgreSQL, Redis and RabbitMQ). Playwright never downloads a
browser here: it launches the `chromium` on the PATH, or TASKWIRE_CHROMIUM. Without Playwright
or Chromium the tests are skipped locally and fail with CI=true, like the servers in
tests/conftest.py.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import pytest

from tests.browser.support import CHROMIUM_ENV, chromium_path
from tests.e2e.conftest import Deployment, running_deployment

if TYPE_CHECKING:
    from playwright.async_api import Browser

# Short work, so that a task is seen moving and finishing within a second or so.
TASK_DELAY_SECONDS = "0.3"
# As `taskwire dev` serves it: no token, introspection on (GraphiQL's docs and completion).
OPEN_ENV = {"AUTH_MODE": "none", "INTROSPECTION": "true", "TASK_DELAY_SECONDS": TASK_DELAY_SECONDS}
# As the e2e deployments: AUTH_MODE=jwt with the tests' secret (tests.support.auth). No
# leeway: a token expires at its `exp` (else 30 s later), so that a test can see it expire.
SECURED_ENV = {"TASK_DELAY_SECONDS": TASK_DELAY_SECONDS, "JWT_LEEWAY_SECONDS": "0"}


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if importlib.util.find_spec("playwright") is None:
        _unavailable("playwright is not installed (scripts/test.sh installs requirements.lock)")
    executable = chromium_path()
    if executable is None:
        _unavailable(
            f"no chromium: install Debian's `chromium` package (scripts/test.sh does) "
            f"or set {CHROMIUM_ENV}"
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


def _deployment(
    request: pytest.FixtureRequest, name: str, env: Mapping[str, str]
) -> AbstractAsyncContextManager[Deployment]:
    return running_deployment(
        request.getfixturevalue("postgres_admin_url"),
        request.getfixturevalue("redis_url"),
        request.getfixturevalue("rabbitmq_url"),
        request.getfixturevalue("tmp_path_factory").mktemp(name),
        extra_env=env,
        processors=1,
    )


@pytest.fixture(scope="module")
async def open_api(request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    """An API with AUTH_MODE=none, as `taskwire dev` runs it."""
    async with _deployment(request, "browser-open", OPEN_ENV) as deployment:
        yield deployment


@pytest.fixture(scope="module")
async def secured_api(request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    """An API with AUTH_MODE=jwt: tokens from tests.support.auth.token_for()."""
    async with _deployment(request, "browser-secured", SECURED_ENV) as deployment:
        yield deployment
