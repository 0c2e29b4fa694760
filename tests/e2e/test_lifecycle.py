"""A client creates tasks over HTTP and follows them over websockets, on each subprotocol."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from gql.transport.exceptions import TransportQueryError

from tests.e2e.conftest import Deployment
from tests.support.auth import bearer
from tests.support.client import SUBPROTOCOLS, create_task, follow, get_task

pytestmark = pytest.mark.timeout(120)


def assert_lifecycle(created: dict[str, Any], seen: list[dict[str, Any]], text: str) -> None:
    assert created["status"] == "PENDING"
    assert created["version"] == 1
    history = [created, *seen]
    versions = [t["version"] for t in history]
    # The first update may repeat the created version (the snapshot); after it, strictly newer.
    assert versions == sorted(versions)
    assert len(set(versions[1:])) == len(versions[1:]), f"duplicate versions: {versions}"
    assert [t["status"] for t in seen if t["version"] > 1][:2] == ["PROCESSING", "COMPLETED"]
    final = seen[-1]
    assert final["status"] == "COMPLETED"
    assert final["version"] == 3
    assert final["result"] == text[::-1]
    assert final["attempts"] == 1
    assert final["startedAt"] is not None
    assert final["finishedAt"] is not None


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_create_and_follow_to_completion(deployment: Deployment, subprotocol: str) -> None:
    text = f"stressed {subprotocol} ✓"
    created = await create_task(deployment.http_url, text)
    seen = await follow(deployment.ws_url, created["id"], subprotocol)
    assert_lifecycle(created, seen, text)
    assert await get_task(deployment.http_url, created["id"]) == seen[-1]


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_a_late_subscriber_gets_the_final_state(
    deployment: Deployment, subprotocol: str
) -> None:
    created = await create_task(deployment.http_url, "late")
    await follow(deployment.ws_url, created["id"], subprotocol)
    late = await follow(deployment.ws_url, created["id"], subprotocol, timeout=5)
    assert [(t["status"], t["version"], t["result"]) for t in late] == [("COMPLETED", 3, "etal")]


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_an_unknown_task_subscription_is_not_found(
    deployment: Deployment, subprotocol: str
) -> None:
    with pytest.raises(TransportQueryError) as caught:
        await follow(deployment.ws_url, str(uuid.uuid4()), subprotocol, timeout=5)
    assert caught.value.errors is not None
    assert caught.value.errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_many_tasks_over_two_processors_each_done_once(deployment: Deployment) -> None:
    texts = [f"task number {n}" for n in range(40)]
    created = await asyncio.gather(*(create_task(deployment.http_url, t) for t in texts))
    followed = await asyncio.gather(
        *(follow(deployment.ws_url, c["id"], SUBPROTOCOLS[n % 2]) for n, c in enumerate(created))
    )
    for text, seen in zip(texts, followed, strict=True):
        final = seen[-1]
        assert (final["status"], final["result"], final["attempts"], final["version"]) == (
            "COMPLETED",
            text[::-1],
            1,
            3,
        )


async def test_http_edges_answer_cleanly(deployment: Deployment) -> None:
    async with httpx.AsyncClient(
        base_url=deployment.base_url, timeout=5, headers=bearer()
    ) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert (
            await client.post(
                "/graphql", content=b"\xff\xfe{", headers={"content-type": "application/json"}
            )
        ).status_code == 400
        assert (
            await client.post(
                "/graphql", content=b"{nope", headers={"content-type": "application/json"}
            )
        ).status_code == 400
        page = await client.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert "unpkg.com" not in page.text
        assert "graphiql" in page.text.lower()
        oversize = await client.post(
            "/graphql",
            json={
                "query": "mutation($i: String!) { createTask(input: {inputData: $i}) { id } }",
                "variables": {"i": "x" * (64 * 1024 + 1)},
            },
        )
        assert oversize.status_code == 200
        assert oversize.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
