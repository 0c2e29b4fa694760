"""The websocket load process (`python -m bench.ws_load`, params JSON on stdin, one JSON line on
stdout): graphql-transport-ws clients holding many `taskUpdated` subscriptions, multiplexed over a
few connections or one per client, plus the HTTP side the realtime scenarios need.

Modes (params["mode"]):
- "create": create `count` tasks over HTTP; returns their ids.
- "subscribe": subscribe to given tasks, write `ready_file` once every subscription has its first
  message, then wait for every final state (notification latency) or, with `hold`, for the
  parent's RELEASE_SIGNAL (idle subscriptions held while the parent reads the API's RSS).
- "single": one subscription at a time: create, subscribe, wait for COMPLETED; repeated.
- "wait": `clients` clients each create a task and wait for it by subscription ("push"), by
  polling task(id) ("poll") or not at all ("none").
- "relay": clients create tasks through one API process and wait for them on another's websocket.

Timestamps and the client itself: bench.ws_client. The parent's side: bench.ws_parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.ws_client import (
    Api,
    Board,
    Connection,
    RedisProbe,
    Watch,
    http_session,
    open_all,
    summarize,
)
from bench.ws_parent import RELEASE_SIGNAL, raise_fd_limit

T = TypeVar("T")


# --- pure parts (unit-tested) ---------------------------------------------------------------


def spread(task_ids: Sequence[str], subs_per_task: int) -> list[str]:
    """One entry per subscription, round robin over the tasks, so that consecutive subscriptions
    (which share a connection) watch different tasks."""
    return [task_id for _ in range(subs_per_task) for task_id in task_ids]


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive runs of at most `size` items (the subscriptions of one connection)."""
    if size < 1:
        raise ValueError("size must be at least 1")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


# --- modes ---------------------------------------------------------------------------------


async def create_tasks(params: dict[str, Any]) -> dict[str, Any]:
    count = int(params["count"])
    concurrency = int(params.get("concurrency", 32))
    ids: list[str] = []
    errors: list[str] = []
    started = time.perf_counter()
    async with http_session(concurrency) as session:
        api = Api(session, params["http_url"], params["token"])
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                try:
                    ids.append(await api.create(params.get("input", "bench")))
                except Exception as exc:
                    errors.append(repr(exc))

        await asyncio.gather(*(one() for _ in range(count)))
    return {
        "task_ids": ids,
        "seconds": time.perf_counter() - started,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


async def hold_subscriptions(params: dict[str, Any]) -> dict[str, Any]:
    """Subscribe (within `timeout` seconds), write the ready file, then wait at most
    `wait_seconds` for every final state or, with `hold`, for RELEASE_SIGNAL."""
    deadline = time.perf_counter() + float(params["timeout"])
    watches = [Watch(task_id) for task_id in spread(params["task_ids"], params["subs_per_task"])]
    layout = chunks(watches, int(params["per_connection"]))
    board = Board(len(watches))
    started = time.perf_counter()
    connections, failed = await open_all(
        params["ws_url"],
        params["token"],
        len(layout),
        concurrency=int(params.get("connect_concurrency", 64)),
    )
    for watch in itertools.chain.from_iterable(layout[len(connections) :]):
        watch.error, watch.ended = (failed[0] if failed else "not connected"), True
        board.note(watch, False, False)
    plan = list(zip(connections, layout, strict=False))
    await _subscribe_all(plan, board, int(params.get("subscribe_window", 100)), deadline)
    await _until(board.all_started, deadline)
    setup_seconds = time.perf_counter() - started
    probe = (
        RedisProbe(params["probe_redis_url"], params["probe_prefix"])
        if params.get("probe_redis_url")
        else None
    )
    if probe is not None:
        await probe.start()
    released = asyncio.Event()
    if params.get("hold"):
        # Before the ready file: the parent may signal as soon as it sees it.
        asyncio.get_running_loop().add_signal_handler(RELEASE_SIGNAL, released.set)
    ready = {"subscribed": board.started, "setup_seconds": setup_seconds, "pid": os.getpid()}
    write_atomically(Path(params["ready_file"]), json.dumps(ready))
    deadline = time.perf_counter() + float(params["wait_seconds"])
    held = 0
    if params.get("hold"):
        await _until(released, deadline)
        held = sum(1 for watch in watches if not watch.ended)
    else:
        await _until(board.all_finished, deadline)
    await asyncio.gather(*(connection.close() for connection in connections))
    result = summarize(watches)
    if probe is not None:
        result["redis_latencies_ms"] = await probe.stop()
    result.update(
        connections=len(connections),
        connect_failures=len(failed),
        setup_seconds=setup_seconds,
        held=held,
        fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    )
    return result


async def _subscribe_all(
    plan: Sequence[tuple[Connection, Sequence[Watch]]], board: Board, window: int, deadline: float
) -> None:
    """Send every subscribe with at most `window` still waiting for their first message: a
    burst of thousands at once would measure the server's backlog, not a subscription."""
    sent = 0
    for connection, watches in plan:
        for watch in watches:
            while sent - board.started >= window and time.perf_counter() < deadline:
                board.changed.clear()
                await _until(board.changed, deadline)
            await connection.subscribe(watch, board)
            sent += 1


async def single_subscription(params: dict[str, Any]) -> dict[str, Any]:
    """One subscription at a time, for the time budget: notification latency with nothing else
    going on."""
    end = time.perf_counter() + float(params["seconds"])
    task_timeout = float(params.get("task_timeout", 10.0))
    watches: list[Watch] = []
    async with http_session(1) as session:
        api = Api(session, params["http_url"], params["token"])
        connection = await Connection.open(params["ws_url"], params["token"])
        try:
            while time.perf_counter() < end and not connection.closed:
                watch = Watch(await api.create())
                board = Board(1)
                await connection.subscribe(watch, board)
                await _until(board.all_finished, time.perf_counter() + task_timeout)
                watches.append(watch)
        finally:
            await connection.close()
    return summarize(watches)


async def wait_for_tasks(params: dict[str, Any]) -> dict[str, Any]:
    """`clients` clients each create a task and wait until it is final: by subscription on a
    connection of their own, by polling task(id) every `poll_interval` seconds, or not at all."""
    how = params["how"]
    clients = int(params["clients"])
    interval = float(params.get("poll_interval", 1.0))
    task_timeout = float(params.get("task_timeout", 60.0))
    creating = asyncio.Semaphore(int(params.get("create_concurrency", 50)))
    connecting = asyncio.Semaphore(int(params.get("connect_concurrency", 100)))
    watches = [Watch("") for _ in range(clients)]
    counts = {"requests": 0, "upgrades": 0, "subscribes": 0}
    errors: list[str] = []
    started = time.perf_counter()
    async with http_session(min(clients, 200)) as session:
        api = Api(session, params["http_url"], params["token"])

        async def push(watch: Watch) -> None:
            async with connecting:
                connection = await Connection.open(params["ws_url"], params["token"])
            counts["upgrades"] += 1
            try:
                board = Board(1)
                await connection.subscribe(watch, board)
                counts["subscribes"] += 1
                await _until(board.all_finished, time.perf_counter() + task_timeout)
            finally:
                await connection.close()

        async def poll(watch: Watch) -> None:
            stop = time.perf_counter() + task_timeout
            while watch.final_status is None and time.perf_counter() < stop:
                await asyncio.sleep(interval)
                task = await api.get(watch.task_id)
                watch.take(time.time(), {"data": {"taskUpdated": task}})

        async def client(watch: Watch) -> None:
            try:
                async with creating:
                    watch.task_id = await api.create()
                if how == "push":
                    await push(watch)
                elif how == "poll":
                    # The createTask answer (PENDING) was the first state this client saw.
                    watch.first_status = "PENDING"
                    await poll(watch)
            except Exception as exc:
                errors.append(repr(exc))

        await asyncio.gather(*(client(watch) for watch in watches))
        counts["requests"] = api.requests
    result = summarize(watches if how != "none" else [])
    result.update(
        counts,
        clients=clients,
        task_ids=[watch.task_id for watch in watches if watch.task_id],
        client_errors=len(errors),
        first_client_error=errors[0] if errors else "",
        seconds=time.perf_counter() - started,
    )
    return result


async def relay(params: dict[str, Any]) -> dict[str, Any]:
    """Clients create tasks through `create_url` and wait for COMPLETED on `ws_url` (another API
    process), back to back for `seconds`; latency is create-to-COMPLETED-received."""
    clients = int(params["clients"])
    task_timeout = float(params.get("task_timeout", 30.0))
    started = time.perf_counter()
    window_end = started + float(params["seconds"])
    watches: list[Watch] = []
    round_trips: list[float] = []
    errors: list[str] = []
    async with http_session(clients) as session:
        api = Api(session, params["create_url"], params["token"])

        async def client() -> None:
            connection = await Connection.open(params["ws_url"], params["token"])
            try:
                while time.perf_counter() < window_end and not connection.closed:
                    began = time.perf_counter()
                    watch = Watch(await api.create())
                    watches.append(watch)
                    board = Board(1)
                    await connection.subscribe(watch, board)
                    await _until(board.all_finished, time.perf_counter() + task_timeout)
                    if watch.final_status == "COMPLETED":
                        round_trips.append((time.perf_counter() - began) * 1000.0)
            except Exception as exc:
                errors.append(repr(exc))
            finally:
                await connection.close()

        await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started
    result = summarize(watches)
    result.update(
        notify_latencies_ms=result.pop("latencies_ms"),
        latencies_ms=round_trips,
        created=len(watches),
        seconds=seconds,
        throughput=len(round_trips) / seconds if seconds > 0 else 0.0,
        client_errors=len(errors),
        first_client_error=errors[0] if errors else "",
    )
    return result


# --- plumbing ------------------------------------------------------------------------------


async def _wait_event(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def _until(event: asyncio.Event, deadline: float) -> None:
    """Wait for `event` until the perf_counter `deadline`; returns either way."""
    await _wait_event(event, max(0.0, deadline - time.perf_counter()))


def write_atomically(path: Path, text: str) -> None:
    """Write then rename, so that a reader polling for the file never sees half of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


MODES: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "create": create_tasks,
    "subscribe": hold_subscriptions,
    "single": single_subscription,
    "wait": wait_for_tasks,
    "relay": relay,
}


async def run(params: dict[str, Any]) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    result = await MODES[params["mode"]](params)
    result.setdefault("fd_limit", fd_limit)
    return result


def main() -> None:
    from bench.load import serve_load

    serve_load(run)


if __name__ == "__main__":
    main()
