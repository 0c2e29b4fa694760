"""Load module: GraphQL over HTTP POST with aiohttp, one keep-alive connection per client.

Params (JSON on stdin): url, tokens (client i sends tokens[i % len]), query, variables (a list;
client i's k-th request sends variables[(i + k * concurrency) % len], or none), concurrency,
then either seconds (+ warmup) for a timed closed loop or count for a fixed number of
requests; collect, a dotted path into `data` (e.g. "createTask.id"), gathers those values.
A request fails on a status other than 200 or on a body holding one of `reject` (default:
'"errors"'; a read adds '"task":null').
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from bench.load import LoopResult, closed_loop, fixed_count, measurement, run_load, serve_load
from bench.model import Measurement

if TYPE_CHECKING:
    from bench.stack import Deployment

# The "50 concurrent clients", for every HTTP scenario and its baselines.
CONCURRENCY = 50
REQUEST_TIMEOUT_SECONDS = 30.0
# What a client asks for: the fields it acts on (watchToken would add a signature per call).
CREATE = (
    "mutation Create($input: CreateTaskInput!) { createTask(input: $input) { id status version } }"
)
READ = "query Read($id: ID!) { task(id: $id) { id status result version } }"
FLOOR = "{ __typename }"
# Slack on top of a load's own time before it counts as hung (start-up, connection set-up).
LOAD_TIMEOUT_SLACK_SECONDS = 60.0


class GraphQLFailure(Exception):
    """A GraphQL request that did not answer 200 with data and no errors."""


async def load(params: dict[str, Any]) -> dict[str, Any]:
    concurrency = int(params["concurrency"])
    url = str(params["url"])
    headers = [
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for token in params["tokens"]
    ]
    # Encoded once, up front: the load process should spend its CPU on sending, not on json.
    bodies = [
        json.dumps({"query": params["query"], "variables": variables}).encode()
        for variables in params.get("variables") or [None]
    ]
    # A body holding any of these failed (a GraphQL error, or a read that found nothing).
    rejects = [text.encode() for text in params.get("reject") or ['"errors"']]
    collect = [part for part in str(params.get("collect") or "").split(".") if part]
    collected: list[Any] = []
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def request(client: int, done: int) -> None:
            body = bodies[(client + done * concurrency) % len(bodies)]
            async with session.post(url, data=body, headers=headers[client % len(headers)]) as r:
                answer = await r.read()
            if r.status != 200 or any(reject in answer for reject in rejects):
                raise GraphQLFailure(f"HTTP {r.status}: {answer[:300]!r}")
            if collect:
                collected.append(dig(json.loads(answer)["data"], collect))

        result: LoopResult
        if params.get("count") is not None:
            result = await fixed_count(request, concurrency=concurrency, count=int(params["count"]))
        else:
            result = await closed_loop(
                request,
                concurrency=concurrency,
                seconds=float(params["seconds"]),
                warmup=float(params.get("warmup", 1.0)),
            )
    return {**result.as_json(), "collected": collected}


def dig(data: Any, path: list[str]) -> Any:
    for part in path:
        data = data[part]
    return data


# The parent side: run this module against a deployment.


def warmup_for(seconds: float) -> float:
    """Seconds of unmeasured load before the window: pools fill, caches warm."""
    return 2.0 if seconds >= 5 else 1.0


async def measure_graphql(
    deployment: Deployment,
    name: str,
    *,
    query: str,
    seconds: float,
    variables: list[dict[str, Any]] | None = None,
    subs: list[str] | None = None,
    reject: list[str] | None = None,
    concurrency: int = CONCURRENCY,
) -> Measurement:
    """`concurrency` clients POST `query` to the deployment's first API for `seconds`; the
    measurement carries its peak RSS and, as extras, the CPU share (% of one core) the API
    and the load generator used meanwhile (who of the two was saturated)."""
    api = deployment.api_pids[0]
    subs = subs or ["bench"]
    warmup = warmup_for(seconds)
    params = {
        "url": f"{deployment.api_urls[0]}/graphql",
        "tokens": [deployment.token(sub) for sub in subs],
        "query": query,
        "variables": variables,
        "reject": reject,
        "concurrency": concurrency,
        "seconds": seconds,
        "warmup": warmup,
    }
    cpu_before = deployment.cpu_seconds(api)
    began = time.perf_counter()
    result = await run_load(
        "bench.http_load", params, timeout=seconds + warmup + LOAD_TIMEOUT_SLACK_SECONDS
    )
    wall = time.perf_counter() - began
    return measurement(
        name,
        result,
        peak_rss_kib=deployment.peak_rss_kib(api),
        extra={
            "api_cpu_pct": (deployment.cpu_seconds(api) - cpu_before) / wall * 100,
            "load_cpu_pct": float(result["load_cpu_seconds"]) / wall * 100,
        },
    )


async def create_tasks(
    deployment: Deployment, count: int, *, sub: str = "bench", input_data: str = "bench"
) -> list[str]:
    """Create `count` tasks through createTask (50 clients) and return their ids."""
    params = {
        "url": f"{deployment.api_urls[0]}/graphql",
        "tokens": [deployment.token(sub)],
        "query": CREATE,
        "variables": [{"input": {"inputData": input_data}}],
        "concurrency": min(CONCURRENCY, count),
        "count": count,
        "collect": "createTask.id",
    }
    timeout = LOAD_TIMEOUT_SLACK_SECONDS + count / 20
    result = await run_load("bench.http_load", params, timeout=timeout)
    if result["errors"]:
        raise RuntimeError(f"creating tasks: {result['errors']} failed: {result['first_error']}")
    return [str(task_id) for task_id in result["collected"]]


def main() -> None:
    serve_load(load)


if __name__ == "__main__":
    main()
