"""GraphiQL that works offline: Strawberry's own page, its unpkg assets served by the app.

Strawberry's template loads React, GraphiQL and the explorer plugin from unpkg, each pinned by
a Subresource Integrity hash. `scripts/vendor-graphiql.py` copies exactly those bytes (checked
against the same hashes) into `static/graphiql/`, laid out like unpkg's paths. Serving the page
then only means swapping the unpkg prefix for ours: the integrity attributes stay, and the
browser still verifies every file.

Use: return `HTMLResponse(graphiql_html())` from `render_graphql_ide`, mount
`StaticFiles(directory=GRAPHIQL_STATIC_DIR)` at the same prefix, and call `graphiql_html()`
once while the app is built so missing or stale assets stop the start, not the first visitor.
The subscription URL needs nothing: the page derives it from its own location (same path,
ws/wss scheme), so it reaches the GraphQL endpoint that served it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Final

from strawberry.http.ides import get_graphql_ide_html

from taskwire.errors import TaskwireError

GRAPHIQL_STATIC_DIR: Final[Path] = Path(__file__).resolve().parent / "static" / "graphiql"
DEFAULT_STATIC_PREFIX: Final = "/static/graphiql"
UNPKG: Final = "https://unpkg.com/"

# The strongest algorithm in an integrity attribute is the one a browser checks (SRI spec).
_SRI_ALGORITHMS: Final = ("sha512", "sha384", "sha256")


class GraphiQLAssetError(TaskwireError):
    """GraphiQL's vendored assets are missing or stale: run scripts/vendor-graphiql.py."""


@dataclass(frozen=True, slots=True)
class Asset:
    """One file the template loads from unpkg."""

    url: str  # exactly as written in the template
    integrity: str

    @property
    def path(self) -> str:
        """Path below the unpkg root, e.g. `react@18.2.0/umd/react.production.min.js`."""
        return self.url.removeprefix(UNPKG)

    @property
    def package_spec(self) -> str:
        """`name@version` (scoped names keep their `@scope/`), what `npm pack` takes."""
        parts = self.path.split("/")
        return "/".join(parts[:2] if parts[0].startswith("@") else parts[:1])

    @property
    def file(self) -> str:
        """Path inside the package, e.g. `umd/react.production.min.js`."""
        return self.path.removeprefix(self.package_spec + "/")

    @property
    def local_file(self) -> Path:
        return GRAPHIQL_STATIC_DIR / self.path


def sri_matches(data: bytes, integrity: str) -> bool:
    """Whether `data` satisfies an integrity attribute, the way a browser decides it."""
    hashes: dict[str, set[str]] = {}
    for token in integrity.split():
        algorithm, _, digest = token.partition("-")
        # Options after `?` are reserved by the spec and ignored by browsers.
        hashes.setdefault(algorithm, set()).add(digest.split("?")[0])
    for algorithm in _SRI_ALGORITHMS:
        if algorithm in hashes:
            digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
            return digest in hashes[algorithm]
    return False


def sri_sha384(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


class _LinkCollector(HTMLParser):
    """Collects every src/href of a page with the integrity attribute of its tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            value = values.get(name)
            if value is not None:
                self.links.append((value, values.get("integrity")))


def page_links(page: str) -> list[tuple[str, str | None]]:
    """Every (src or href, integrity) pair in an HTML page, in document order."""
    collector = _LinkCollector()
    collector.feed(page)
    collector.close()
    return collector.links


def is_external(url: str) -> bool:
    """Whether loading `url` would leave the origin that served the page."""
    lowered = url.strip().lower()
    return lowered.startswith(("http:", "https:", "//", "ws:", "wss:"))


def template_assets(template: str) -> list[Asset]:
    """The unpkg files a GraphiQL template loads; anything else external is an error.

    Refusing unknown external links is what keeps a future Strawberry template that adds a
    CDN from silently bringing back the dependency on the internet.
    """
    assets: list[Asset] = []
    for url, integrity in page_links(template):
        if not is_external(url):
            continue
        if not url.startswith(UNPKG) or not integrity:
            raise GraphiQLAssetError(f"GraphiQL template loads {url!r}, which is not vendored")
        assets.append(Asset(url=url, integrity=integrity))
    return assets


def _asset_problems(assets: list[Asset]) -> list[str]:
    problems: list[str] = []
    for asset in assets:
        try:
            data = asset.local_file.read_bytes()
        except FileNotFoundError:
            problems.append(f"missing {asset.local_file}")
            continue
        if not sri_matches(data, asset.integrity):
            problems.append(f"{asset.local_file} does not match {asset.integrity}")
    return problems


def graphiql_html(static_prefix: str = DEFAULT_STATIC_PREFIX) -> str:
    """Strawberry's GraphiQL page, loading its assets from `static_prefix` on this server.

    Raises GraphiQLAssetError when a vendored file is missing or its hash does not match
    the template's integrity attribute (the browser would refuse it: a blank page).
    """
    return _render(static_prefix.rstrip("/"))


@functools.lru_cache(maxsize=4)
def _render(prefix: str) -> str:
    # Cached per prefix: the template and the vendored files only change with a new install.
    template = get_graphql_ide_html(graphql_ide="graphiql")
    assets = template_assets(template)
    problems = _asset_problems(assets)
    if problems:
        raise GraphiQLAssetError(
            "GraphiQL's vendored assets do not match Strawberry's template "
            "(run scripts/vendor-graphiql.py): " + "; ".join(problems)
        )
    page = template
    for asset in assets:
        quoted = f'"{asset.url}"'
        if page.count(quoted) != 1:
            raise GraphiQLAssetError(f"GraphiQL template: expected {asset.url} exactly once")
        page = page.replace(quoted, f'"{html.escape(prefix)}/{asset.path}"')
    return page
