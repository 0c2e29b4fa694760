"""One trace follows a task across processes: the API's createTask span, the context in the
RabbitMQ message headers, the processor's spans, and every log line about the task in both
processes carrying the same trace id and the request id of the createTask that queued it;
and no token sent to the API, over HTTP or a websocket, valid or not, reaching either log.

The deployment logs JSON lines (LOG_FORMAT=json) and exports spans with the console exporter,
one JSON object per line on stdout, which the test harness writes into the same log file."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from taskwire.settings import Settings
from taskwire.tokens import mint_token
from tests.e2e.conftest import Deployment
from tests.support.auth import TEST_SUBJECT, bearer, token_for
from tests.support.client import GRAPHQL_TRANSPORT_WS, SUBPROTOCOLS, follow

pytestmark = pytest.mark.timeout(120)

SETTINGS = {"LOG_FORMAT": "json", "OTEL_TRACES_EXPORTER": "console"}
PROCESSORS = 1

CREATE = "mutation($input: String!) { createTask(input: {inputData: $input}) { id status } }"


def lines_of(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's output, each of which must be one JSON object."""
    parsed = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}:{number} is not a JSON line: {line[:300]}")
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


def log_records(path: Path) -> list[dict[str, Any]]:
    return [line for line in lines_of(path) if "level" in line and "message" in line]


def spans(path: Path) -> list[dict[str, Any]]:
    return [line for line in lines_of(path) if "context" in line and "name" in line]


def hex_id(value: str) -> str:
    """A span's `0x...` id as log lines write it (no prefix)."""
    return value.removeprefix("0x")


async def wait_for_spans(
    path: Path, task_id: str, names: set[str], timeout: float = 20.0
) -> list[dict[str, Any]]:
    """The spans naming the task, once all of `names` are among them (a span is written
    when it ends: the processor's outermost one only after the message was acked)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in spans(path) if s["attributes"].get("taskwire.task_id") == task_id]
        if names <= {s["name"] for s in found}:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"spans {names} of task {task_id} not in {path.name}: {found}")
        await asyncio.sleep(0.1)


async def test_a_task_is_one_trace_across_the_api_and_the_processor(api: Deployment) -> None:
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            api.http_url,
            json={"query": CREATE, "variables": {"input": "follow me"}},
            headers={**bearer(), "X-Request-ID": request_id},
        )
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["createTask"]["id"]
    seen = await follow(api.ws_url, task_id, SUBPROTOCOLS[0])
    assert seen[-1]["status"] == "COMPLETED"

    api_log = api.api.log_path
    [processor] = api.processors
    worker_log = processor.log_path
    worker_spans = await wait_for_spans(
        worker_log,
        task_id,
        {"taskwire.process", "taskwire.claim", "taskwire.work", "taskwire.complete"},
    )
    api_spans = await wait_for_spans(api_log, task_id, {"taskwire.createTask"})

    # --- the spans form one trace, the API's createTask span its root.
    [create] = [s for s in api_spans if s["name"] == "taskwire.createTask"]
    trace_id = create["context"]["trace_id"]
    assert create["parent_id"] is None
    assert create["resource"]["attributes"]["service.name"] == "taskwire-api"
    everything = {
        s["context"]["span_id"]: s
        for s in [*spans(api_log), *spans(worker_log)]
        if s["context"]["trace_id"] == trace_id
    }

    def ancestors(span: dict[str, Any]) -> list[str]:
        names = []
        while span["parent_id"] is not None:
            span = everything[span["parent_id"]]
            names.append(span["name"])
        return names

    [process] = [s for s in worker_spans if s["name"] == "taskwire.process"]
    assert process["context"]["trace_id"] == trace_id, "the processor continued the API's trace"
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["resource"]["attributes"]["service.name"] == "taskwire-processor"
    assert ancestors(process) == ["taskwire.publish", "taskwire.createTask"]
    for name in ("taskwire.claim", "taskwire.work", "taskwire.complete"):
        [step] = [s for s in worker_spans if s["name"] == name]
        assert ancestors(step) == ["taskwire.process", "taskwire.publish", "taskwire.createTask"]
    # Back to the event: each transition's event publish is a span under the step that made it.
    events = [s for s in worker_spans if s["name"] == "taskwire.event"]
    assert sorted(everything[e["parent_id"]]["name"] for e in events) == [
        "taskwire.claim",
        "taskwire.complete",
    ]

    # --- every log line about the task, in either process, carries that trace id.
    expected = hex_id(trace_id)
    api_lines = [r for r in log_records(api_log) if r.get("task_id") == task_id]
    worker_lines = [r for r in log_records(worker_log) if r.get("task_id") == task_id]
    assert [r["event"] for r in api_lines if "event" in r] == ["created"]
    assert [r["event"] for r in worker_lines if "event" in r] == ["claimed", "completed"]
    for line in [*api_lines, *worker_lines]:
        assert line.get("trace_id") == expected, line
    [created] = [r for r in api_lines if r.get("event") == "created"]
    assert created["request_id"] == request_id
    # The request id travelled in the message headers: the processor's lines name it too.
    for line in worker_lines:
        assert line.get("request_id") == created["request_id"], line
    assert (created["from"], created["to"], created["version"]) == (None, "PENDING", 1)
    [completed] = [r for r in worker_lines if r.get("event") == "completed"]
    assert (completed["from"], completed["to"], completed["attempt"]) == (
        "PROCESSING",
        "COMPLETED",
        1,
    )
    # The request's lines outside the task (uvicorn's access line) name the request only.
    assert any(
        r.get("request_id") == request_id and "task_id" not in r for r in log_records(api_log)
    )


async def test_the_tokens_sent_stay_out_of_the_logs(api: Deployment) -> None:
    token = token_for()
    # Signed with another secret: refused, and a refusal is where a token is tempting to log.
    forged = mint_token(
        Settings(jwt_secret="not-the-deployment-secret-0123456789abcdef"),
        TEST_SUBJECT,
        ttl_seconds=600,
    )
    query = {"query": CREATE, "variables": {"input": "keep it secret"}}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            api.http_url, json=query, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        refused = await http.post(
            api.http_url, json=query, headers={"Authorization": f"Bearer {forged}"}
        )
        assert refused.status_code == 401, refused.text
    task_id = response.json()["data"]["createTask"]["id"]
    # The valid token again in a websocket's connection_init, until the task is done...
    seen = await follow(api.ws_url, task_id, GRAPHQL_TRANSPORT_WS, token=token)
    assert seen[-1]["status"] == "COMPLETED"
    # ...and the forged one, which closes the connection.
    async with connect(
        api.ws_url, subprotocols=[Subprotocol(GRAPHQL_TRANSPORT_WS)], open_timeout=5
    ) as ws:
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {forged}"}}
        await ws.send(json.dumps(init))
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                await ws.recv()
    assert ws.close_code == 4403

    [processor] = api.processors
    # The processor's lines about the task are written by the time its span ends (after the
    # ack); the API's before it answered or closed.
    await wait_for_spans(processor.log_path, task_id, {"taskwire.process"})
    for path in (api.api.log_path, processor.log_path):
        text = path.read_text(errors="replace")
        for sent in (token, forged):
            assert sent not in text, f"a token sent to the API is in {path.name}"
            # The signature alone is the secret part: not even it (a redaction that missed).
            assert sent.rsplit(".", 1)[1] not in text, f"a token's signature is in {path.name}"
    # The log holds the requests at all: the check above looked where they would be.
    assert task_id in api.api.log_path.read_text(errors="replace")
