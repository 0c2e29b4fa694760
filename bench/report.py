"""The bench's output: one table on stdout, results.json and results.png in the output
directory. Every figure is the median run of its measurement (bench.model.median_run); the
JSON keeps every run.

A ratio is the median throughput of the measurement over the median throughput of its
baseline, except for a baseline paired with its measurement: one its own scenario measures
beside it in every run (create:floor, bench.baselines.bracketed_by_floor). Comparing the
median of one with the median of the other could pair a scenario with another run's floor;
a paired ratio is the median of the runs' own ratios (the lower middle one of an even count,
as median_run takes runs), which is the ratio of the measurement's median run, picked by it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chart import write_chart
from bench.model import Measurement, format_number, latency_summary, lower_median, medians
from bench.registry import Scenario

COLUMNS = ("scenario", "ops/s", "p50 ms", "p95 ms", "p99 ms", "RSS MiB", "ratio", "target", "met")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The measurements one scenario returned in one run."""

    scenario: str
    run: int
    measurements: Sequence[Measurement]
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class RunError:
    scenario: str
    run: int
    error: str


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: the median run of one measurement, judged."""

    scenario: str
    group: str
    throughput: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    samples: int
    peak_rss_mib: float | None
    baseline: str | None
    ratio: float | None
    target: str | None
    met: bool | None
    extra: Mapping[str, float] = field(default_factory=dict)
    run_ratios: tuple[float, ...] = ()  # the same ratio within each run
    paired: bool = False  # the baseline was measured beside it in each run: see the docstring


def build_rows(scenarios: Sequence[Scenario], records: Sequence[RunRecord]) -> list[Row]:
    """A row per measurement name, grouped by scenario in the given order, each judged by its
    scenario's check against the medians of every measurement (baselines included)."""
    every = [m for record in records for m in record.measurements]
    median = medians(every)
    rows: list[Row] = []
    for scenario in scenarios:
        names = dict.fromkeys(
            m.scenario
            for record in records
            if record.scenario == scenario.name
            for m in record.measurements
        )
        met = dict(scenario.check(median)) if scenario.check else {}
        for name in names:
            row = _row(scenario, median[name], median, met.get(name))
            if row.baseline:
                per_run = run_ratios(records, name, row.baseline)
                row = replace(row, run_ratios=per_run)
                if row.baseline in names:  # paired: measured by this scenario in each run
                    row = replace(row, ratio=lower_median(per_run), paired=True)
            rows.append(row)
    return rows


def run_ratios(records: Sequence[RunRecord], name: str, baseline: str) -> tuple[float, ...]:
    """measurement / baseline throughput within each run that has both, in run order: the
    spread behind the ratio of the medians."""
    by_run: dict[int, dict[str, float]] = {}
    for record in records:
        for measured in record.measurements:
            if measured.throughput is not None:
                by_run.setdefault(record.run, {})[measured.scenario] = measured.throughput
    return tuple(
        figures[name] / figures[baseline]
        for _, figures in sorted(by_run.items())
        if figures.get(baseline) and name in figures
    )


def _row(
    scenario: Scenario,
    measured: Measurement,
    median: Mapping[str, Measurement],
    met: bool | None,
) -> Row:
    stats = latency_summary(measured.latencies_ms)
    baseline = scenario.baselines.get(measured.scenario)
    base = median.get(baseline) if baseline else None
    ratio = (
        measured.throughput / base.throughput
        if base is not None and base.throughput and measured.throughput is not None
        else None
    )
    return Row(
        scenario=measured.scenario,
        group=scenario.name,
        throughput=measured.throughput,
        p50_ms=stats["p50"],
        p95_ms=stats["p95"],
        p99_ms=stats["p99"],
        samples=len(measured.latencies_ms),
        peak_rss_mib=None if measured.peak_rss_kib is None else measured.peak_rss_kib / 1024,
        baseline=baseline,
        ratio=ratio,
        target=scenario.targets.get(measured.scenario),
        met=met,
        extra=dict(measured.extra),
    )


def format_table(rows: Sequence[Row]) -> str:
    """The table, then a line of extra figures per measurement that has any."""
    cells = [COLUMNS] + [
        (
            row.scenario,
            format_number(row.throughput),
            format_number(row.p50_ms),
            format_number(row.p95_ms),
            format_number(row.p99_ms),
            format_number(row.peak_rss_mib),
            "-" if row.ratio is None else f"{row.ratio * 100:.1f} %",
            row.target or "-",
            {True: "yes", False: "NO", None: "-"}[row.met],
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in cells) for column in range(len(COLUMNS))]
    lines = []
    for index, line in enumerate(cells):
        text = "  ".join(
            cell.ljust(width) if column in (0, 7) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        lines.append(text.rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    notes = [
        f"  {row.scenario}: "
        + ", ".join(f"{key}={format_number(value)}" for key, value in row.extra.items())
        for row in rows
        if row.extra
    ]
    if notes:
        lines += ["", "figures (median run):", *notes]
    ratios = [row for row in rows if row.baseline]
    if ratios:
        explained = (
            "ratio: median ops/s of the measurement / median ops/s of its baseline "
            "(and within each run)"
        )
        if any(row.paired for row in ratios):
            explained += (
                ";\npaired: its baseline measured on its deployment right before and after it, "
                "in each run;\nthe ratio is then the median of the runs' ratios"
            )
        lines += ["", explained + ":"]
        lines += [
            f"  {row.scenario} / {row.baseline}{', paired' if row.paired else ''}{_per_run(row)}"
            for row in ratios
        ]
    return "\n".join(lines)


def _per_run(row: Row) -> str:
    if not row.run_ratios:
        return ""
    return " (" + ", ".join(f"{ratio * 100:.0f} %" for ratio in row.run_ratios) + ")"


def results_json(
    rows: Sequence[Row],
    records: Sequence[RunRecord],
    errors: Sequence[RunError],
    *,
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The whole result: medians (the rows), every run's figures (latency percentiles rather
    than raw samples, which would run to megabytes), errors, machine and settings."""
    return {
        "created_at": datetime.now(UTC).isoformat(),
        "settings": dict(settings),
        "machine": dict(machine),
        "medians": [asdict(row) | {"extra": dict(row.extra)} for row in rows],
        "runs": [
            {
                "scenario": record.scenario,
                "run": record.run,
                "seconds": record.seconds,
                "measurements": [_run_figures(m) for m in record.measurements],
            }
            for record in records
        ],
        "errors": [asdict(error) for error in errors],
    }


def _run_figures(measured: Measurement) -> dict[str, Any]:
    stats = latency_summary(measured.latencies_ms)
    return {
        "name": measured.scenario,
        "throughput": measured.throughput,
        "samples": len(measured.latencies_ms),
        "p50_ms": stats["p50"],
        "p95_ms": stats["p95"],
        "p99_ms": stats["p99"],
        "peak_rss_kib": measured.peak_rss_kib,
        "extra": dict(measured.extra),
    }


def write_results(
    out: Path,
    scenarios: Sequence[Scenario],
    records: Sequence[RunRecord],
    errors: Sequence[RunError],
    *,
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> str:
    """Write results.json and results.png into `out` and return the table."""
    rows = build_rows(scenarios, records)
    out.mkdir(parents=True, exist_ok=True)
    document = results_json(rows, records, errors, machine=machine, settings=settings)
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    write_chart(out / "results.png", rows)
    table = format_table(rows)
    if errors:
        table += "\n\nerrors:\n" + "\n".join(
            f"  {error.scenario} (run {error.run}): {error.error}" for error in errors
        )
    return table
