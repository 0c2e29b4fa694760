"""GraphiQL is served entirely by the app: no CDN, and the vendored bytes pass SRI."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from graphql_api import graphiql
from graphql_api.graphiql import (
    GRAPHIQL_STATIC_DIR,
    GraphiQLAssetError,
    graphiql_html,
    page_links,
    sri_matches,
    template_assets,
)

PREFIX = "/static/graphiql"
# The versions DESIGN.md promises; a Strawberry upgrade that moves them must re-vendor.
EXPECTED_PACKAGES = {
    "react@18.2.0",
    "react-dom@18.2.0",
    "js-cookie@3.0.5",
    "graphiql@3.8.3",
    "@graphiql/plugin-explorer@1.0.2",
}
# The only http(s) text allowed in the page: the SVG namespace of the inline (data:) favicon,
# an identifier the browser never fetches.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture(autouse=True)
def _fresh_render_cache() -> Iterator[None]:
    # Tests that break the assets on purpose must not see, or leave, a cached page.
    graphiql._render.cache_clear()
    yield
    graphiql._render.cache_clear()


def _assets(page: str) -> list[tuple[str, str]]:
    """(local URL, integrity) of every file the page loads (the favicon is inline data)."""
    return [
        (url, integrity or "") for url, integrity in page_links(page) if not url.startswith("data:")
    ]


def _sha384(data: bytes) -> str:
    # Computed here, not with graphiql.sri_matches, so a bug there cannot hide a bad file.
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def test_page_loads_nothing_from_another_host() -> None:
    page = graphiql_html()

    assert "https://" not in page
    assert set(re.findall(r"http://[^\s\"'<>%]*", page)) <= {SVG_NAMESPACE}
    for url, _ in page_links(page):
        assert url.startswith("data:") or (url.startswith(f"{PREFIX}/") and "//" not in url), url


def test_page_loads_the_promised_versions_each_with_integrity() -> None:
    page = graphiql_html()
    assets = _assets(page)

    assert len(assets) == 7
    packages = {re.sub(r"^/static/graphiql/((?:@[^/]+/)?[^/]+)/.*$", r"\1", u) for u, _ in assets}
    assert packages == EXPECTED_PACKAGES
    assert all(integrity.startswith("sha384-") for _, integrity in assets)


def test_every_referenced_file_is_vendored_and_matches_its_integrity() -> None:
    for url, integrity in _assets(graphiql_html()):
        file = GRAPHIQL_STATIC_DIR / url.removeprefix(f"{PREFIX}/")
        assert file.is_file(), f"{url} is not vendored"
        assert _sha384(file.read_bytes()) == integrity, url


def test_vendored_directory_holds_only_the_page_files_and_the_notice() -> None:
    referenced = {url.removeprefix(f"{PREFIX}/") for url, _ in _assets(graphiql_html())}
    on_disk = {
        path.relative_to(GRAPHIQL_STATIC_DIR).as_posix()
        for path in GRAPHIQL_STATIC_DIR.rglob("*")
        if path.is_file()
    }

    assert on_disk == referenced | {"NOTICE.md"}
    notice = (GRAPHIQL_STATIC_DIR / "NOTICE.md").read_text(encoding="utf-8")
    for package in EXPECTED_PACKAGES:
        name, _, version = package.rpartition("@")
        assert f"## {name} {version}" in notice


def test_subscriptions_use_the_page_own_url() -> None:
    page = graphiql_html()

    # The websocket URL is the page's URL with a ws scheme: the endpoint that served GraphiQL.
    assert 'const fetchURL = window.location.href.split("?")[0];' in page
    assert "const subscriptionUrl = httpUrlToWebSockeUrl(fetchURL);" in page


def test_static_prefix_is_configurable() -> None:
    page = graphiql_html("/assets/ide/")

    urls = [url for url, _ in _assets(page)]
    assert urls
    assert all(url.startswith("/assets/ide/") and "//" not in url for url in urls)


def test_a_missing_asset_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    static = tmp_path / "graphiql"
    shutil.copytree(GRAPHIQL_STATIC_DIR, static)
    (static / "react@18.2.0" / "umd" / "react.production.min.js").unlink()
    monkeypatch.setattr(graphiql, "GRAPHIQL_STATIC_DIR", static)

    with pytest.raises(GraphiQLAssetError, match=r"missing .*react\.production\.min\.js"):
        graphiql_html()


def test_a_modified_asset_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    static = tmp_path / "graphiql"
    shutil.copytree(GRAPHIQL_STATIC_DIR, static)
    with (static / "js-cookie@3.0.5" / "dist" / "js.cookie.min.js").open("ab") as file:
        file.write(b"\n")
    monkeypatch.setattr(graphiql, "GRAPHIQL_STATIC_DIR", static)

    with pytest.raises(GraphiQLAssetError, match=r"js\.cookie\.min\.js does not match"):
        graphiql_html()


def test_a_template_loading_another_cdn_is_refused() -> None:
    template = '<script src="https://cdn.example.com/x.js" integrity="sha384-x"></script>'

    with pytest.raises(GraphiQLAssetError, match=r"cdn\.example\.com"):
        template_assets(template)


def test_sri_check_uses_the_strongest_algorithm() -> None:
    data = b"graphiql"
    sha256 = "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode()
    sha384 = _sha384(data)

    assert sri_matches(data, sha384)
    assert sri_matches(data, f"{sha256} {sha384}")
    assert not sri_matches(data, f"{sha256} sha384-bogus")  # sha256 is ignored next to sha384
    assert not sri_matches(b"other", sha384)
    assert not sri_matches(data, "")


def _ide_app() -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(graphiql_html())

    return Starlette(
        routes=[
            Route("/graphql", page),
            Mount(PREFIX, StaticFiles(directory=GRAPHIQL_STATIC_DIR)),
        ]
    )


async def test_served_page_and_assets_load_from_the_app() -> None:
    transport = httpx.ASGITransport(app=_ide_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        page = await client.get("/graphql")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")

        assets = _assets(page.text)
        assert assets
        for url, integrity in assets:
            response = await client.get(url)
            assert response.status_code == 200, url
            content_type = response.headers["content-type"]
            if url.endswith(".js"):
                assert content_type.split(";")[0] in {"text/javascript", "application/javascript"}
            else:
                assert url.endswith(".css"), url
                assert content_type.startswith("text/css"), content_type
            assert _sha384(response.content) == integrity, url
