"""Metrics on the embedded adapters: what each use case counts, the GraphQL operation labels and
their bounds, the queue collector's cache, the processor's HTTP endpoint, and the deployment's
Prometheus and Grafana files against the names that exist."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from graphql_api.app import create_app
from graphql_api.auth import Authenticator
from graphql_api.context import Context
from graphql_api.schema import build_schema
from taskwire import service
from taskwire.bootstrap import Services
from taskwire.db import migrate
from taskwire.metrics import (
    ANONYMOUS,
    MAX_OPERATION_NAMES,
    OTHER,
    Metrics,
    OperationNames,
    QueueCollector,
    serving,
)
from taskwire.models import Task, TaskStatus
from taskwire.settings import Settings
from tests.support.auth import TESTER, auth_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CREATE = "mutation {name}($input: String!) {{ createTask(input: {{inputData: $input}}) {{ id }} }}"


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's current value (0 when it does not exist yet)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def task(status: TaskStatus, **changes: Any) -> Task:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fields: dict[str, Any] = {
        "id": uuid4(),
        "status": status,
        "input_data": "x",
        "result": None,
        "error": None,
        "attempts": 1,
        "version": 3,
        "created_at": now,
        "updated_at": now,
        **changes,
    }
    return Task(**fields)


# -- the metrics object ----------------------------------------------------------------------


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.tasks_created.inc()
    assert value(first, "taskwire_tasks_created_total") == 1
    assert value(second, "taskwire_tasks_created_total") == 0


def test_a_finished_task_counts_its_status_time_and_attempts() -> None:
    metrics = Metrics()
    created = datetime(2026, 1, 1, tzinfo=UTC)
    claimed = task(TaskStatus.PROCESSING, created_at=created, started_at=created)
    done = task(
        TaskStatus.COMPLETED,
        created_at=created,
        started_at=created,
        finished_at=created + timedelta(seconds=3),
        attempts=2,
    )
    metrics.attempt_finished(claimed, done, "completed")
    metrics.task_finished(done)
    assert value(metrics, "taskwire_tasks_finished_total", status="COMPLETED") == 1
    assert value(metrics, "taskwire_tasks_finished_total", status="FAILED") == 0
    assert value(metrics, "taskwire_task_end_to_end_seconds_sum", status="COMPLETED") == 3
    assert value(metrics, "taskwire_task_processing_seconds_sum", outcome="completed") == 3
    assert value(metrics, "taskwire_task_attempts_sum") == 2
    # A task not in a final status is not a finish.
    metrics.task_finished(task(TaskStatus.PENDING))
    assert value(metrics, "taskwire_tasks_finished_total", status="PENDING") == 0


def test_operation_names_are_bounded() -> None:
    names = OperationNames(limit=3)
    assert names.label(None) == ANONYMOUS
    assert names.label("") == ANONYMOUS
    assert names.label("x" * 65) == OTHER
    assert names.label("not a name") == OTHER
    assert names.label("Submit") == "Submit"
    assert [names.label(n) for n in ("A", "B", "C", "A")] == ["A", "B", OTHER, "A"]
    assert names.label("Submit") == "Submit"  # known names keep their label


def test_operation_series_stay_bounded_under_many_names() -> None:
    metrics = Metrics()
    for n in range(MAX_OPERATION_NAMES * 3):
        metrics.operation(f"op{n}", "ok", 0.001)
    metrics.operation("x", "not a code; DROP", 0.001)
    exposed = metrics.registry.collect()
    operations = next(f for f in exposed if f.name == "taskwire_graphql_operations")
    labels = {s.labels["operation"] for s in operations.samples if s.name.endswith("_total")}
    assert len(labels) == MAX_OPERATION_NAMES + 1  # + "other"
    assert value(metrics, "taskwire_graphql_operations_total", operation=OTHER, outcome="ok") == (
        MAX_OPERATION_NAMES * 2
    )
    assert (
        value(metrics, "taskwire_graphql_operations_total", operation=OTHER, outcome="error") == 1
    )


def test_a_subscription_is_counted_without_a_latency() -> None:
    metrics = Metrics()
    metrics.operation("Watch", "ok", None)
    assert value(metrics, "taskwire_graphql_operations_total", operation="Watch", outcome="ok") == 1
    assert (
        value(metrics, "taskwire_graphql_operation_duration_seconds_count", operation="Watch") == 0
    )


# -- the use cases ---------------------------------------------------------------------------


async def test_create_read_and_process_are_counted(services: Services, processor: None) -> None:
    metrics = services.metrics
    created = await service.create_task(services, TESTER, "abc")
    assert value(metrics, "taskwire_tasks_created_total") == 1
    # createTask cached the task: the first read is a hit; an unknown id is a miss.
    await service.read_task(services, created.id)
    await service.read_task(services, uuid4())
    assert value(metrics, "taskwire_cache_reads_total", result="hit") == 1
    assert value(metrics, "taskwire_cache_reads_total", result="miss") == 1
    seen = await _subscribe(services, str(created.id))
    assert seen[-1]["status"] == "COMPLETED"
    assert value(metrics, "taskwire_tasks_finished_total", status="COMPLETED") == 1
    assert value(metrics, "taskwire_task_processing_seconds_count", outcome="completed") == 1
    assert value(metrics, "taskwire_task_end_to_end_seconds_count", status="COMPLETED") == 1
    # Every transition was published: created is not an event; claim and complete are.
    assert value(metrics, "taskwire_events_published_total") == 2
    # The subscriber got every update after its first snapshot, and has left.
    assert value(metrics, "taskwire_events_delivered_total") == len(seen) - 1
    assert value(metrics, "taskwire_subscriptions_active") == 0


async def _subscribe(services: Services, task_id: str) -> list[dict[str, Any]]:
    """taskUpdated through the schema, as a websocket client runs it: the resolver counts."""
    context = Context(services, auth=Authenticator(auth_settings()), principal=TESTER)
    stream = await build_schema().subscribe(
        "subscription($id: ID!) { taskUpdated(id: $id) { status } }",
        variable_values={"id": task_id},
        context_value=context,
    )
    assert isinstance(stream, AsyncGenerator)
    seen: list[dict[str, Any]] = []
    async for result in stream:
        assert result.errors is None, result.errors
        assert result.data is not None
        seen.append(result.data["taskUpdated"])
    return seen


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Overrides the unit conftest's: poison fails on every attempt, retried without waiting.
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'taskwire.db'}",
        task_delay_seconds=0.01,
        max_attempts=2,
        retry_base_seconds=0.0,
        retry_max_seconds=0.0,
        poison_marker="poison",
        rate_limit_per_minute=60,
        rate_limit_burst=1,
    )


async def test_failures_retries_and_dead_letters_are_counted(
    services: Services, processor: None
) -> None:
    metrics = services.metrics
    created = await service.create_task(services, TESTER, "poison")
    seen = [t async for t in service.watch_task(services, TESTER, created.id)]
    assert seen[-1].status is TaskStatus.FAILED
    await _until(lambda: value(metrics, "taskwire_tasks_dead_lettered_total", reason="failed") == 1)
    assert value(metrics, "taskwire_tasks_finished_total", status="FAILED") == 1
    assert value(metrics, "taskwire_task_retries_total") == 1
    assert value(metrics, "taskwire_task_processing_seconds_count", outcome="retried") == 1
    assert value(metrics, "taskwire_task_processing_seconds_count", outcome="failed") == 1
    assert value(metrics, "taskwire_task_attempts_sum") == 2
    await _until(lambda: value(metrics, "taskwire_tasks_in_flight") == 0)
    assert value(metrics, "taskwire_processor_consuming") == 1


async def test_rate_limited_and_cancelled_are_counted(services: Services) -> None:
    metrics = services.metrics
    first = await service.create_task(services, TESTER, "one")
    with pytest.raises(Exception, match="Too many"):
        await service.create_task(services, TESTER, "two")
    assert value(metrics, "taskwire_rate_limited_requests_total") == 1
    await service.cancel_task(services, TESTER, first.id)
    assert value(metrics, "taskwire_tasks_finished_total", status="CANCELLED") == 1
    assert value(metrics, "taskwire_task_end_to_end_seconds_count", status="CANCELLED") == 1


async def _until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# -- GraphQL operations ----------------------------------------------------------------------


async def test_graphql_operations_are_counted_by_name_and_outcome(
    services: Services, settings: Settings
) -> None:
    schema = build_schema(settings)
    context = Context(services, auth=Authenticator(auth_settings()), principal=TESTER)
    metrics = services.metrics

    async def run(query: str, **variables: Any) -> None:
        await schema.execute(query, variable_values=variables, context_value=context)

    await run(CREATE.format(name="createTask"), input="a")
    await run(CREATE.format(name="createTask"), input="b")  # over the burst of 1
    await run(CREATE.format(name=""), input="c")
    await run("query Broken { task(id: ")
    await run("query Unknown { nope }")

    def operations(name: str, outcome: str) -> float:
        return value(metrics, "taskwire_graphql_operations_total", operation=name, outcome=outcome)

    assert operations("createTask", "ok") == 1
    assert operations("createTask", "RATE_LIMITED") == 1
    assert operations(ANONYMOUS, "RATE_LIMITED") == 1
    assert operations(ANONYMOUS, "GRAPHQL_PARSE_FAILED") == 1  # no document: no name
    assert operations("Unknown", "GRAPHQL_VALIDATION_FAILED") == 1
    latency = "taskwire_graphql_operation_duration_seconds_count"
    assert value(metrics, latency, operation="createTask") == 2


async def test_a_subscription_counts_as_active_while_it_runs(
    services: Services, settings: Settings
) -> None:
    schema = build_schema(settings)
    context = Context(services, auth=Authenticator(auth_settings()), principal=TESTER)
    created = await service.create_task(services, TESTER, "watched")
    stream = await schema.subscribe(
        "subscription Watch($id: ID!) { taskUpdated(id: $id) { status } }",
        variable_values={"id": str(created.id)},
        context_value=context,
    )
    assert isinstance(stream, AsyncGenerator)
    first = await anext(stream)
    assert first.errors is None
    assert value(services.metrics, "taskwire_subscriptions_active") == 1
    await stream.aclose()
    assert value(services.metrics, "taskwire_subscriptions_active") == 0
    counted = value(
        services.metrics, "taskwire_graphql_operations_total", operation="Watch", outcome="ok"
    )
    assert counted == 1


# -- the queue collector ---------------------------------------------------------------------


class FakeQueue:
    def __init__(self, delay: float = 0.0) -> None:
        self.reads = 0
        self.delay = delay
        self.fail = False

    async def depth(self) -> tuple[int, int]:
        self.reads += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("broker gone")
        return 7, 2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def collected(collector: QueueCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


async def test_the_queue_is_read_at_most_once_per_cache_period() -> None:
    queue, clock = FakeQueue(delay=0.01), Clock()
    collector = QueueCollector(cache_seconds=2.0, timeout_seconds=1.0)
    collector._clock = clock
    collector.watch(queue)
    # A scrape storm: one read for all of them.
    await asyncio.gather(*(collector.refresh() for _ in range(20)))
    assert queue.reads == 1
    assert collected(collector) == {
        ("taskwire_queue_stats_up", ()): 1.0,
        ("taskwire_queue_messages", (("queue", "ready"),)): 7.0,
        ("taskwire_queue_messages", (("queue", "dead_letter"),)): 2.0,
    }
    clock.now += 1.9
    await collector.refresh()
    assert queue.reads == 1
    clock.now += 0.2
    await collector.refresh()
    assert queue.reads == 2


async def test_a_broker_that_fails_or_hangs_reads_as_down() -> None:
    queue, clock = FakeQueue(), Clock()
    collector = QueueCollector(cache_seconds=2.0, timeout_seconds=0.05)
    collector._clock = clock
    collector.watch(queue)
    queue.fail = True
    await collector.refresh()
    assert collected(collector) == {("taskwire_queue_stats_up", ()): 0.0}
    queue.fail, queue.delay = False, 10.0
    clock.now += 5
    async with asyncio.timeout(2):
        await collector.refresh()
    assert collected(collector) == {("taskwire_queue_stats_up", ()): 0.0}


async def test_the_memory_queue_reports_through_the_services(services: Services) -> None:
    await service.create_task(services, TESTER, "queued")
    assert await services.publishes.settle(timeout=5) == set()  # it follows the answer
    families = {
        f.name: f
        for f in text_string_to_metric_families((await services.metrics.exposition()).decode())
    }
    ready = [s for s in families["taskwire_queue_messages"].samples if s.labels["queue"] == "ready"]
    assert ready[0].value == 1
    assert families["taskwire_queue_stats_up"].samples[0].value == 1


@asynccontextmanager
async def _served(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, as uvicorn runs it, and a client whose requests carry the
    lifespan's state."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    lifespan = asyncio.create_task(app(scope, received.get, sent.put))
    await received.put({"type": "lifespan.startup"})
    assert (await sent.get())["type"] == "lifespan.startup.complete"

    async def with_state(scope: Any, receive: Any, send: Any) -> None:
        scope["state"] = dict(state)
        await app(scope, receive, send)

    try:
        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await received.put({"type": "lifespan.shutdown"})
        assert (await sent.get())["type"] == "lifespan.shutdown.complete"
        await lifespan


@pytest.mark.parametrize(("enabled", "status"), [(True, 200), (False, 404)])
async def test_metrics_enabled_false_takes_the_api_endpoint_away(
    settings: Settings, enabled: bool, status: int
) -> None:
    await migrate(settings.database_url)
    app = create_app(dataclasses.replace(settings, metrics_enabled=enabled, auth_mode="none"))
    async with _served(app) as client:
        assert (await client.get("/metrics")).status_code == status
        assert (await client.get("/healthz")).status_code == 200


# -- the processor's endpoint ----------------------------------------------------------------


async def test_the_processor_endpoint_serves_metrics_and_nothing_else() -> None:
    metrics = Metrics()
    metrics.tasks_created.inc(3)
    async with serving(metrics, "127.0.0.1", _free_port()) as port:
        assert port is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            scraped = await client.get("/metrics")
            missing = await client.get("/")
            posted = await client.post("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=")
    assert "taskwire_tasks_created_total 3.0" in scraped.text
    assert missing.status_code == 404
    assert posted.status_code == 405


async def test_the_processor_endpoint_is_off_at_port_0_and_survives_a_taken_port() -> None:
    async with serving(Metrics(), "127.0.0.1", 0) as port:
        assert port is None
    with _listening() as taken:
        async with serving(Metrics(), "127.0.0.1", taken) as port:
            assert port is None


async def test_the_processor_endpoint_stops_on_exit() -> None:
    port = _free_port()
    async with serving(Metrics(), "127.0.0.1", port) as bound:
        assert bound == port
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        yield port


# -- settings --------------------------------------------------------------------------------


def test_metrics_settings() -> None:
    defaults = Settings()
    assert (defaults.metrics_enabled, defaults.metrics_host, defaults.metrics_port) == (
        True,
        "127.0.0.1",
        9100,
    )
    env = {"METRICS_ENABLED": "false", "METRICS_HOST": "0.0.0.0", "METRICS_PORT": "0"}
    parsed = Settings.from_env(env)
    assert (parsed.metrics_enabled, parsed.metrics_host, parsed.metrics_port) == (
        False,
        "0.0.0.0",
        0,
    )
    with pytest.raises(Exception, match="METRICS_PORT"):
        Settings.from_env({"METRICS_PORT": "70000"})


# -- the deployment's files ------------------------------------------------------------------

# A series name in PromQL: taskwire_ followed by name characters.
_SERIES = re.compile(r"\btaskwire_[a-z0-9_]+")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grafana/dashboards/taskwire.json").read_text())
    return loaded


def expressions(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, child in node.items():
            if key == "expr" and isinstance(child, str):
                yield child
            else:
                yield from expressions(child)
    elif isinstance(node, list):
        for child in node:
            yield from expressions(child)


def test_every_series_the_dashboard_uses_exists() -> None:
    known = Metrics().series_names()
    used = {name for expr in expressions(dashboard()) for name in _SERIES.findall(expr)}
    assert used, "the dashboard queries no taskwire series"
    assert used - known == set()


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    board = dashboard()
    titles = " ".join(panel["title"].lower() for panel in board["panels"])
    for topic in ("throughput", "latency", "queue", "fail", "subscriptions"):
        assert topic in titles
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus"
            assert list(expressions(panel)), panel["title"]


def test_prometheus_scrapes_the_api_and_the_processors() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["taskwire-api"]["metrics_path"] == "/metrics"
    assert jobs["taskwire-api"]["static_configs"][0]["targets"] == ["api:8000"]
    # Scaled processors are found by the service name's DNS records.
    dns = jobs["taskwire-processor"]["dns_sd_configs"][0]
    assert dns["names"] == ["processor"]
    assert dns["port"] == 9100
    for rule_file in config.get("rule_files", []):
        rules = yaml.safe_load((DEPLOY / "prometheus" / Path(rule_file).name).read_text())
        known = Metrics().series_names()
        for group in rules["groups"]:
            for rule in group["rules"]:
                assert set(_SERIES.findall(rule["expr"])) - known == set(), rule["alert"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    provisioning = DEPLOY / "grafana/provisioning"
    sources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert (source["uid"], source["type"], source["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    providers = yaml.safe_load((provisioning / "dashboards/taskwire.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_wires_prometheus_grafana_and_processor_metrics() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["processor"]["environment"]["METRICS_HOST"] == "0.0.0.0"
    volumes = " ".join(services["prometheus"]["volumes"]) + " ".join(services["grafana"]["volumes"])
    for path in (
        "./deploy/prometheus/prometheus.yml",
        "./deploy/grafana/provisioning",
        "./deploy/grafana/dashboards",
    ):
        assert path in volumes
        assert (ROOT / path).exists()


class _UnlistenedServer:
    """What uvloop hands the loser of two simultaneous binds: a server whose socket is None."""

    sockets = (None,)
    closed = False

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


async def test_a_port_that_did_not_listen_serves_nothing_and_the_work_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = _UnlistenedServer()

    async def start_server(*args: object, **kwargs: object) -> _UnlistenedServer:
        return server

    monkeypatch.setattr(asyncio, "start_server", start_server)
    async with serving(Metrics(), "127.0.0.1", 9100) as bound:
        assert bound is None
    assert server.closed
    assert "did not listen" in caplog.text
