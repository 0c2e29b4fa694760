"""The parts that keep an idle websocket subscription small (graphql_api.frames, the inbox in
taskwire.events): they must behave like what they replace, and hold little while idle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import uuid4

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.types import ExecutionResult
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from graphql_api.auth import Authenticator
from graphql_api.context import Context
from graphql_api.frames import Alarm, Deadline
from graphql_api.protocol import Gate, LeanWebSocketProtocol, ReceiveQueue
from graphql_api.schema import build_schema
from graphql_api.websocket import LegacyWsHandler, TransportWsHandler
from taskwire import events
from taskwire.events import Inbox, MemoryEventBus, Timeouts
from taskwire.identity import Principal
from taskwire.models import Task, TaskStatus
from taskwire.ports import RESYNC
from tests.support.auth import TESTER, auth_settings
from tests.support.uvicorn_server import websocket_server
from tests.unit.test_websocket_protocol import (
    BOTH,
    Dialect,
    Probe,
    View,
    WsContext,
    closing,
    initialise,
    receive,
    send,
)

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0


async def settle() -> None:
    """Let every ready callback run (a few loop iterations)."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- ReceiveQueue and Gate: what uvicorn's protocol uses of asyncio.Queue and asyncio.Event ---


async def test_the_receive_queue_is_first_in_first_out_and_waits_when_empty() -> None:
    queue = ReceiveQueue()
    assert queue.empty()
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert not queue.empty()
    assert [await queue.get(), await queue.get()] == [1, 2]
    assert queue.empty()
    getter = asyncio.create_task(queue.get())
    await settle()
    assert not getter.done()
    queue.put_nowait(3)
    assert await asyncio.wait_for(getter, WAIT) == 3


async def test_a_cancelled_getter_passes_its_item_on() -> None:
    queue = ReceiveQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await settle()
    queue.put_nowait("item")
    first.cancel()  # woken, but cancelled before it ran
    assert await asyncio.wait_for(second, WAIT) == "item"
    assert first.cancelled()
    queue.put_nowait("next")
    assert await queue.get() == "next"


async def test_the_receive_queue_keeps_no_waiters_after_many_messages() -> None:
    queue = ReceiveQueue()

    async def exchange(n: int) -> None:
        getter = asyncio.create_task(queue.get())
        await settle()
        queue.put_nowait(n)
        assert await getter == n

    await exchange(-1)  # a first round allocates what every round reuses
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(100):
            await exchange(n)
        # Nothing is left behind by messages that came and went (no growing waiter list).
        assert tracemalloc.get_traced_memory()[0] - before < 5000  # a kept future: 100+ each
    finally:
        tracemalloc.stop()


async def test_the_gate_is_open_until_cleared_and_wakes_every_waiter() -> None:
    gate = Gate()
    assert gate.is_set()
    await asyncio.wait_for(gate.wait(), WAIT)
    gate.clear()
    waiters = [asyncio.create_task(gate.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(gate.wait())
    await settle()
    assert not any(waiter.done() for waiter in waiters)
    cancelled.cancel()
    await settle()
    gate.set()
    await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
    assert cancelled.cancelled()


# --- Alarm and Deadline: timers instead of sleeping tasks -------------------------------------


async def test_an_alarm_runs_its_action_once_after_the_delay_and_holds_no_task_before() -> None:
    ran: list[str] = []
    fired = asyncio.Event()

    async def action() -> None:
        ran.append(asyncio.current_task().get_name())  # type: ignore[union-attr]
        fired.set()

    alarm = Alarm()
    tasks_before = len(asyncio.all_tasks())
    alarm.set(0.05, action, name="test.alarm")
    alarm.set(0.0, action, name="test.again")  # an alarm goes off once
    assert alarm.pending
    assert len(asyncio.all_tasks()) == tasks_before
    await asyncio.wait_for(fired.wait(), WAIT)
    await alarm.cancel()
    assert ran == ["test.alarm"]
    assert not alarm.pending


async def test_a_cancelled_alarm_never_runs() -> None:
    ran: list[int] = []

    async def action() -> None:
        ran.append(1)

    alarm = Alarm()
    alarm.set(0.01, action, name="test.alarm")
    await alarm.cancel()
    await asyncio.sleep(0.05)
    assert ran == []
    assert not alarm.pending


async def test_cancelling_a_running_alarm_waits_for_its_action_to_end() -> None:
    started = asyncio.Event()
    ended: list[str] = []

    async def action() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("ended")

    alarm = Alarm()
    alarm.set(0.0, action, name="test.alarm")
    await asyncio.wait_for(started.wait(), WAIT)
    assert alarm.pending
    await alarm.cancel()
    assert ended == ["ended"]


async def test_a_failing_alarm_action_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def action() -> None:
        raise RuntimeError("boom")

    alarm = Alarm()
    alarm.set(0.0, action, name="test.failing")
    async with asyncio.timeout(WAIT):
        while alarm.pending:
            await asyncio.sleep(0.01)
    assert "test.failing failed" in caplog.text


async def test_a_deadline_arms_only_for_a_token_that_expires() -> None:
    async def expire() -> None:
        raise AssertionError("must not run")

    deadline = Deadline()
    deadline.arm(None, expire)
    deadline.arm(Principal(subject="someone"), expire)
    assert not deadline.pending
    later = datetime.now(UTC) + timedelta(hours=1)
    deadline.arm(Principal(subject="someone", expires_at=later), expire)
    assert deadline.pending
    await deadline.cancel()
    assert not deadline.pending


async def test_a_deadline_of_a_naive_expired_time_fires_at_once() -> None:
    fired = asyncio.Event()

    async def expire() -> None:
        fired.set()

    past = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=5)
    deadline = Deadline()
    deadline.arm(Principal(subject="someone", expires_at=past), expire)
    await asyncio.wait_for(fired.wait(), WAIT)


# --- The handlers over LeanWebSocketProtocol: timers, not tasks --------------------------------


@dataclass
class Recorded:
    handlers: list[TransportWsHandler[WsContext, None] | LegacyWsHandler[WsContext, None]] = field(
        default_factory=list
    )


class RecordingTransport(TransportWsHandler[WsContext, None]):
    recorded: Recorded

    async def handle(self) -> None:
        self.recorded.handlers.append(self)
        await super().handle()


class RecordingLegacy(LegacyWsHandler[WsContext, None]):
    recorded: Recorded

    async def handle(self) -> None:
        self.recorded.handlers.append(self)
        await super().handle()


@contextlib.asynccontextmanager
async def recording_graphql(
    *, expires_in: float | None = None, timeouts: Timeouts | None = None, **options: Any
) -> AsyncIterator[tuple[str, Recorded]]:
    recorded = Recorded()
    transport = type("Transport", (RecordingTransport,), {"recorded": recorded})
    legacy = type("Legacy", (RecordingLegacy,), {"recorded": recorded})
    view_class = type(
        "RecordingView",
        (View,),
        {"graphql_transport_ws_handler_class": transport, "graphql_ws_handler_class": legacy},
    )
    view = view_class(Probe(), expires_in=expires_in, **options)
    if timeouts is not None:
        view.timeouts = timeouts  # what the handlers share their token deadlines in
    app = Starlette(routes=[WebSocketRoute("/graphql", view)])
    async with websocket_server(app) as base:
        yield f"{base}/graphql", recorded


@pytest.mark.parametrize("dialect", BOTH)
async def test_leaving_early_cancels_the_expiry_timer(dialect: Dialect) -> None:
    async with recording_graphql(expires_in=3600) as (url, recorded):
        async with connect(url, subprotocols=[Subprotocol(dialect.protocol)]) as ws:
            await initialise(ws)
            await send(ws, dialect.start("a"))
            assert (await receive(ws))["type"] == dialect.data
            (handler,) = recorded.handlers
            assert handler.deadline.pending
            assert not handler.init_timeout.pending  # disarmed by connection_init
        async with asyncio.timeout(WAIT):
            while handler.deadline.pending:
                await asyncio.sleep(0.01)


@pytest.mark.parametrize("dialect", BOTH)
async def test_an_idle_subscription_holds_no_task_besides_its_own(dialect: Dialect) -> None:
    async with recording_graphql(expires_in=3600, keep_alive=False) as (url, _):
        before = len(asyncio.all_tasks())
        # No client keepalive task either, so that every new task is the server's.
        protocols = [Subprotocol(dialect.protocol)]
        async with connect(url, subprotocols=protocols, ping_interval=None) as ws:
            await initialise(ws)
            await send(ws, dialect.start("a"))
            assert (await receive(ws))["type"] == dialect.data
            await settle()
            # The connection's ASGI task and the operation's, nothing sleeping beside them
            # (no init-timeout task, no token-expiry task).
            assert len(asyncio.all_tasks()) - before == 2


async def test_the_connection_params_are_not_kept_after_connection_init() -> None:
    async with (
        recording_graphql() as (url, recorded),
        connect(url, subprotocols=[Subprotocol("graphql-transport-ws")]) as ws,
    ):
        await initialise(ws)  # with GOOD, which on_ws_connect checked
        (handler,) = recorded.handlers
        assert handler.context.connection_params == {}
        assert handler.context.principal is not None


@pytest.mark.parametrize("dialect", BOTH)
async def test_an_accepted_connection_keeps_no_handshake_headers(dialect: Dialect) -> None:
    async with (
        recording_graphql() as (url, recorded),
        connect(url, subprotocols=[Subprotocol(dialect.protocol)]) as ws,
    ):
        await initialise(ws)
        (handler,) = recorded.handlers
        websocket = cast("Any", handler.socket)._inner.ws
        assert websocket.scope["headers"] == []
        assert len(websocket.headers) == 0  # Starlette's cached Headers is the same list


@pytest.mark.parametrize("dialect", BOTH)
async def test_a_handler_keeps_its_attributes_in_slots(dialect: Dialect) -> None:
    async with (
        recording_graphql() as (url, recorded),
        connect(url, subprotocols=[Subprotocol(dialect.protocol)]) as ws,
    ):
        await initialise(ws)
        await send(ws, dialect.start("a"))
        assert (await receive(ws))["type"] == dialect.data
        (handler,) = recorded.handlers
        # Every attribute Strawberry's handler or ours set is a slot: no instance dict.
        assert vars(handler) == {}
        assert vars(handler.socket) == {}


# --- LeanWebSocketProtocol: uvicorn's protocol, unchanged from the outside ---------------------


async def test_the_protocol_keeps_no_instance_dict() -> None:
    # uvicorn's protocol sets over 30 attributes: in an instance dict, 1.5 KiB per connection.
    protocol = LeanWebSocketProtocol(Config(app=echo_app()), ServerState(), {})
    assert vars(protocol) == {}


async def echo(websocket: WebSocket) -> None:
    """Echoes text frames; "close:<code>" closes with that code; "slow" reads nothing for a
    while (so that frames queue up and uvicorn pauses reading)."""
    await websocket.accept(subprotocol="echo")
    try:
        while True:
            text = await websocket.receive_text()
            if text.startswith("close:"):
                await websocket.close(int(text.removeprefix("close:")), "bye")
                return
            if text == "slow":
                await asyncio.sleep(0.2)
            await websocket.send_text(text)
    except WebSocketDisconnect:
        pass


async def refuse(websocket: WebSocket) -> None:
    await websocket.close()


def echo_app() -> Starlette:
    return Starlette(routes=[WebSocketRoute("/echo", echo), WebSocketRoute("/refuse", refuse)])


async def test_frames_arrive_in_order_even_while_reading_is_paused() -> None:
    async with (
        websocket_server(echo_app()) as base,
        connect(f"{base}/echo", subprotocols=[Subprotocol("echo")]) as ws,
    ):
        assert ws.subprotocol == "echo"
        messages = ["slow", *(f"m{n}" for n in range(50))]
        for message in messages:
            await ws.send(message)
        async with asyncio.timeout(WAIT):
            echoed = [await ws.recv() for _ in messages]
        assert echoed == messages


async def test_the_app_closes_with_its_code_and_reason() -> None:
    async with (
        websocket_server(echo_app()) as base,
        connect(f"{base}/echo", subprotocols=[Subprotocol("echo")]) as ws,
    ):
        await ws.send("close:4408")
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(WAIT):
                await ws.recv()
        assert ws.close_code == 4408
        assert ws.close_reason == "bye"


async def test_a_refused_handshake_is_a_403() -> None:
    async with websocket_server(echo_app()) as base:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{base}/refuse"):
                pass
    assert refused.value.response.status_code == 403


async def test_an_oversize_frame_closes_1009() -> None:
    async with (
        websocket_server(echo_app(), ws_max_size=1024) as base,
        connect(f"{base}/echo", subprotocols=[Subprotocol("echo")]) as ws,
    ):
        await ws.send("x" * 2048)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(WAIT):
                await ws.recv()
        assert ws.close_code == 1009


async def test_keepalive_pings_keep_coming_and_an_answering_client_stays() -> None:
    async with (
        websocket_server(echo_app(), ws_ping_interval=0.05, ws_ping_timeout=1.0) as base,
        connect(f"{base}/echo", subprotocols=[Subprotocol("echo")], ping_interval=None) as ws,
    ):
        pings = 0
        original = ws.protocol.receive_data

        def counting(data: bytes | bytearray) -> None:
            nonlocal pings
            pings += data.count(b"\x89")  # FIN + PING opcode, unmasked from the server
            original(data)

        ws.protocol.receive_data = counting  # type: ignore[method-assign]
        await asyncio.sleep(0.5)
        assert pings >= 3
        await ws.send(json.dumps({"still": "open"}))
        async with asyncio.timeout(WAIT):
            assert json.loads(await ws.recv()) == {"still": "open"}


# --- Inbox: an idle subscription holds no queue ------------------------------------------------


def test_an_idle_inbox_is_small() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        inboxes = [Inbox(256) for _ in range(1000)]
        per_inbox = (tracemalloc.get_traced_memory()[0] - before) / len(inboxes)
    finally:
        tracemalloc.stop()
    # A deque would be over 600 bytes on its own.
    assert per_inbox < 150


async def test_an_inbox_drained_and_refilled_still_answers_in_order() -> None:
    inbox = Inbox(2)
    now = datetime.now(UTC)
    task = Task(uuid4(), TaskStatus.PENDING, "x", None, None, 0, 1, now, now)
    later = replace(task, version=2, status=TaskStatus.PROCESSING)
    for _ in range(3):
        inbox.put(task)
        inbox.put(later)
        assert await inbox.get() is task
        assert await inbox.get() is later
    assert await inbox.get(timeout=0.01) is RESYNC
    for _ in range(3):
        inbox.put(task)  # past the limit of 2: one RESYNC replaces what was queued
    assert await inbox.get() is RESYNC
    assert await inbox.get(timeout=0.01) is RESYNC


# --- Timeouts: one loop timer for every waiting inbox ------------------------------------------


@pytest.fixture
def fine_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timeouts to the hundredth of a second, and served from a tenth of a second on."""
    monkeypatch.setattr(events, "TIMEOUT_RESOLUTION_SECONDS", 0.01)
    monkeypatch.setattr(events, "COARSE_TIMEOUT_SECONDS", 0.1)


async def test_timeouts_wake_each_waiter_once_its_delay_passed(fine_timeouts: None) -> None:
    loop = asyncio.get_running_loop()
    timeouts = Timeouts()
    started = loop.time()
    waiters: list[asyncio.Future[None]] = [loop.create_future() for _ in range(3)]
    for waiter, delay in zip(waiters, (0.15, 0.05, 0.1), strict=True):
        timeouts.add(waiter, delay)
    assert len(timeouts) == 3
    woken: list[float] = []
    for waiter in (waiters[1], waiters[2], waiters[0]):
        await asyncio.wait_for(waiter, WAIT)
        woken.append(loop.time() - started)
    # In the order they were due, never early.
    assert woken == sorted(woken)
    # (Up to a millisecond early: a loop timer may fire that much before its time.)
    for took, delay in zip(woken, (0.05, 0.1, 0.15), strict=True):
        assert took >= delay - 0.002
    assert len(timeouts) == 0


async def test_a_discarded_waiter_is_not_woken(fine_timeouts: None) -> None:
    loop = asyncio.get_running_loop()
    timeouts = Timeouts()
    kept, dropped = loop.create_future(), loop.create_future()
    timeouts.add(kept, 0.05)
    key = timeouts.add(dropped, 0.05)
    assert key is not None
    timeouts.discard(key, dropped)
    await asyncio.wait_for(kept, WAIT)
    await asyncio.sleep(0.05)
    assert not dropped.done()
    assert len(timeouts) == 0


async def test_a_bus_inbox_waits_on_the_shared_timeouts(fine_timeouts: None) -> None:
    bus = MemoryEventBus()
    now = datetime.now(UTC)
    task = Task(uuid4(), TaskStatus.PENDING, "x", None, None, 0, 1, now, now)
    async with bus.subscribe(task.id) as subscription:
        # A long timeout: no timer of its own, an entry in the bus's Timeouts.
        getting = asyncio.create_task(subscription.get(timeout=60))
        await settle()
        assert len(bus.timeouts) == 1
        await bus.publish(task)
        assert await asyncio.wait_for(getting, WAIT) is task
        assert len(bus.timeouts) == 0
        # Once due, the timeout answers RESYNC, as a timer of its own would.
        assert await asyncio.wait_for(subscription.get(timeout=0.2), WAIT) is RESYNC
        # A short one still has a timer of its own.
        assert await asyncio.wait_for(subscription.get(timeout=0.01), WAIT) is RESYNC
        assert len(bus.timeouts) == 0


# --- taskUpdated: one generator per subscription -----------------------------------------------


async def test_a_bad_task_id_fails_the_stream_not_the_subscribe() -> None:
    # As when the resolver was a generator: the error is a result of the stream (a `next`
    # with errors over graphql-transport-ws), not a pre-execution error (an `error` message).
    context = Context(cast("Any", None), auth=Authenticator(auth_settings()), principal=TESTER)
    stream = await build_schema().subscribe(
        'subscription { taskUpdated(id: "not-a-uuid") { id } }', context_value=context
    )
    assert not isinstance(stream, ExecutionResult)
    results = [result async for result in stream]
    assert len(results) == 1
    assert type(results[0]) is ExecutionResult
    assert results[0].errors is not None
    assert results[0].errors[0].extensions == {"code": "BAD_USER_INPUT"}


async def test_an_alarm_waits_in_shared_timeouts_when_given(fine_timeouts: None) -> None:
    fired = asyncio.Event()

    async def action() -> None:
        fired.set()

    timeouts = Timeouts()
    alarm = Alarm()
    alarm.set(0.2, action, name="test", timeouts=timeouts)
    assert alarm.pending
    assert len(timeouts) == 1
    alarm.disarm()
    assert not alarm.pending
    assert len(timeouts) == 0
    again = Alarm()
    again.set(0.2, action, name="test", timeouts=timeouts)
    await asyncio.wait_for(fired.wait(), WAIT)
    assert len(timeouts) == 0
    await again.cancel()


@pytest.mark.parametrize("dialect", BOTH)
async def test_a_deadline_in_the_views_timeouts_closes_4403(
    dialect: Dialect, fine_timeouts: None
) -> None:
    timeouts = Timeouts()
    async with (
        recording_graphql(expires_in=0.4, timeouts=timeouts) as (url, recorded),
        connect(url, subprotocols=[Subprotocol(dialect.protocol)]) as ws,
    ):
        await initialise(ws)
        (handler,) = recorded.handlers
        assert handler.deadline.pending
        assert len(timeouts) == 1  # no loop timer of its own
        code, reason, _ = await closing(ws)
        assert (code, reason) == (4403, "Token expired")
        assert len(timeouts) == 0
