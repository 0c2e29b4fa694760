"""Scrape the API's /metrics and a processor's metrics port before and after a batch of tasks
(some of them failing), and check that each counter moved by exactly what the batch did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.typing import Subprotocol

from tests.e2e.conftest import Deployment, running_deployment
from tests.support.auth import bearer
from tests.support.processes import free_port

pytestmark = pytest.mark.timeout(180)

POISON = "poison"
COMPLETING = 4
FAILING = 2
BATCH = COMPLETING + FAILING
CREATE = "mutation createTask($input: String!) { createTask(input: {inputData: $input}) { id } }"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Scraped:
    api: Samples
    processor: Samples

    def api_value(self, name: str, **labels: str) -> float:
        return self.api.get((name, frozenset(labels.items())), 0.0)

    def processor_value(self, name: str, **labels: str) -> float:
        return self.processor.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Metered:
    deployment: Deployment
    processor_url: str

    async def scrape(self) -> Scraped:
        async with httpx.AsyncClient(timeout=10) as client:
            api = await client.get(f"{self.deployment.base_url}/metrics")
            processor = await client.get(self.processor_url)
        for response in (api, processor):
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/plain")
        return Scraped(samples(api.text), samples(processor.text))


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
async def metered(
    postgres_admin_url: str,
    redis_url: str,
    rabbitmq_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Metered]:
    # One processor: processors share the environment, so a second one could not have the port.
    port = free_port()
    settings = {
        "METRICS_PORT": str(port),
        "POISON_MARKER": POISON,
        "MAX_ATTEMPTS": "2",
        "RETRY_BASE_SECONDS": "0",
        "RETRY_MAX_SECONDS": "0",
        "TASK_DELAY_SECONDS": "0.1",
        "RATE_LIMIT_PER_MINUTE": "0",
    }
    workdir: Path = tmp_path_factory.mktemp("metrics")
    async with running_deployment(
        postgres_admin_url, redis_url, rabbitmq_url, workdir, extra_env=settings, processors=1
    ) as deployment:
        yield Metered(deployment, f"http://127.0.0.1:{port}/metrics")


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


async def test_counters_move_by_exactly_what_a_batch_did(metered: Metered) -> None:
    before = await metered.scrape()
    async with httpx.AsyncClient(timeout=10, headers=bearer()) as client:
        inputs = [f"fine {n}" for n in range(COMPLETING)] + [
            f"{POISON} {n}" for n in range(FAILING)
        ]
        answers = await asyncio.gather(
            *(
                client.post(
                    metered.deployment.http_url,
                    json={
                        "query": CREATE,
                        "operationName": "createTask",
                        "variables": {"input": text},
                    },
                )
                for text in inputs
            )
        )
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert "errors" not in answer.json(), answer.text

    after = before

    def moved(name: str, **labels: str) -> float:
        return after.processor_value(name, **labels) - before.processor_value(name, **labels)

    async def settled() -> bool:
        nonlocal after
        after = await metered.scrape()
        return (
            moved("taskwire_tasks_finished_total", status="COMPLETED") >= COMPLETING
            and moved("taskwire_tasks_dead_lettered_total", reason="failed") >= FAILING
            and after.processor_value("taskwire_tasks_in_flight") == 0
        )

    await poll(settled)

    def api_moved(name: str, **labels: str) -> float:
        return after.api_value(name, **labels) - before.api_value(name, **labels)

    # The API: what it created and how it answered.
    assert api_moved("taskwire_tasks_created_total") == BATCH
    assert api_moved("taskwire_graphql_operations_total", operation="createTask", outcome="ok") == (
        BATCH
    )
    latency = "taskwire_graphql_operation_duration_seconds_count"
    assert api_moved(latency, operation="createTask") == BATCH
    assert api_moved("taskwire_rate_limited_requests_total") == 0
    # The processor: what it finished, how, and in how many attempts.
    assert moved("taskwire_tasks_finished_total", status="COMPLETED") == COMPLETING
    assert moved("taskwire_tasks_finished_total", status="FAILED") == FAILING
    assert moved("taskwire_tasks_dead_lettered_total", reason="failed") == FAILING
    assert moved("taskwire_tasks_dead_lettered_total", reason="malformed") == 0
    assert moved("taskwire_task_retries_total") == FAILING  # MAX_ATTEMPTS=2: one retry each
    processing = "taskwire_task_processing_seconds_count"
    assert moved(processing, outcome="completed") == COMPLETING
    assert moved(processing, outcome="retried") == FAILING
    assert moved(processing, outcome="failed") == FAILING
    end_to_end = "taskwire_task_end_to_end_seconds_count"
    assert moved(end_to_end, status="COMPLETED") == COMPLETING
    assert moved(end_to_end, status="FAILED") == FAILING
    assert moved("taskwire_task_attempts_count") == BATCH
    assert moved("taskwire_task_attempts_sum") == COMPLETING + 2 * FAILING
    # claim + complete per completing task; claim, retry, claim, fail per failing one.
    assert moved("taskwire_events_published_total") == 2 * COMPLETING + 4 * FAILING
    # Both processes read the same queue from RabbitMQ; the processor consumes from it.
    for scraped in (after.api, after.processor):
        assert scraped[("taskwire_queue_stats_up", frozenset())] == 1
    assert after.processor_value("taskwire_processor_consuming") == 1


async def test_the_processor_port_serves_only_metrics(metered: Metered) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        other = await client.get(metered.processor_url.replace("/metrics", "/"))
    assert other.status_code == 404


async def test_open_websockets_are_counted_while_open(metered: Metered) -> None:
    def websockets_open(scraped: Scraped) -> float:
        return scraped.api_value("taskwire_websockets_open")

    baseline = websockets_open(await metered.scrape())
    async with websockets.connect(
        metered.deployment.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]
    ):

        async def counted() -> bool:
            return websockets_open(await metered.scrape()) == baseline + 1

        await poll(counted, timeout=10)

    async def released() -> bool:
        return websockets_open(await metered.scrape()) == baseline

    await poll(released, timeout=10)
