"""`python -m bench`: start the servers, run the scenarios and their baselines --runs times,
print one table, write results.json and results.png. A benchmark, not a test: a missed
target never changes the exit status (a scenario that could not run does)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench.baselines import ALL as ALL_BASELINES
from bench.baselines import baseline_scenario
from bench.machine import machine_info
from bench.registry import Scenario, scenarios
from bench.report import RunError, RunRecord, write_results
from bench.stack import open_stack

QUICK_RUNS = 1
QUICK_SECONDS = 3.0
BUSY_LOAD = 1.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runs, seconds = (QUICK_RUNS, QUICK_SECONDS) if args.quick else (args.runs, args.seconds)
    if runs < 1 or seconds <= 0:
        print("bench: --runs must be at least 1 and --seconds positive", file=sys.stderr)
        return 2
    known = {scenario.name: scenario for scenario in scenarios()}
    wanted = [name.strip() for name in args.scenarios.split(",") if name.strip()] or list(known)
    unknown = [name for name in wanted if name not in known and name != "baselines"]
    if unknown:
        print(
            f"bench: unknown scenario(s) {', '.join(unknown)}; "
            f"known: {', '.join(['baselines', *known])}",
            file=sys.stderr,
        )
        return 2
    # Every run measures all baselines first: they are the yardstick of the same run.
    plan = [baseline_scenario(ALL_BASELINES), *(known[name] for name in wanted if name in known)]
    settings = {"runs": runs, "seconds": seconds, "scenarios": [s.name for s in plan]}
    machine = machine_info()
    if machine["load_average"][0] > BUSY_LOAD:
        # Other work on the machine shares its CPUs with the servers and load generators.
        _progress(f"the machine is busy (load {machine['load_average'][0]:.1f}): expect noise")
    began = time.perf_counter()
    records, errors = asyncio.run(_run(plan, runs=runs, seconds=seconds))
    settings["wall_seconds"] = round(time.perf_counter() - began, 1)
    settings["load_average_at_end"] = list(os.getloadavg())
    table = write_results(args.out, plan, records, errors, machine=machine, settings=settings)
    print(table)
    print(
        f"\n{runs} run(s) x {seconds:g} s per measurement, {settings['wall_seconds']} s in all; "
        f"written {args.out / 'results.json'} and {args.out / 'results.png'}"
    )
    return 1 if errors else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--scenarios",
        default="",
        help="comma-separated scenario names (default: all); the baselines always run",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs; figures are medians (3)")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measuring time per measurement (10)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="output directory (bench/results)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke mode: {QUICK_RUNS} run of {QUICK_SECONDS:g} s (overrides --runs/--seconds)",
    )
    return parser


async def _run(
    plan: Sequence[Scenario], *, runs: int, seconds: float
) -> tuple[list[RunRecord], list[RunError]]:
    records: list[RunRecord] = []
    errors: list[RunError] = []
    _progress("starting PostgreSQL, Redis and RabbitMQ")
    async with open_stack() as stack:
        # Runs outermost: a drift of the machine over time then touches every scenario alike.
        for run in range(1, runs + 1):
            for scenario in plan:
                _progress(f"run {run}/{runs}: {scenario.name}")
                began = time.perf_counter()
                try:
                    measurements = await scenario.run(stack, seconds)
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    errors.append(RunError(scenario.name, run, f"{type(exc).__name__}: {exc}"))
                    continue
                took = time.perf_counter() - began
                records.append(RunRecord(scenario.name, run, measurements, seconds=took))
                _progress(f"run {run}/{runs}: {scenario.name} done in {took:.0f} s")
    return records, errors


def _progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
