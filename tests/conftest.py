"""Root fixtures: where the real servers are.

A URL in TASKWIRE_TEST_POSTGRES_URL / TASKWIRE_TEST_REDIS_URL / TASKWIRE_TEST_RABBITMQ_URL
wins. Otherwise the first test that needs a server starts, through tests/servers.py, every
server that the collected tests need (in parallel, once per session) and the session stops
them at its end, also on Ctrl-C, SIGTERM or a failure. Without the server's binaries a test
that needs it is skipped locally; with CI=true it fails instead, so a missing service can
never turn into a green run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.servers import KINDS, ServerError, ServerPool, missing_binaries

# The fixtures that stand for each kind of server (the collected tests' needs are read off them).
FIXTURE_KINDS = {"postgres_admin_url": "postgres", "redis_url": "redis", "rabbitmq_url": "rabbitmq"}
NEEDED_KINDS = pytest.StashKey[list[str]]()
WARMED_UP = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM would end pytest without teardown or atexit and leave the servers running;
    # as an interrupt it unwinds like Ctrl-C.
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    if signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_collection_finish(session: pytest.Session) -> None:
    names = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    needed = {kind for name, kind in FIXTURE_KINDS.items() if name in names}
    session.config.stash[NEEDED_KINDS] = [kind for kind in KINDS if kind in needed]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def _server_pool() -> Iterator[ServerPool]:
    pool = ServerPool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def servers(_server_pool: ServerPool) -> ServerPool:
    """The servers this session started: ``servers.shared(kind)`` is the one behind a URL
    fixture (unless TASKWIRE_TEST_<KIND>_URL names another); ``servers.spawn(kind)`` starts a
    private one to kill or restart without disturbing other tests."""
    missing = [name for kind in KINDS for name in missing_binaries(kind)]
    if missing:
        _unavailable(
            f"server binaries missing: {', '.join(missing)} (scripts/test.sh installs them)"
        )
    return _server_pool


def _server_url(request: pytest.FixtureRequest, kind: str) -> str:
    url = os.environ.get(f"TASKWIRE_TEST_{kind.upper()}_URL")
    if url:
        return url
    missing = missing_binaries(kind)
    if missing:
        _unavailable(
            f"no {kind} server: set TASKWIRE_TEST_{kind.upper()}_URL or install "
            f"{', '.join(missing)} (scripts/test.sh does)"
        )
    pool: ServerPool = request.getfixturevalue("_server_pool")
    if not request.config.stash.get(WARMED_UP, False):
        # The first request starts every server the session needs at once: they boot in
        # parallel. A failure here is reported by the fixture of that kind, below.
        request.config.stash[WARMED_UP] = True
        wanted = {kind, *request.config.stash.get(NEEDED_KINDS, [])}
        startable = [
            other
            for other in KINDS
            if other in wanted
            and not os.environ.get(f"TASKWIRE_TEST_{other.upper()}_URL")
            and not missing_binaries(other)
        ]
        with contextlib.suppress(ServerError):
            pool.start_shared(startable)
    return pool.shared(kind).url


@pytest.fixture(scope="session")
def postgres_admin_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL (postgresql+asyncpg://) of a superuser on the test PostgreSQL server."""
    return _server_url(request, "postgres")


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    return _server_url(request, "redis")


@pytest.fixture(scope="session")
def rabbitmq_url(request: pytest.FixtureRequest) -> str:
    return _server_url(request, "rabbitmq")
