"""The scenarios the bench knows, and what each is compared with.

Each scenario lives in a module of its own that defines SCENARIO; they are imported when the
list is asked for (never at import time, since the scenario modules import this one), and a
module that is not there (yet) is left out with a note on stderr.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from bench.model import Measurement, percentile
from bench.stack import Stack


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str  # "create", "read", "notify", "memory", "processor", "push-vs-poll", "scale-out"
    title: str  # one line for the table
    run: Callable[[Stack, float], Awaitable[list[Measurement]]]  # (stack, seconds per measurement)
    # measurement scenario -> baseline measurement scenario for the ratio. A baseline the
    # scenario measures itself in each run (create -> create:floor) is paired with it: the
    # ratio is the median of the runs' own ratios (bench.report), checked with
    # bench.baselines.paired_ratio rather than throughput_ratio.
    baselines: Mapping[str, str] = field(default_factory=dict)
    # measurement scenario -> target text, e.g. ">= 40 % of floor, p99 <= 50 ms"
    targets: Mapping[str, str] = field(default_factory=dict)
    # medians by measurement name -> met? per measurement
    check: Callable[[Mapping[str, Measurement]], Mapping[str, bool]] | None = None


# In the order. "baselines" is not listed: the runner adds the baselines the chosen
# scenarios need (bench.baselines).
SCENARIO_MODULES = (
    "bench.create",
    "bench.read",
    "bench.notify",
    "bench.memory",
    "bench.processing",
    "bench.push_poll",
    "bench.scale_out",
)


def scenarios() -> list[Scenario]:
    """Every scenario whose module can be imported, in the issue's order."""
    found: list[Scenario] = []
    for module_name in SCENARIO_MODULES:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # not there yet, or broken: the other scenarios still run
            print(
                f"bench: scenario module {module_name} left out ({type(exc).__name__}: {exc})",
                file=sys.stderr,
            )
            continue
        scenario = getattr(module, "SCENARIO", None)
        if not isinstance(scenario, Scenario):
            print(f"bench: {module_name} has no SCENARIO; left out", file=sys.stderr)
            continue
        found.append(scenario)
    return found


def __getattr__(name: str) -> list[Scenario]:
    # SCENARIOS, as the contract names it, built on first use (see the module docstring).
    if name == "SCENARIOS":
        return scenarios()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Helpers for Scenario.check functions.


def throughput_ratio(medians: Mapping[str, Measurement], name: str, baseline: str) -> float | None:
    """medians[name].throughput / medians[baseline].throughput, None when either is missing
    (for a baseline measured elsewhere; a paired one: bench.baselines.paired_ratio)."""
    measured, base = medians.get(name), medians.get(baseline)
    if measured is None or base is None or not measured.throughput or not base.throughput:
        return None
    return measured.throughput / base.throughput


def p99_ms(medians: Mapping[str, Measurement], name: str) -> float | None:
    measured = medians.get(name)
    return None if measured is None else percentile(measured.latencies_ms, 99)


def at_least(value: float | None, bound: float) -> bool:
    return value is not None and value >= bound


def at_most(value: float | None, bound: float) -> bool:
    return value is not None and value <= bound
