"""What one benchmark measurement is, and the statistics the report draws from it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Measurement:
    """One figure of one run: a scenario's throughput and latency samples, or a baseline's."""

    scenario: str  # e.g. "create", "notify@1000", "baseline:graphql-floor"
    throughput: float | None  # operations per second (None when not meaningful)
    latencies_ms: tuple[float, ...] = ()  # raw samples; the report computes p50/p95/p99
    peak_rss_kib: float | None = None
    extra: Mapping[str, float] = field(default_factory=dict)
    # The key in `extra` that is this measurement's headline figure, when that is not its
    # throughput: memory's KiB per subscription, or a scenario's ratio to the floor measured
    # beside it in the same run (bench.baselines.against_floor). The median run is picked by it.
    figure: str | None = None


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The q-th percentile (q in [0, 100]) by linear interpolation between closest ranks
    (numpy's default), or None without samples."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, got {q}")
    if not samples:
        return None
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    weight = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * weight


def latency_summary(samples: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 and the count, computed once (sorting 100,000 samples is not free)."""
    ordered = sorted(samples)
    return {
        "count": float(len(ordered)),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
    }


def median_run(runs: Sequence[Measurement]) -> Measurement:
    """The run whose figure is the median: by the figure the runs name (`Measurement.figure`)
    when every run has it, else by throughput, else by p50 latency. With an even number of
    runs the lower middle one (a real run, never an average of two)."""
    if not runs:
        raise ValueError("no runs to take a median of")
    figure = runs[0].figure
    if figure is not None and all(figure in run.extra for run in runs):
        ordered = sorted(runs, key=lambda run: run.extra[figure])
    elif all(run.throughput is not None for run in runs):
        ordered = sorted(runs, key=lambda run: run.throughput or 0.0)
    else:
        ordered = sorted(runs, key=_p50_or_infinity)
    return ordered[(len(ordered) - 1) // 2]


def medians(runs: Sequence[Measurement]) -> dict[str, Measurement]:
    """Per measurement name, its median run; names keep the order they first appeared in."""
    by_name: dict[str, list[Measurement]] = {}
    for run in runs:
        by_name.setdefault(run.scenario, []).append(run)
    return {name: median_run(group) for name, group in by_name.items()}


def lower_median(values: Sequence[float]) -> float | None:
    """The median of `values` as median_run takes it: the lower middle one of an even count
    (one of the values, never an average of two); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def _p50_or_infinity(run: Measurement) -> float:
    p50 = percentile(run.latencies_ms, 50)
    return math.inf if p50 is None else p50


def format_number(value: float | None) -> str:
    """A figure to read: thousands separated above 100, two decimals below 10."""
    if value is None:
        return "-"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
