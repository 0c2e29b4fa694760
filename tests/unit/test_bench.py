"""The bench's own machinery, without servers: statistics, median runs, the report, and the
load-process protocol (this module doubles as a tiny load module: `python -m
tests.unit.test_bench` echoes its params)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench import baselines, registry
from bench import create as create_scenario
from bench import read as read_scenario
from bench.backend_load import asyncpg_dsn
from bench.baselines import FLOOR_OPS, FLOOR_RATIO, against_floor, paired_floor
from bench.chart import target_share
from bench.load import closed_loop, fixed_count, measurement, run_load, serve_load
from bench.model import (
    Measurement,
    latency_summary,
    lower_median,
    median_run,
    medians,
    percentile,
)
from bench.processing import steady_rate
from bench.registry import Scenario, throughput_ratio
from bench.report import (
    RunError,
    RunRecord,
    build_rows,
    format_table,
    write_results,
)
from bench.stack import Deployment, Stack

REPO = Path(__file__).resolve().parents[2]
ECHO = "tests.unit.test_bench"


# percentile and medians


def test_percentile_interpolates_between_closest_ranks() -> None:
    samples = [float(n) for n in range(1, 101)]  # 1..100
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 100.0
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 99) == pytest.approx(99.01)
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input


def test_percentile_of_nothing_is_none_and_q_is_checked() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_latency_summary_counts_and_ranks() -> None:
    summary = latency_summary([10.0] * 98 + [100.0, 1000.0])
    assert summary["count"] == 100
    assert summary["p50"] == 10.0
    assert summary["p99"] == pytest.approx(109.0)


def _m(name: str, throughput: float | None, latencies: tuple[float, ...] = ()) -> Measurement:
    return Measurement(scenario=name, throughput=throughput, latencies_ms=latencies)


def test_median_run_is_the_middle_run_by_throughput() -> None:
    runs = [_m("create", 300.0, (9.0,)), _m("create", 100.0, (1.0,)), _m("create", 200.0, (5.0,))]
    assert median_run(runs) is runs[2]


def test_median_run_of_an_even_count_is_a_real_run_the_lower_middle() -> None:
    runs = [_m("x", 4.0), _m("x", 1.0), _m("x", 3.0), _m("x", 2.0)]
    assert median_run(runs).throughput == 2.0


def test_median_run_without_throughput_goes_by_p50() -> None:
    runs = [_m("notify", None, (50.0, 60.0)), _m("notify", None, (5.0,)), _m("notify", None, ())]
    # No samples counts as the worst, never as the median of two good runs.
    assert median_run(runs) is runs[0]


def test_median_run_without_throughput_goes_by_its_named_figure() -> None:
    runs = [
        Measurement("memory", None, figure="kib", extra={"kib": value}) for value in (30.0, 10, 20)
    ]
    assert median_run(runs) is runs[2]


def test_median_run_goes_by_its_named_figure_before_throughput() -> None:
    # A paired scenario's figure is its ratio to its own run's floor, not its throughput.
    runs = [
        Measurement("create", throughput, figure="r", extra={"r": ratio})
        for throughput, ratio in ((300.0, 0.3), (600.0, 0.48), (450.0, 0.5))
    ]
    assert median_run(runs) is runs[1]


def test_lower_median_is_one_of_the_values() -> None:
    assert lower_median([0.5, 0.3, 0.48]) == 0.48
    assert lower_median([0.4, 0.1, 0.3, 0.2]) == 0.2  # even count: the lower middle
    assert lower_median([]) is None


def test_median_run_of_nothing_fails() -> None:
    with pytest.raises(ValueError, match="no runs"):
        median_run([])


def test_medians_group_by_name_in_first_seen_order() -> None:
    runs = [_m("b", 1.0), _m("a", 5.0), _m("b", 3.0), _m("a", 1.0), _m("b", 2.0), _m("a", 3.0)]
    result = medians(runs)
    assert list(result) == ["b", "a"]
    assert result["b"].throughput == 2.0
    assert result["a"].throughput == 3.0


# the report


async def _never(stack: Stack, seconds: float) -> list[Measurement]:
    raise AssertionError("not run in these tests")


def _check(found: Mapping[str, Measurement]) -> Mapping[str, bool]:
    ratio = throughput_ratio(found, "create", "baseline:floor")
    return {"create": ratio is not None and ratio >= 0.4}


SCENARIOS = [
    Scenario(name="baselines", title="parts", run=_never),
    Scenario(
        name="create",
        title="createTask",
        run=_never,
        baselines={"create": "baseline:floor"},
        targets={"create": ">= 40 % of floor"},
        check=_check,
    ),
]


def _records() -> list[RunRecord]:
    records = []
    for run, (floor, create) in enumerate([(1000.0, 300.0), (1100.0, 500.0), (900.0, 450.0)], 1):
        records.append(RunRecord("baselines", run, [_m("baseline:floor", floor, (1.0, 2.0))]))
        latencies = tuple(float(n) for n in range(1, 101))
        records.append(
            RunRecord(
                "create",
                run,
                [
                    Measurement(
                        "create",
                        create,
                        latencies,
                        peak_rss_kib=2048.0,
                        extra={"api_cpu_pct": 97.5},
                    )
                ],
            )
        )
    return records


def test_rows_take_medians_ratios_and_the_scenarios_verdict() -> None:
    rows = build_rows(SCENARIOS, _records())
    assert [row.scenario for row in rows] == ["baseline:floor", "create"]
    floor, create = rows
    assert floor.throughput == 1000.0
    assert floor.ratio is None
    assert floor.met is None
    assert create.throughput == 450.0
    # 450 / 1000: each figure is its own median run.
    assert create.ratio == pytest.approx(0.45)
    assert create.met is True
    assert create.p99_ms == pytest.approx(99.01)
    assert create.peak_rss_mib == 2.0
    assert create.target == ">= 40 % of floor"
    assert create.run_ratios == pytest.approx((0.3, 500 / 1100, 0.5))


def test_a_missed_target_says_no() -> None:
    records = [
        RunRecord("baselines", 1, [_m("baseline:floor", 1000.0)]),
        RunRecord("create", 1, [_m("create", 100.0)]),
    ]
    [_, create] = build_rows(SCENARIOS, records)
    assert create.met is False
    assert "NO" in format_table([create])


def test_table_lists_every_column_and_the_figures() -> None:
    table = format_table(build_rows(SCENARIOS, _records()))
    lines = table.splitlines()
    for column in ("scenario", "ops/s", "p50 ms", "p95 ms", "p99 ms", "RSS MiB", "ratio", "met"):
        assert column in lines[0]
    create = next(line for line in lines if line.startswith("create "))
    assert "450" in create
    assert "45.0 %" in create
    assert ">= 40 % of floor" in create
    assert create.rstrip().endswith("yes")
    assert "create: errors" not in table
    assert "api_cpu_pct=97.5" in table
    # Within each run: 300/1000, 500/1100, 450/900.
    assert "create / baseline:floor (30 %, 45 %, 50 %)" in table


def test_results_json_and_png_are_written(tmp_path: Path) -> None:
    errors = [RunError("notify", 2, "RuntimeError: boom")]
    table = write_results(
        tmp_path,
        SCENARIOS,
        _records(),
        errors,
        machine={"cpu_count": 2},
        settings={"runs": 3, "seconds": 10.0},
    )
    assert "notify (run 2): RuntimeError: boom" in table
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["machine"] == {"cpu_count": 2}
    assert [row["scenario"] for row in document["medians"]] == ["baseline:floor", "create"]
    assert document["medians"][1]["ratio"] == pytest.approx(0.45)
    assert len(document["runs"]) == 6
    first_create = document["runs"][1]["measurements"][0]
    assert first_create["name"] == "create"
    assert first_create["p50_ms"] == pytest.approx(50.5)
    assert document["errors"] == [{"scenario": "notify", "run": 2, "error": "RuntimeError: boom"}]
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_target_share_reads_the_percentage_of_a_target() -> None:
    assert target_share(">= 40 % of floor, p99 <= 50 ms") == 40.0
    assert target_share(">= 12.5 % of UPDATE (50 % / 4 writes)") == 12.5
    assert target_share(">= 500 in flight") is None
    assert target_share(None) is None


# the paired floor


def _floor(before: float, after: float) -> Measurement:
    return paired_floor(
        Measurement(
            "create:floor", before, (1.0, 2.0), 100.0, {"errors": 1.0, "api_cpu_pct": 90.0}
        ),
        Measurement("create:floor", after, (3.0,), 300.0, {"errors": 2.0, "api_cpu_pct": 100.0}),
    )


def test_paired_floor_is_the_mean_of_the_floors_before_and_after() -> None:
    floor = _floor(900.0, 1100.0)
    assert floor.scenario == "create:floor"
    assert floor.throughput == 1000.0
    assert floor.latencies_ms == (1.0, 2.0, 3.0)
    # VmHWM after the scenario is the scenario's peak; the floor's own is the one before.
    assert floor.peak_rss_kib == 100.0
    assert floor.extra == {
        "errors": 3.0,
        "api_cpu_pct": 95.0,
        "before_ops_s": 900.0,
        "after_ops_s": 1100.0,
    }


def test_paired_floor_refuses_floors_of_two_measurements() -> None:
    with pytest.raises(ValueError, match="floors of two"):
        paired_floor(_m("create:floor", 1.0), _m("read:floor", 1.0))


def test_against_floor_carries_its_runs_ratio_as_its_figure() -> None:
    measured = against_floor(
        Measurement("create", 450.0, (5.0,), 10.0, {"errors": 0.0}), _floor(800.0, 1000.0)
    )
    assert measured.throughput == 450.0
    assert measured.latencies_ms == (5.0,)
    assert measured.extra == {"errors": 0.0, FLOOR_OPS: 900.0, FLOOR_RATIO: 0.5}
    assert measured.figure == FLOOR_RATIO
    with pytest.raises(ValueError, match="no throughput"):
        against_floor(_m("create", None), _floor(1.0, 1.0))


class _FakeDeployment:
    """Stands in for a Deployment: bracketed_by_floor only hands it to measure_graphql."""


async def test_bracketed_by_floor_measures_the_floor_right_before_and_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, float]] = []
    floors = iter([800.0, 1000.0])

    async def fake_graphql(
        deployment: Deployment, name: str, *, query: str, seconds: float
    ) -> Measurement:
        assert query == "{ __typename }"
        calls.append((name, seconds))
        return _m(name, next(floors), (1.0,))

    async def measure() -> Measurement:
        calls.append(("create", 10.0))
        return _m("create", 450.0, (5.0,))

    monkeypatch.setattr(baselines, "measure_graphql", fake_graphql)
    deployment: Any = _FakeDeployment()
    found = await baselines.bracketed_by_floor(deployment, "create", 10.0, measure)
    # Each floor measures half the scenario's seconds, one on either side of it.
    assert calls == [("create:floor", 5.0), ("create", 10.0), ("create:floor", 5.0)]
    assert [m.scenario for m in found] == ["create", "create:floor"]
    assert found[1].throughput == 900.0
    assert found[0].extra[FLOOR_RATIO] == pytest.approx(0.5)


# (create, floor before, floor after, latencies) per run: the ratios are 0.3, 0.48 and 0.5.
# The ratio of the medians would be 450 / 1000 = 0.45; the median of the runs' ratios is the
# second run's 0.48.
PAIRED_RUNS = [
    (300.0, 900.0, 1100.0, tuple(float(n) for n in range(1, 101))),
    (600.0, 1200.0, 1300.0, tuple(float(n) for n in range(1, 41))),
    (450.0, 800.0, 1000.0, tuple(float(n) for n in range(100, 201))),
]


def _paired_records() -> list[RunRecord]:
    records = []
    for run, (throughput, before, after, latencies) in enumerate(PAIRED_RUNS, 1):
        records.append(RunRecord("baselines", run, [_m("baseline:graphql-floor", 1500.0)]))
        floor = paired_floor(_m("create:floor", before, (1.0,)), _m("create:floor", after))
        measured = against_floor(Measurement("create", throughput, latencies), floor)
        records.append(RunRecord("create", run, [measured, floor]))
    return records


def test_a_paired_ratio_is_the_median_of_the_runs_own_ratios() -> None:
    rows = build_rows([SCENARIOS[0], create_scenario.SCENARIO], _paired_records())
    assert [row.scenario for row in rows] == ["baseline:graphql-floor", "create", "create:floor"]
    _, measured, floor = rows
    assert measured.baseline == "create:floor"
    assert measured.paired is True
    assert measured.run_ratios == pytest.approx((0.3, 0.48, 0.5))
    assert measured.ratio == pytest.approx(0.48)
    # Every figure of the row is the median ratio's run: its throughput and latencies.
    assert measured.throughput == 600.0
    assert measured.p99_ms == pytest.approx(39.61)
    assert measured.extra[FLOOR_OPS] == 1250.0
    # Judged by that ratio (>= 40 %) and that run's p99 (<= 50 ms).
    assert measured.target == ">= 40 % of its floor, p99 <= 50 ms"
    assert measured.met is True
    # The floor row is the floor's own median run; the standalone floor is no baseline of it.
    assert floor.throughput == 1000.0
    assert floor.ratio is None
    assert floor.paired is False
    assert floor.extra == {"before_ops_s": 900.0, "after_ops_s": 1100.0}


def test_a_paired_ratio_of_an_even_count_of_runs_is_the_lower_middle_run() -> None:
    records = [r for r in _paired_records() if r.run != 3]
    [_, measured, _] = build_rows([SCENARIOS[0], create_scenario.SCENARIO], records)
    assert measured.run_ratios == pytest.approx((0.3, 0.48))
    assert measured.ratio == pytest.approx(0.3)
    assert measured.throughput == 300.0  # the same run
    assert measured.met is False  # 30 % < 40 %


def test_the_table_and_json_say_which_ratios_are_paired(tmp_path: Path) -> None:
    plan = [SCENARIOS[0], create_scenario.SCENARIO]
    table = write_results(tmp_path, plan, _paired_records(), [], machine={}, settings={"runs": 3})
    line = next(line for line in table.splitlines() if line.startswith("create "))
    assert "48.0 %" in line
    assert "create / create:floor, paired (30 %, 48 %, 50 %)" in table
    assert "the median of the runs' ratios" in table
    document = json.loads((tmp_path / "results.json").read_text())
    by_name = {row["scenario"]: row for row in document["medians"]}
    assert by_name["create"]["paired"] is True
    assert by_name["create"]["ratio"] == pytest.approx(0.48)
    assert by_name["create:floor"]["throughput"] == 1000.0


def test_create_and_read_check_against_their_paired_floor() -> None:
    assert create_scenario.SCENARIO.baselines == {"create": "create:floor"}
    assert read_scenario.SCENARIO.baselines == {"read": "read:floor"}
    assert target_share(read_scenario.SCENARIO.targets["read"]) == 80.0
    floor = _floor(1000.0, 1000.0)
    fast = against_floor(_m("read", 850.0), floor)
    slow = against_floor(_m("read", 750.0), floor)
    # The standalone floor no longer counts: a slow one would have let 750 pass.
    standalone = _m("baseline:graphql-floor", 900.0)
    assert read_scenario.check({"read": fast, "baseline:graphql-floor": standalone}) == {
        "read": True
    }
    assert read_scenario.check({"read": slow, "baseline:graphql-floor": standalone}) == {
        "read": False
    }
    assert read_scenario.check({}) == {"read": False}
    assert baselines.paired_ratio({"read": slow}, "read") == pytest.approx(0.75)


# the registry


def test_registry_leaves_out_a_module_that_is_not_there(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(registry, "SCENARIO_MODULES", ("bench.create", "bench.no_such_module"))
    found = registry.scenarios()
    assert [scenario.name for scenario in found] == ["create"]
    assert "bench.no_such_module left out" in capsys.readouterr().err


def test_registry_exposes_scenarios_lazily_by_the_contract_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "SCENARIO_MODULES", ("bench.read", "bench.processing"))
    assert [scenario.name for scenario in registry.SCENARIOS] == ["read", "processor"]


# load generation


async def echo(params: dict[str, Any]) -> dict[str, Any]:
    """The tiny load module run_load is tested with."""
    mode = params.get("mode")
    if mode == "fail":
        print("something broke in the load", file=sys.stderr)
        raise SystemExit(3)
    if mode == "silent":
        raise SystemExit(0)  # prints nothing
    if mode == "hang":
        await asyncio.sleep(60)
    return {"echo": params, "loop": type(asyncio.get_running_loop()).__module__}


@pytest.fixture
def at_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    # `python -m tests.unit.test_bench` resolves the package from the working directory.
    monkeypatch.chdir(REPO)


@pytest.mark.usefixtures("at_repo")
async def test_run_load_passes_params_and_returns_the_childs_json() -> None:
    result = await run_load(ECHO, {"mode": "echo", "n": 3}, timeout=30)
    assert result["echo"] == {"mode": "echo", "n": 3}
    assert result["load_cpu_seconds"] > 0
    assert result["loop"].startswith("uvloop")


@pytest.mark.usefixtures("at_repo")
async def test_run_load_reports_a_failing_child_with_its_stderr() -> None:
    with pytest.raises(RuntimeError, match="exited 3") as failure:
        await run_load(ECHO, {"mode": "fail"}, timeout=30)
    assert "something broke in the load" in str(failure.value)


@pytest.mark.usefixtures("at_repo")
async def test_run_load_needs_a_json_object() -> None:
    with pytest.raises(RuntimeError, match="printed no JSON object"):
        await run_load(ECHO, {"mode": "silent"}, timeout=30)


@pytest.mark.usefixtures("at_repo")
async def test_run_load_kills_a_child_past_its_timeout() -> None:
    with pytest.raises(RuntimeError, match="ran past 2 s"):
        await run_load(ECHO, {"mode": "hang"}, timeout=2)


async def test_closed_loop_counts_only_the_window_and_errors_apart() -> None:
    async def operation(client: int, done: int) -> None:
        await asyncio.sleep(0.01)
        if client == 0 and done % 2:
            raise ValueError("odd")

    result = await closed_loop(operation, concurrency=4, seconds=0.3, warmup=0.1)
    # 4 clients at ~100/s for 0.3 s; client 0 fails every other time.
    assert 40 <= result.operations + result.errors <= 130
    assert result.errors > 0
    assert result.first_error == "ValueError: odd"
    assert result.throughput == pytest.approx(result.operations / 0.3)
    assert len(result.latencies_ms) == result.operations
    assert all(latency >= 9.0 for latency in result.latencies_ms)


async def test_fixed_count_does_exactly_that_many() -> None:
    seen: list[tuple[int, int]] = []

    async def operation(client: int, done: int) -> None:
        await asyncio.sleep(0)
        seen.append((client, done))

    result = await fixed_count(operation, concurrency=3, count=10)
    assert result.operations == 10
    assert len(seen) == 10
    assert {client for client, _ in seen} == {0, 1, 2}


def test_measurement_refuses_a_load_that_only_failed() -> None:
    failed = {"operations": 0, "errors": 5, "first_error": "HTTP 500", "latencies_ms": []}
    with pytest.raises(RuntimeError, match="HTTP 500"):
        measurement("create", failed)
    ok = {"operations": 2, "errors": 1, "throughput": 20.0, "latencies_ms": [1, 2]}
    made = measurement("create", ok, peak_rss_kib=10.0, extra={"api_cpu_pct": 50.0})
    assert made == Measurement(
        "create", 20.0, (1.0, 2.0), 10.0, {"errors": 1.0, "api_cpu_pct": 50.0}
    )


# small helpers of the scenarios


def test_steady_rate_skips_the_ramp_and_the_tail() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    # 100 tasks, one every 10 ms, plus a straggler 10 s later: the tail must not count.
    finished = [start + timedelta(milliseconds=10 * n) for n in range(100)]
    finished.append(start + timedelta(seconds=10))
    assert steady_rate(finished) == pytest.approx(100.0, rel=0.02)
    assert steady_rate(finished[:5]) is None


def test_asyncpg_dsn_drops_the_sqlalchemy_driver() -> None:
    url = "postgresql+asyncpg://postgres:secret@127.0.0.1:5432/taskwire_x"
    assert asyncpg_dsn(url) == "postgresql://postgres:secret@127.0.0.1:5432/taskwire_x"


if __name__ == "__main__":
    serve_load(echo)
