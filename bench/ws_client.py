"""The websocket client of the realtime load processes: graphql-transport-ws connections carrying
many `taskUpdated` subscriptions (Watch, Board, Connection), a direct Redis subscriber beside the
API (RedisProbe) and GraphQL over HTTP (Api).

Timestamps: a notification's latency is the receipt time (time.time(), taken when the message
is read off the socket) minus the task's `finishedAt`, which the processor takes on the same
machine's clock just before its COMPLETED commit. The figure therefore slightly overstates the
commit-to-receipt time (by the UPDATE's own round trip) and includes the client's own queueing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

SUBPROTOCOL = Subprotocol("graphql-transport-ws")
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
# Only what the measurement reads: a client that wants fewer fields costs the server less, and
# the benchmark is about the notification path, not the serialisation of unused fields.
WATCH = "subscription($id: ID!) { taskUpdated(id: $id) { id status version finishedAt } }"
GET = "query($id: ID!) { task(id: $id) { id status version finishedAt } }"
CREATE = "mutation($input: String!) { createTask(input: {inputData: $input}) { id } }"


# --- pure parts (unit-tested) ---------------------------------------------------------------


def epoch_seconds(iso: str) -> float:
    """A GraphQL DateTime (ISO 8601 with offset) as seconds since the epoch."""
    return datetime.fromisoformat(iso).timestamp()


def notify_latency_ms(received_at: float, finished_at: str) -> float:
    """Receipt time (epoch seconds) minus the task's finishedAt, in milliseconds."""
    return (received_at - epoch_seconds(finished_at)) * 1000.0


@dataclass(slots=True)
class Watch:
    """One subscription to one task, as its client saw it."""

    task_id: str
    first_status: str | None = None
    final_status: str | None = None
    finished_at: str | None = None
    received_at: float = 0.0  # time.time() when the final state arrived
    messages: int = 0
    error: str = ""
    ended: bool = False

    @property
    def started(self) -> bool:
        return self.first_status is not None or self.ended

    @property
    def finished(self) -> bool:
        return self.final_status is not None or self.ended

    @property
    def pushed(self) -> bool:
        """The final state came as an event after a non-final first state (not as the snapshot
        a late subscriber gets): only then is it a notification."""
        return (
            self.first_status is not None
            and self.first_status not in TERMINAL
            and self.final_status is not None
        )

    def latency_ms(self) -> float | None:
        """Notification latency of a pushed COMPLETED, else None."""
        if not self.pushed or self.final_status != "COMPLETED" or self.finished_at is None:
            return None
        return notify_latency_ms(self.received_at, self.finished_at)

    def take(self, received_at: float, payload: Any) -> None:
        self.messages += 1
        task = _task_of(payload)
        if task is None:
            self.error = self.error or _short(payload)
            return
        status = str(task.get("status"))
        if self.first_status is None:
            self.first_status = status
        if status in TERMINAL and self.final_status is None:
            self.final_status = status
            self.finished_at = task.get("finishedAt")
            self.received_at = received_at


def _task_of(payload: Any) -> dict[str, Any] | None:
    if not isinstance(payload, dict) or payload.get("errors"):
        return None
    data = payload.get("data")
    task = data.get("taskUpdated") if isinstance(data, dict) else None
    return task if isinstance(task, dict) else None


def _short(value: Any, limit: int = 300) -> str:
    return json.dumps(value, default=str)[:limit]


def summarize(watches: Sequence[Watch]) -> dict[str, Any]:
    """Counts over watches and the latency samples of the pushed COMPLETED ones."""
    samples = [latency for watch in watches if (latency := watch.latency_ms()) is not None]
    errors = [watch.error for watch in watches if watch.error]
    return {
        "subscriptions": len(watches),
        "started": sum(1 for watch in watches if watch.first_status is not None),
        "completed": sum(1 for watch in watches if watch.final_status == "COMPLETED"),
        "pushed": sum(1 for watch in watches if watch.pushed),
        "late": sum(
            1 for watch in watches if watch.first_status in TERMINAL and watch.final_status
        ),
        "missing": sum(1 for watch in watches if watch.final_status is None),
        "messages": sum(watch.messages for watch in watches),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "latencies_ms": samples,
    }


# --- the websocket client ------------------------------------------------------------------


class Board:
    """How many of a group of watches have started and finished, with events for 'all'."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = 0
        self.finished = 0
        self.all_started = asyncio.Event()
        self.all_finished = asyncio.Event()
        # Set on every change; a waiter clears it first.
        self.changed = asyncio.Event()
        self._check()

    def note(self, watch: Watch, was_started: bool, was_finished: bool) -> None:
        if watch.started and not was_started:
            self.started += 1
        if watch.finished and not was_finished:
            self.finished += 1
        self.changed.set()
        self._check()

    def _check(self) -> None:
        if self.started >= self.total:
            self.all_started.set()
        if self.finished >= self.total:
            self.all_finished.set()


class Connection:
    """One graphql-transport-ws connection carrying any number of subscriptions."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.operations: dict[str, tuple[Watch, Board]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def open(cls, ws_url: str, token: str, *, timeout: float = 30.0) -> Connection:
        socket = await connect(
            ws_url,
            subprotocols=[SUBPROTOCOL],
            compression=None,  # as the server: deflate nearly doubles memory per connection
            ping_interval=None,  # the server pings; the client answers (automatically)
            open_timeout=timeout,
            max_queue=None,  # the reader keeps up or the measurement shows it
        )
        try:
            async with asyncio.timeout(timeout):
                init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
                await socket.send(json.dumps(init))
                ack = json.loads(await socket.recv())
            if ack.get("type") != "connection_ack":
                raise RuntimeError(f"no connection_ack: {_short(ack)}")
        except BaseException:
            await socket.close()
            raise
        connection = cls(socket)
        connection._reader = asyncio.create_task(connection._read())
        return connection

    @property
    def closed(self) -> bool:
        """The connection is gone (its reader ended): nothing more arrives on it."""
        return self._reader is not None and self._reader.done()

    async def subscribe(self, watch: Watch, board: Board) -> None:
        operation_id = str(next(self._ids))
        self.operations[operation_id] = (watch, board)
        message = {
            "id": operation_id,
            "type": "subscribe",
            "payload": {"query": WATCH, "variables": {"id": watch.task_id}},
        }
        try:
            await self.socket.send(json.dumps(message))
        except ConnectionClosed as exc:
            self._end(operation_id, f"connection closed: {exc}")

    async def close(self) -> None:
        self._closing = True  # what is still running ends without an error: we ended it
        await self.socket.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        problem = "connection closed"
        try:
            async for raw in self.socket:
                received_at = time.time()
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "next":
                    operation = self.operations.get(message.get("id"))
                    if operation is not None:
                        watch, board = operation
                        was = (watch.started, watch.finished)
                        watch.take(received_at, message.get("payload"))
                        board.note(watch, *was)
                elif kind == "complete":
                    self._end(message.get("id"), "")
                elif kind == "error":
                    self._end(message.get("id"), _short(message.get("payload")))
                elif kind == "ping":
                    await self.socket.send('{"type": "pong"}')
        except ConnectionClosed as exc:
            problem = f"connection closed: {exc}"
        finally:
            for operation_id in list(self.operations):
                self._end(operation_id, "" if self._closing else problem)

    def _end(self, operation_id: Any, error: str) -> None:
        operation = self.operations.pop(str(operation_id), None)
        if operation is None:
            return
        watch, board = operation
        was = (watch.started, watch.finished)
        if error and watch.final_status is None:
            watch.error = watch.error or error
        watch.ended = True
        board.note(watch, *was)


async def open_all(
    ws_url: str, token: str, count: int, *, concurrency: int
) -> tuple[list[Connection], list[str]]:
    """`count` connections opened at most `concurrency` at a time; failures are returned."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Connection:
        async with gate:
            return await Connection.open(ws_url, token)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    opened = [result for result in results if isinstance(result, Connection)]
    failed = [repr(result) for result in results if isinstance(result, BaseException)]
    return opened, failed


class RedisProbe:
    """A direct subscriber to every task event of a deployment, beside the API: receipt time
    minus finishedAt of each COMPLETED snapshot is the part of a notification's latency spent
    before the event reached Redis (the processor's side)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = Redis.from_url(url)
        self.pattern = channel_pattern(prefix)
        self.samples: list[float] = []
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.psubscribe(self.pattern)
        self.listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        async for message in self.pubsub.listen():
            received_at = time.time()
            snapshot = json.loads(message["data"])
            if snapshot.get("status") == "COMPLETED" and snapshot.get("finished_at"):
                self.samples.append(notify_latency_ms(received_at, snapshot["finished_at"]))

    async def stop(self) -> list[float]:
        if self.listener is not None:
            self.listener.cancel()
            await asyncio.gather(self.listener, return_exceptions=True)
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.client.aclose()
        return self.samples


def channel_pattern(prefix: str) -> str:
    """The Redis channels of every task of a deployment (taskwire.redis_events names one task's
    channel `<prefix>:task:<id>`; a unit test keeps the two in step)."""
    return f"{prefix}:task:*"


# --- HTTP ----------------------------------------------------------------------------------


class Api:
    """GraphQL over HTTP with a bearer token; counts the requests it made."""

    def __init__(self, session: aiohttp.ClientSession, http_url: str, token: str) -> None:
        self.session = session
        self.url = http_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.requests = 0

    async def call(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        self.requests += 1
        body = {"query": query, "variables": variables}
        async with self.session.post(self.url, json=body, headers=self.headers) as response:
            answer = await response.json(content_type=None)
        if not isinstance(answer, dict) or answer.get("errors") or "data" not in answer:
            raise RuntimeError(f"HTTP {response.status}: {_short(answer)}")
        data: dict[str, Any] = answer["data"]
        return data

    async def create(self, text: str = "bench") -> str:
        data = await self.call(CREATE, {"input": text})
        return str(data["createTask"]["id"])

    async def get(self, task_id: str) -> dict[str, Any] | None:
        task: dict[str, Any] | None = (await self.call(GET, {"id": task_id}))["task"]
        return task


def http_session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60),
    )
