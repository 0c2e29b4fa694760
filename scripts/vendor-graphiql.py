#!/usr/bin/env python3
"""Vendor the files Strawberry's GraphiQL page loads from unpkg into graphql_api/static/graphiql/.

Usage: .venv/bin/python scripts/vendor-graphiql.py   (needs npm and the npm registry)

The template installed with Strawberry is the source of truth: every unpkg URL in it names a
package version and a file, and carries an SRI hash. Each package is fetched with `npm pack`
into a temporary directory, only the referenced files are taken out of the tarball, and each
must match its integrity attribute byte for byte, or nothing is written. The result replaces
the whole static/graphiql/ directory (so an old version never lingers) with those files,
laid out like unpkg's paths, plus NOTICE.md with each package's version and license text.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

from strawberry.http.ides import get_graphql_ide_html

from graphql_api.graphiql import (
    GRAPHIQL_STATIC_DIR,
    Asset,
    sri_matches,
    sri_sha384,
    template_assets,
)

LICENSE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "license", "license.md", "LICENCE")

# Packages whose tarball has no license file, and where their license text is instead.
LICENSE_ELSEWHERE = {
    "@graphiql/plugin-explorer": "MIT (package.json). The tarball has no license file; the "
    "package is published from the graphql/graphiql monorepo, under the license shown in the "
    "graphiql section.",
}
# Third-party code compiled into a vendored file, whose license must travel with it.
BUNDLED = {
    # The plugin's UMD build inlines OneGraph's graphiql-explorer (0.9.0 is its only ^0.9.0).
    "@graphiql/plugin-explorer": ["graphiql-explorer@0.9.0"],
}


def npm_pack(spec: str, into: Path) -> Path:
    """Download `spec` (name@version) from the registry as a tarball; npm checks its integrity."""
    result = subprocess.run(
        ["npm", "pack", spec, "--json", "--ignore-scripts", "--pack-destination", str(into)],
        cwd=into,  # away from any project .npmrc
        check=True,
        capture_output=True,
        text=True,
    )
    (packed,) = json.loads(result.stdout)
    return into / str(packed["filename"])


def read_member(tarball: tarfile.TarFile, name: str) -> bytes | None:
    # npm tarballs put everything under `package/`; read in memory, never extract to disk.
    try:
        member = tarball.extractfile(f"package/{name}")
    except KeyError:
        return None
    return None if member is None else member.read()


def license_text(tarball: tarfile.TarFile, name: str, spec: str) -> str:
    for file_name in LICENSE_NAMES:
        if (text := read_member(tarball, file_name)) is not None:
            return text.decode("utf-8").rstrip()
    if name in LICENSE_ELSEWHERE:
        return LICENSE_ELSEWHERE[name]
    sys.exit(f"FAIL {spec}: no license file in the package; cannot redistribute it")


def notice_section(title: str, meta: dict[str, str], spec: str, rows: list[str], text: str) -> str:
    return "\n".join(
        [
            f"## {title}",
            "",
            f"License: {meta.get('license', 'see below')}. Source: npm `{spec}`.",
            "",
            *rows,
            *([""] if rows else []),
            "```text",
            text,
            "```",
            "",
        ]
    )


def bundled_section(spec: str, parent: str, downloads: Path) -> str:
    with tarfile.open(npm_pack(spec, downloads), "r:gz") as tarball:
        meta = json.loads(read_member(tarball, "package.json") or b"{}")
        text = license_text(tarball, meta["name"], spec)
    title = f"{meta['name']} {meta['version']} (compiled into {parent})"
    return notice_section(title, meta, spec, [], text)


def vendor_package(spec: str, assets: list[Asset], tarball_path: Path, out: Path) -> str:
    """Copy the package's referenced files to `out`; return its NOTICE section."""
    with tarfile.open(tarball_path, "r:gz") as tarball:
        meta = json.loads(read_member(tarball, "package.json") or b"{}")
        text = license_text(tarball, meta["name"], spec)
        rows = []
        for asset in assets:
            data = read_member(tarball, asset.file)
            if data is None:
                sys.exit(f"FAIL {spec}: the package has no {asset.file}")
            if not sri_matches(data, asset.integrity):
                sys.exit(
                    f"FAIL {spec}/{asset.file}: integrity mismatch\n"
                    f"  template: {asset.integrity}\n  npm:      {sri_sha384(data)}"
                )
            target = out / asset.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            rows.append(f"- `{asset.path}` ({len(data):,} bytes, `{asset.integrity}`)")
            print(f"ok   {asset.path}  {len(data):,} bytes  {asset.integrity}")
    return notice_section(f"{meta['name']} {meta['version']}", meta, spec, rows, text)


def main() -> None:
    assets = template_assets(get_graphql_ide_html(graphql_ide="graphiql"))
    by_package: defaultdict[str, list[Asset]] = defaultdict(list)
    for asset in assets:
        by_package[asset.package_spec].append(asset)

    sections = [
        "# Third-party files in this directory\n",
        "Vendored byte-for-byte from npm by `scripts/vendor-graphiql.py` so GraphiQL works "
        "without internet access; the hashes are the integrity attributes of Strawberry's "
        "GraphiQL template. Do not edit these files: re-run the script.\n",
    ]
    with tempfile.TemporaryDirectory(prefix="vendor-graphiql-") as temp:
        downloads, out = Path(temp) / "npm", Path(temp) / "out"
        downloads.mkdir()
        out.mkdir()
        for spec, package_assets in by_package.items():
            sections.append(vendor_package(spec, package_assets, npm_pack(spec, downloads), out))
            name = package_assets[0].package_spec.rpartition("@")[0]
            sections.extend(bundled_section(b, spec, downloads) for b in BUNDLED.get(name, []))
        (out / "NOTICE.md").write_text("\n".join(sections), encoding="utf-8")
        # Everything verified: only now touch the tree.
        shutil.rmtree(GRAPHIQL_STATIC_DIR, ignore_errors=True)
        shutil.copytree(out, GRAPHIQL_STATIC_DIR)
    total = sum(f.stat().st_size for f in GRAPHIQL_STATIC_DIR.rglob("*") if f.is_file())
    print(f"wrote {GRAPHIQL_STATIC_DIR} ({total:,} bytes)")


if __name__ == "__main__":
    main()
