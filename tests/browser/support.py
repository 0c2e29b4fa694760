"""What the browser tests share: where Chromium and the artifacts are, and a page that records
every request it makes.

Playwright itself is imported only where a test runs (conftest's `browser` fixture and inside
the tests): without it the fixture skips the tests locally and fails them with CI=true, instead
of an import error at collection.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Error, Page, Route, WebSocket

CHROMIUM_ENV = "TASKWIRE_CHROMIUM"
ARTIFACTS_ENV = "TASKWIRE_ARTIFACTS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]


def chromium_path() -> str | None:
    """TASKWIRE_CHROMIUM, else Debian's `chromium` on the PATH (never a downloaded browser)."""
    return os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")


def artifacts_dir() -> Path:
    """Where screenshots go: `browser/` under TASKWIRE_ARTIFACTS_DIR, else under the
    repository's `artifacts/` (ignored by git)."""
    root = Path(os.environ.get(ARTIFACTS_ENV) or REPO_ROOT / "artifacts")
    directory = root / "browser"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    # A websocket to the same host and port is the same server (ws:/wss: for http:/https:).
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return scheme, parts.netloc


@dataclass
class RecordedPage:
    """A page in a context of its own (no storage shared with other tests), with every URL it
    requested, websockets included, and every error it logged."""

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Every websocket frame the page received, decoded (graphql-transport-ws messages).
    received: list[object] = field(default_factory=list)

    def same_origin(self, url: str) -> bool:
        return _origin(url) == _origin(self.origin)

    def outside_requests(self) -> list[str]:
        return [url for url in self.requests if not self.same_origin(url)]

    def _request(self, url: str) -> None:
        self.requests.append(url)

    def _websocket(self, socket: WebSocket) -> None:
        self.requests.append(socket.url)
        socket.on("framereceived", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        self.received.append(json.loads(payload))

    def messages(self, kind: str) -> list[dict[str, Any]]:
        """The received websocket messages of one type ("next", "complete", ...)."""
        return [
            message
            for message in self.received
            if isinstance(message, dict) and message.get("type") == kind
        ]

    def updated_statuses(self) -> list[str]:
        """The statuses of every taskUpdated event received, in order."""
        return [
            message["payload"]["data"]["taskUpdated"]["status"] for message in self.messages("next")
        ]

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error}")


@asynccontextmanager
async def recorded_page(browser: Browser, origin: str) -> AsyncIterator[RecordedPage]:
    """A fresh page that may only reach `origin`: anything else is recorded, then aborted, so
    a page that reaches out fails the same way with or without internet access."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()
        recorded = RecordedPage(page=page, origin=origin)
        context.on("request", lambda request: recorded._request(request.url))
        page.on("websocket", recorded._websocket)
        page.on("console", recorded._console)
        page.on("pageerror", recorded._page_error)

        async def abort(route: Route) -> None:
            await route.abort("blockedbyclient")

        await context.route(lambda url: not recorded.same_origin(url), abort)
        yield recorded
    finally:
        await context.close()


async def screenshot(page: Page, name: str) -> Path:
    """Saves the whole page as artifacts/browser/<name>.png and returns the path."""
    path = artifacts_dir() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
