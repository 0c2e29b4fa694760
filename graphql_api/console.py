"""The task console: a page at `/` to submit tasks and watch them live, for frontend developers.

Plain files under `static/console/` (one HTML page, one script, one stylesheet), no build step
and nothing fetched from elsewhere: the script talks to this API's `/graphql` over HTTP and the
graphql-transport-ws subprotocol. Every file is served with a strict Content-Security-Policy,
so a script injected into the page (say, a task's text rendered as HTML by a future bug) would
not run.

Use: add `*console_routes()` to the app's routes. The page is read when the routes are built,
so a missing file stops the start, not the first visitor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_STATIC_DIR: Final[Path] = Path(__file__).resolve().parent / "static" / "console"
# index.html names its script and stylesheet under this prefix.
CONSOLE_PREFIX: Final = "/static/console"
CONSOLE_PAGE: Final = "index.html"

# This origin only. 'self' covers same-origin websockets only in CSP Level 3 browsers; the
# ws:/wss: schemes keep older ones working. No inline script or style, no plugins, no framing,
# no <base>, and no form may be posted anywhere (the script handles the form).
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # data: for the empty favicon (no request for one)
        "connect-src 'self' ws: wss:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ConsolePage:
    """`respond` is the endpoint of `GET /`: the page with the security headers. (A method, not
    __call__: Starlette treats a callable object as a raw ASGI app.)"""

    def __init__(self, html: str) -> None:
        self.html = html

    async def respond(self, request: Request) -> Response:
        # no-cache: revalidated on every visit, so a new deployment's page is seen at once.
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return HTMLResponse(self.html, headers=headers)


class ConsoleFiles(StaticFiles):
    """The console's files with the same headers as the page (index.html is reachable here
    too, and must not be a way around the policy)."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def console_routes() -> list[BaseRoute]:
    """`GET /` (the page) and its files under CONSOLE_PREFIX. Raises FileNotFoundError when
    the page is missing."""
    html = (CONSOLE_STATIC_DIR / CONSOLE_PAGE).read_text(encoding="utf-8")
    return [
        Route("/", ConsolePage(html).respond, methods=["GET"], name="console"),
        Mount(CONSOLE_PREFIX, ConsoleFiles(directory=CONSOLE_STATIC_DIR), name="console-files"),
    ]
