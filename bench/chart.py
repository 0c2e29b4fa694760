"""results.png: throughput as a share of the baseline, and p99 latency."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.model import format_number

if TYPE_CHECKING:
    from bench.report import Row

_LABEL: dict[str, Any] = {"textcoords": "offset points", "va": "center", "fontsize": 8}
_SHARE = re.compile(r">=\s*([0-9.]+)\s*%")


def target_share(target: str | None) -> float | None:
    """The percentage in a target like ">= 40 % of floor, p99 <= 50 ms" (None if none)."""
    match = _SHARE.search(target or "")
    return float(match[1]) if match else None


def write_chart(path: Path, rows: Sequence[Row]) -> None:
    """Two bar charts: each measurement's throughput as a share of its baseline (with its
    target's share marked where the target is a share), and p99 latencies (log scale)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    ratios = [row for row in rows if row.ratio is not None]
    latencies = [row for row in rows if row.p99_ms is not None]
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(13, max(3.0, 0.45 * max(len(ratios), len(latencies), 1) + 1.5))
    )
    if ratios:
        names = [
            f"{row.scenario}\n/ {row.baseline}{' (paired)' if row.paired else ''}" for row in ratios
        ]
        colours = [
            {True: "tab:green", False: "tab:red", None: "tab:gray"}[row.met] for row in ratios
        ]
        shares = [(row.ratio or 0.0) * 100 for row in ratios]
        left.barh(names, shares, color=colours)
        for index, (row, share) in enumerate(zip(ratios, shares, strict=True)):
            left.annotate(f"{share:.0f} %", (share, index), xytext=(3, 0), **_LABEL)
            wanted = target_share(row.target)
            if wanted is not None:  # the target, where it is a share of the baseline
                left.plot([wanted, wanted], [index - 0.4, index + 0.4], color="black")
        left.invert_yaxis()
    left.set_xlabel("% of baseline throughput (same run)")
    left.set_title("throughput vs. baseline (green: target met; black: target)")
    if latencies:
        p99s = [row.p99_ms or 0.0 for row in latencies]
        right.barh([row.scenario for row in latencies], p99s)
        for index, p99 in enumerate(p99s):
            right.annotate(format_number(p99), (p99, index), xytext=(3, 0), **_LABEL)
        right.set_xscale("log")
        right.invert_yaxis()
    right.set_xlabel("p99 latency, ms (log)")
    right.set_title("p99 latency")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
