"""The websocket surface under bad input, on both subprotocols, frame by frame with the
`websockets` client (issue 4, "Proof"). The HTTP rows are in test_bad_input.py.

Every row asserts the exact handshake status or close code, that nothing was created, that no
frame leaked another owner's data or a secret, and that the API logged no incident. The
deployment runs no processor: tasks stay PENDING, so subscriptions stay open as long as a
row needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.e2e.conftest import Deployment
from tests.e2e.hardened import (
    ALLOWED_ORIGIN,
    CREATE,
    FOREIGN_ORIGIN,
    UNKNOWN_ID,
    WATCH,
    Guard,
    TaskRows,
    assert_nothing_leaked,
    fresh_subject,
)
from tests.support.auth import TEST_JWT_SECRET, token_for
from tests.support.client import GRAPHQL_TRANSPORT_WS, LEGACY_GRAPHQL_WS

pytestmark = pytest.mark.timeout(60)

INIT_TIMEOUT_SECONDS = 1.0
MAX_SUBSCRIPTIONS = 3
MAX_FRAME_BYTES = 65536
# The module's deployment (the `api` fixture of tests/e2e/conftest.py).
PROCESSORS = 0
SETTINGS = {
    "ALLOWED_ORIGINS": ALLOWED_ORIGIN,
    "WS_INIT_TIMEOUT_SECONDS": str(INIT_TIMEOUT_SECONDS),
    "MAX_SUBSCRIPTIONS_PER_CONNECTION": str(MAX_SUBSCRIPTIONS),
    "MAX_WS_FRAME_BYTES": str(MAX_FRAME_BYTES),
    # A token's expiry is exact on a websocket, so that the expiry row waits seconds, not 30.
    "JWT_LEEWAY_SECONDS": "0",
}
# How long a close the server owes may take to arrive.
CLOSE_WITHIN = 5.0


@dataclass(frozen=True)
class Protocol:
    name: str
    subscribe: str
    complete: str
    data: str

    def __str__(self) -> str:
        return self.name


TRANSPORT = Protocol(GRAPHQL_TRANSPORT_WS, subscribe="subscribe", complete="complete", data="next")
LEGACY = Protocol(LEGACY_GRAPHQL_WS, subscribe="start", complete="stop", data="data")
PROTOCOLS = [
    pytest.param(TRANSPORT, id=GRAPHQL_TRANSPORT_WS),
    pytest.param(LEGACY, id=LEGACY_GRAPHQL_WS),
]


async def create_task(api: Deployment, owner: str, text: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            api.http_url,
            json={
                "query": "mutation($i: String!) { createTask(input: {inputData: $i}) "
                "{ id watchToken } }",
                "variables": {"i": text},
            },
            headers={"Authorization": f"Bearer {token_for(owner)}"},
        )
    created: dict[str, Any] = response.json()["data"]["createTask"]
    return created


@dataclass
class Closed:
    code: int | None
    reason: str
    # Every message received before the close (keep-alives left out).
    before: list[dict[str, Any]] = field(default_factory=list)


class Socket:
    """One websocket speaking `protocol`, with everything it received kept for the leak
    check."""

    def __init__(self, ws: ClientConnection, protocol: Protocol) -> None:
        self.ws = ws
        self.protocol = protocol
        self.received: list[str] = []
        self.skipped: list[dict[str, Any]] = []

    async def send(self, message: object) -> None:
        await self.ws.send(json.dumps(message))

    async def init(self, payload: object) -> None:
        await self.send({"type": "connection_init", "payload": payload})

    async def init_as(self, token: str) -> None:
        await self.init({"Authorization": f"Bearer {token}"})
        assert (await self.receive())["type"] == "connection_ack"

    async def subscribe(self, op_id: str, query: str, variables: dict[str, Any]) -> None:
        await self.send(
            {
                "type": self.protocol.subscribe,
                "id": op_id,
                "payload": {"query": query, "variables": variables},
            }
        )

    async def complete(self, op_id: str) -> None:
        await self.send({"type": self.protocol.complete, "id": op_id})

    async def receive(self, timeout: float = CLOSE_WITHIN) -> dict[str, Any]:
        """The next message that is not a keep-alive."""
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.ws.recv(decode=True)
                self.received.append(raw)
                message: dict[str, Any] = json.loads(raw)
                if message.get("type") not in ("ka", "ping", "pong"):
                    return message

    async def receive_for(self, op_id: str) -> dict[str, Any]:
        """The next message of operation `op_id`; others are kept in `self.skipped`."""
        while True:
            message = await self.receive()
            if message.get("id") == op_id:
                return message
            self.skipped.append(message)

    async def answer_of(self, op_id: str) -> list[dict[str, Any]]:
        """Every message of operation `op_id` up to and including its `complete`."""
        messages = [await self.receive_for(op_id)]
        while messages[-1]["type"] not in ("complete", "connection_error"):
            messages.append(await self.receive_for(op_id))
        return messages

    async def ping(self) -> bool:
        """graphql-transport-ws only: whether a ping is answered with a pong."""
        await self.send({"type": "ping"})
        async with asyncio.timeout(CLOSE_WITHIN):
            while True:
                raw = await self.ws.recv(decode=True)
                self.received.append(raw)
                if json.loads(raw).get("type") == "pong":
                    return True

    async def closed(self, timeout: float = CLOSE_WITHIN) -> Closed:
        """Wait for the server to close; what came before, and the close frame."""
        before: list[dict[str, Any]] = []
        try:
            while True:
                before.append(await self.receive(timeout))
        except ConnectionClosed as closed:
            frame = closed.rcvd
            self.received.append(frame.reason if frame else "")
            return Closed(frame.code if frame else None, frame.reason if frame else "", before)

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Whatever non-keep-alive messages arrive within `seconds` (the socket stays open)."""
        seen: list[dict[str, Any]] = []
        try:
            while True:
                seen.append(await self.receive(seconds))
        except TimeoutError:
            return seen


@asynccontextmanager
async def socket(
    api: Deployment, protocol: Protocol, *, origin: str | None = None
) -> AsyncIterator[Socket]:
    async with connect(
        api.ws_url,
        subprotocols=[Subprotocol(protocol.name)],
        origin=Origin(origin) if origin else None,
        open_timeout=5,
        # The client never refuses what it receives: only the server's limit is under test.
        max_size=None,
    ) as ws:
        assert ws.subprotocol == protocol.name
        yield Socket(ws, protocol)


@pytest.fixture
async def guard(api: Deployment, rows: TaskRows) -> Guard:
    return await Guard(api, rows).arm()


def received(*sockets: Socket) -> str:
    """Every frame and close reason the sockets got, for the leak check."""
    return "\n".join(text for sock in sockets for text in sock.received)


def _data_messages(protocol: Protocol, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == protocol.data]


# ------------------------------------------------------------------------------- origins


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_foreign_origin_is_refused_at_the_handshake(
    api: Deployment, guard: Guard, protocol: Protocol
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with socket(api, protocol, origin=FOREIGN_ORIGIN):
            pass
    assert refused.value.response.status_code == 403
    assert_nothing_leaked(bytes(refused.value.response.body or b"").decode(errors="replace"), api)
    await guard.check("")


@pytest.mark.parametrize("origin", [ALLOWED_ORIGIN, None], ids=["allowed-origin", "no-origin"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_allowed_or_absent_origin_works(
    api: Deployment, guard: Guard, protocol: Protocol, origin: str | None
) -> None:
    owner = fresh_subject("origin")
    task = await create_task(api, owner, "origin row")
    await guard.arm()
    async with socket(api, protocol, origin=origin) as sock:
        await sock.init_as(token_for(owner))
        await sock.subscribe("1", WATCH, {"id": task["id"]})
        message = await sock.receive()
    assert message["type"] == protocol.data
    assert message["payload"]["data"]["taskUpdated"]["id"] == task["id"]
    await guard.check(received(sock))


# -------------------------------------------------------------------- connection_init


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_no_connection_init_closes_4408(
    api: Deployment, guard: Guard, protocol: Protocol
) -> None:
    started = time.monotonic()
    async with socket(api, protocol) as sock:
        closed = await sock.closed(INIT_TIMEOUT_SECONDS + CLOSE_WITHIN)
    assert closed.code == 4408
    assert closed.before == []
    assert INIT_TIMEOUT_SECONDS * 0.9 <= time.monotonic() - started <= INIT_TIMEOUT_SECONDS + 3
    await guard.check(received(sock))


def _expired_token(subject: str) -> str:
    now = int(time.time())
    claims = {"iss": "taskwire", "aud": "taskwire", "sub": subject, "iat": now - 60}
    return jwt.encode({**claims, "exp": now - 1}, TEST_JWT_SECRET, algorithm="HS256")


def _unsigned_token(subject: str) -> str:
    now = int(time.time())
    claims = {"iss": "taskwire", "aud": "taskwire", "sub": subject, "exp": now + 600}
    return jwt.encode(claims, "", algorithm="none")


# The connection_init payload for the row's subject; None sends no payload at all.
BAD_INIT_PAYLOADS: dict[str, Callable[[str], dict[str, str] | None]] = {
    "no-payload": lambda s: None,
    "empty-payload": lambda s: {},
    "garbage-authorization": lambda s: {"Authorization": "Bearer not.a.jwt"},
    "garbage-authToken": lambda s: {"authToken": "not.a.jwt"},
    "wrong-scheme": lambda s: {"Authorization": "Basic dXNlcjpwYXNz"},
    "expired-token": lambda s: {"Authorization": f"Bearer {_expired_token(s)}"},
    "alg-none-token": lambda s: {"authToken": _unsigned_token(s)},
}


@pytest.mark.parametrize("kind", BAD_INIT_PAYLOADS.keys())
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_bad_token_in_connection_init_closes_4403(
    api: Deployment, guard: Guard, protocol: Protocol, kind: str
) -> None:
    payload = BAD_INIT_PAYLOADS[kind](fresh_subject("init"))
    async with socket(api, protocol) as sock:
        if payload is None:
            await sock.send({"type": "connection_init"})
        else:
            await sock.init(payload)
        # Whatever it tries next is never run (if the close did not beat it to the server).
        with contextlib.suppress(ConnectionClosed):
            await sock.subscribe("1", CREATE, {"input": "after a bad init"})
        closed = await sock.closed()
    assert closed.code == 4403
    assert closed.reason == "Forbidden"
    # graphql-ws announces the refusal first, with no more detail than the close.
    expected = (
        [{"type": "connection_error", "payload": {"message": "Forbidden"}}]
        if protocol is LEGACY
        else []
    )
    assert closed.before == expected
    await guard.check(received(sock))


@pytest.mark.parametrize("operation", ["subscription", "mutation"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_operation_before_the_ack_closes_4401(
    api: Deployment, guard: Guard, protocol: Protocol, operation: str
) -> None:
    query, variables = (
        (WATCH, {"id": UNKNOWN_ID})
        if operation == "subscription"
        else (CREATE, {"input": "before ack"})
    )
    async with socket(api, protocol) as sock:
        await sock.subscribe("1", query, variables)
        closed = await sock.closed()
    assert closed.code == 4401
    assert closed.before == []
    await guard.check(received(sock))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_second_connection_init_closes_4429(
    api: Deployment, guard: Guard, protocol: Protocol
) -> None:
    token = token_for(fresh_subject("reinit"))
    async with socket(api, protocol) as sock:
        await sock.init_as(token)
        await sock.init({"Authorization": f"Bearer {token}"})
        closed = await sock.closed()
    assert closed.code == 4429
    assert closed.before == []
    await guard.check(received(sock))


# -------------------------------------------------------------------------- bad frames


# Text or bytes are sent as they are, anything else as JSON; "$subscribe" stands for the
# protocol's operation message type (subscribe / start).
BAD_FRAMES: dict[str, str | bytes | dict[str, Any] | list[Any]] = {
    "non-json-text": "this is not json",
    "binary-frame": b'{"type": "ping"}',
    "json-array": [{"type": "ping"}],
    "json-string": '"ping"',
    "unknown-type": {"type": "gimme_all_tasks"},
    "type-not-a-string": {"type": 7},
    "operation-without-id": {"type": "$subscribe", "payload": {"query": "{ __typename }"}},
    "operation-with-a-number-id": {"type": "$subscribe", "id": 1, "payload": {"query": "{ a }"}},
    "operation-payload-not-an-object": {"type": "$subscribe", "id": "1", "payload": "{ a }"},
    "operation-query-not-a-string": {"type": "$subscribe", "id": "1", "payload": {"query": 5}},
}


@pytest.mark.parametrize("frame", BAD_FRAMES.keys())
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_malformed_frame_closes_4400(
    api: Deployment, guard: Guard, protocol: Protocol, frame: str
) -> None:
    raw = BAD_FRAMES[frame]
    async with socket(api, protocol) as sock:
        await sock.init_as(token_for(fresh_subject("frame")))
        if isinstance(raw, str | bytes):
            await sock.ws.send(raw)
        elif isinstance(raw, dict) and raw.get("type") == "$subscribe":
            await sock.send({**raw, "type": protocol.subscribe})
        else:
            await sock.send(raw)
        closed = await sock.closed()
    assert closed.code == 4400
    assert closed.before == []
    await guard.check(received(sock))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_oversize_frame_closes_1009(
    api: Deployment, guard: Guard, protocol: Protocol
) -> None:
    async with socket(api, protocol) as sock:
        await sock.init_as(token_for(fresh_subject("oversize")))
        # A createTask whose frame is over the limit: refused before it is parsed.
        await sock.subscribe("1", CREATE, {"input": "x" * MAX_FRAME_BYTES})
        closed = await sock.closed()
    assert closed.code == 1009
    assert closed.before == []
    await guard.check(received(sock))


# ------------------------------------------------------------------------- operations


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_duplicate_subscription_id_closes_4409(
    api: Deployment, guard: Guard, protocol: Protocol
) -> None:
    owner = fresh_subject("duplicate")
    task = await create_task(api, owner, "duplicate ids")
    await guard.arm()
    async with socket(api, protocol) as sock:
        await sock.init_as(token_for(owner))
        await sock.subscribe("same", WATCH, {"id": task["id"]})
        first = await sock.receive()
        assert first["type"] == protocol.data  # the first one runs (PENDING: it stays open)
        await sock.subscribe("same", WATCH, {"id": task["id"]})
        closed = await sock.closed()
    assert closed.code == 4409
    assert _data_messages(protocol, closed.before) == []
    await guard.check(received(sock))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_too_many_subscriptions_are_refused_and_the_connection_stays_usable(
    api: Deployment, guard: Guard, protocol: Protocol
) -> None:
    owner = fresh_subject("many")
    tasks = [await create_task(api, owner, f"many {n}") for n in range(MAX_SUBSCRIPTIONS + 1)]
    await guard.arm()
    async with socket(api, protocol) as sock:
        await sock.init_as(token_for(owner))
        for n, task in enumerate(tasks[:MAX_SUBSCRIPTIONS]):
            await sock.subscribe(f"s{n}", WATCH, {"id": task["id"]})
        snapshots = [await sock.receive() for _ in range(MAX_SUBSCRIPTIONS)]
        assert sorted(m["id"] for m in snapshots) == [f"s{n}" for n in range(MAX_SUBSCRIPTIONS)]
        await sock.subscribe("extra", WATCH, {"id": tasks[-1]["id"]})
        refusal = await sock.receive()
        assert refusal["type"] == "error"
        assert refusal["id"] == "extra"
        errors = refusal["payload"]
        errors = errors if isinstance(errors, list) else [errors]
        assert [e["extensions"]["code"] for e in errors] == ["TOO_MANY_SUBSCRIPTIONS"]
        assert await sock.quiet(0.5) == []  # no data for the refused one, and still open
        # Ending one frees a place: the same request now runs on the same connection.
        await sock.complete("s0")
        if protocol is TRANSPORT:
            assert await sock.ping()
        await sock.subscribe("extra", WATCH, {"id": tasks[-1]["id"]})
        admitted = await sock.receive_for("extra")
    assert admitted["type"] == protocol.data
    assert admitted["id"] == "extra"
    assert admitted["payload"]["data"]["taskUpdated"]["id"] == tasks[-1]["id"]
    await guard.check(received(sock))


@pytest.mark.parametrize("credential", ["another-owner", "watch-token-of-another-task"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_another_owners_task_answers_as_a_missing_one(
    api: Deployment, rows: TaskRows, guard: Guard, protocol: Protocol, credential: str
) -> None:
    victim = fresh_subject("victim")
    secret = f"victim secret {fresh_subject()}"
    task = await create_task(api, victim, secret)
    if credential == "another-owner":
        token = token_for(fresh_subject("intruder"))
    else:  # the victim's own watch token, but for another of the victim's tasks
        token = (await create_task(api, victim, "the watched one"))["watchToken"]
    await guard.arm()
    before = await rows.get(task["id"])
    async with socket(api, protocol) as sock:
        await sock.init_as(token)
        await sock.subscribe("theirs", WATCH, {"id": task["id"]})
        theirs = await sock.answer_of("theirs")
        await sock.subscribe("missing", WATCH, {"id": UNKNOWN_ID})
        missing = await sock.answer_of("missing")
        assert await sock.quiet(0.5) == []
    # One answer with NOT_FOUND and no data, then the end of the operation.
    [answer, end] = theirs
    assert answer["type"] == protocol.data
    assert answer["payload"]["data"] is None
    assert [e["extensions"]["code"] for e in answer["payload"]["errors"]] == ["NOT_FOUND"]
    assert end == {"type": "complete", "id": "theirs"}
    # Identical apart from the operation id: nothing tells the two apart.
    assert [{**m, "id": "-"} for m in theirs] == [{**m, "id": "-"} for m in missing]
    assert await rows.get(task["id"]) == before
    await guard.check(received(sock), secret, victim)
    # The owner still follows the task: nothing was lost.
    async with socket(api, protocol) as owner:
        await owner.init_as(token_for(victim))
        await owner.subscribe("mine", WATCH, {"id": task["id"]})
        mine = await owner.receive()
    assert mine["payload"]["data"]["taskUpdated"]["inputData"] == secret


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_token_expiring_mid_connection_closes_4403(
    api: Deployment, guard: Guard, protocol: Protocol
) -> None:
    owner = fresh_subject("expiring")
    task = await create_task(api, owner, "expiring")
    await guard.arm()
    token = token_for(owner, ttl_seconds=3)
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    async with socket(api, protocol) as sock:
        await sock.init_as(token)
        await sock.subscribe("1", WATCH, {"id": task["id"]})
        snapshot = await sock.receive()
        assert snapshot["type"] == protocol.data
        closed = await sock.closed(timeout=10)
        closed_at = time.time()
    assert closed.code == 4403
    assert closed.reason == "Token expired"
    # Not before the token's exp (no leeway configured), and soon after it.
    assert expires_at - 0.5 <= closed_at <= expires_at + 3
    # Nothing more was sent for the subscription after the snapshot.
    assert _data_messages(protocol, closed.before) == []
    await guard.check(received(sock))
