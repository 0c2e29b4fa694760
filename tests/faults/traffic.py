"""The client side of a fault scenario: tasks submitted as a careful user would (retrying with
the same idempotency key while the service is unavailable), each followed by a live `gql`
subscriber from right after its creation, alternating the two websocket subprotocols."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from websockets.exceptions import WebSocketException

from tests.faults.deployment import FaultDeployment
from tests.faults.probes import TERMINAL
from tests.faults.schedule import FaultPlan
from tests.support.auth import bearer
from tests.support.client import SUBPROTOCOLS

CREATE = """
mutation($input: String!, $key: String) {
  createTask(input: {inputData: $input, idempotencyKey: $key}) { id status version inputData }
}
"""
WATCH = gql("subscription($id: ID!) { taskUpdated(id: $id) { id status version result error } }")
# How long a client keeps retrying one createTask while the service says it is unavailable.
CREATE_PATIENCE_SECONDS = 40.0
RETRY_PAUSE_SECONDS = 0.2
# A subscriber refused again and again backs off up to this (a long outage is not a storm).
RESUBSCRIBE_MAX_SECONDS = 1.0
# Codes (or transport failures) after which retrying the same request is what a client does.
RETRYABLE_CODES = frozenset({"SERVICE_UNAVAILABLE"})


@dataclass
class Session:
    """One subscription attempt: what it received and how it ended."""

    updates: list[dict[str, Any]] = field(default_factory=list)
    ending: str = "running"


@dataclass
class Follower:
    """A live subscriber of one task; resubscribes (as a client would) when its subscription
    fails, and records every session so the checker can tell a refused subscription from one
    that was dropped after it had started."""

    task_id: str
    subprotocol: str
    ws_url: str
    sessions: list[Session] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def updates(self) -> list[dict[str, Any]]:
        return [update for session in self.sessions for update in session.updates]

    @property
    def terminal(self) -> dict[str, Any] | None:
        final = [u for u in self.updates if u["status"] in TERMINAL]
        return final[-1] if final else None

    @property
    def dropped(self) -> int:
        """Sessions that had started streaming and failed before the terminal state."""
        return sum(
            1
            for s in self.sessions
            if s.updates and s.updates[-1]["status"] not in TERMINAL and s.ending != "running"
        )

    @property
    def refused(self) -> int:
        """Sessions that failed before their first update (e.g. SERVICE_UNAVAILABLE)."""
        return sum(1 for s in self.sessions if not s.updates and s.ending != "running")

    def backwards(self) -> list[tuple[int, int]]:
        """(previous, next) version pairs where time ran backwards: within a session each
        update is newer than the last; a new session's snapshot may repeat the last one."""
        found: list[tuple[int, int]] = []
        last = 0
        for session in self.sessions:
            for position, update in enumerate(session.updates):
                version = int(update["version"])
                if version < last or (version == last and position > 0):
                    found.append((last, version))
                last = max(last, version)
        return found

    async def run(self) -> None:
        pause = RETRY_PAUSE_SECONDS
        while self.terminal is None:
            session = Session()
            self.sessions.append(session)
            try:
                await self.subscribe_once(session)
                session.ending = "completed"
            except TransportQueryError as exc:
                code = _error_code(exc.errors)
                session.ending = f"error {code}"
                if code not in RETRYABLE_CODES:
                    self.unexpected.append(f"{self.task_id}: subscription error {exc.errors}")
            except (TransportError, WebSocketException, OSError, TimeoutError) as exc:
                session.ending = f"closed {type(exc).__name__}"
            if self.terminal is None:
                await asyncio.sleep(pause)
                pause = min(pause * 2, RESUBSCRIBE_MAX_SECONDS)

    async def subscribe_once(self, session: Session) -> None:
        transport = WebsocketsTransport(
            url=self.ws_url,
            subprotocols=[self.subprotocol],
            connect_timeout=5,
            ack_timeout=5,
            init_payload=bearer(),
        )
        async with Client(transport=transport) as client:
            request = GraphQLRequest(WATCH, variable_values={"id": self.task_id})
            async for result in client.subscribe(request):
                session.updates.append(result["taskUpdated"])


@dataclass
class Accepted:
    """A createTask that returned: the promise the checker holds the service to."""

    index: int
    key: str
    input_data: str
    task_id: str
    follower: Follower | None


class Traffic:
    """Submits tasks and follows them; every accepted task is remembered."""

    def __init__(self, deployment: FaultDeployment, plan: FaultPlan, *, follow: bool = True):
        self.deployment = deployment
        self.plan = plan
        self.follow = follow
        self.accepted: list[Accepted] = []
        self.errors: list[str] = []
        self.retries: Counter[str] = Counter()
        self.followers: list[Follower] = []
        self._following: list[asyncio.Task[None]] = []
        self._http = httpx.AsyncClient(timeout=10.0, headers=bearer())
        self._count = 0

    def text(self, index: int) -> str:
        return f"{self.plan.scenario} #{index} {self.plan.token()} ✓"

    async def submit(
        self,
        count: int,
        *,
        spacing: float = 0.0,
        text: Callable[[int], str] | None = None,
    ) -> list[Accepted]:
        """`count` tasks one after another, `spacing` seconds apart (a steady trickle that a
        fault lands in the middle of)."""
        done: list[Accepted] = []
        for _ in range(count):
            index = self._next_index()
            accepted = await self.create(index, (text or self.text)(index))
            if accepted is not None:
                done.append(accepted)
            if spacing:
                await asyncio.sleep(spacing)
        return done

    async def submit_together(
        self, count: int, *, text: Callable[[int], str] | None = None, via: str | None = None
    ) -> list[Accepted]:
        """`count` concurrent createTask calls (to the API at `via`, default the main one)."""
        indexes = [self._next_index() for _ in range(count)]
        results = await asyncio.gather(
            *(self.create(index, (text or self.text)(index), via=via) for index in indexes)
        )
        return [accepted for accepted in results if accepted is not None]

    async def wait_accepted(self, count: int, timeout: float = 30.0) -> None:
        """Until at least `count` tasks were accepted (a moment mid-batch)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.accepted)} of {count} tasks accepted")
            await asyncio.sleep(0.05)

    def live_followers(self) -> int:
        """Subscribers that have not seen their terminal state yet."""
        return sum(1 for follower in self.followers if follower.terminal is None)

    def _next_index(self) -> int:
        self._count += 1
        return self._count

    async def create(self, index: int, input_data: str, via: str | None = None) -> Accepted | None:
        """createTask, retried with the same idempotency key while it is unavailable (a
        transport failure included: the API may have died after its commit). `via` is the
        GraphQL URL of another API process; subscribers always use the main one."""
        key = f"{self.plan.scenario}-{self.deployment.tag}-{index}"
        variables = {"input": input_data, "key": key}
        deadline = time.monotonic() + CREATE_PATIENCE_SECONDS
        while True:
            reason = await self._attempt_create(via or self.deployment.http_url, variables)
            if isinstance(reason, dict):
                task_id = str(reason["id"])
                follower = self._start_follower(task_id, index) if self.follow else None
                accepted = Accepted(index, key, input_data, task_id, follower)
                self.accepted.append(accepted)
                return accepted
            if reason.startswith("fatal"):
                self.errors.append(f"task #{index}: {reason}")
                return None
            self.retries[reason] += 1
            if time.monotonic() > deadline:
                self.errors.append(f"task #{index}: gave up after {reason}")
                return None
            await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def _attempt_create(self, url: str, variables: dict[str, str]) -> dict[str, Any] | str:
        try:
            response = await self._http.post(url, json={"query": CREATE, "variables": variables})
        except httpx.TransportError as exc:
            return f"transport {type(exc).__name__}"
        if response.status_code >= 500:
            return f"fatal http {response.status_code}: {response.text[:200]}"
        body = response.json()
        if body.get("errors"):
            code = _error_code(body["errors"])
            if code in RETRYABLE_CODES:
                return code
            return f"fatal {code}: {body['errors']}"
        task: dict[str, Any] = body["data"]["createTask"]
        return task

    def _start_follower(self, task_id: str, index: int) -> Follower:
        subprotocol = SUBPROTOCOLS[index % len(SUBPROTOCOLS)]
        follower = Follower(task_id, subprotocol, self.deployment.ws_url)
        self.followers.append(follower)
        self._following.append(asyncio.create_task(follower.run()))
        return follower

    async def wait_for_followers(self, timeout: float) -> None:
        """Give live subscribers `timeout` seconds to see their terminal state, then stop them."""
        pending = [job for job in self._following if not job.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        await self.close_followers()

    async def close_followers(self) -> None:
        for job in self._following:
            job.cancel()
        await asyncio.gather(*self._following, return_exceptions=True)

    async def close(self) -> None:
        await self.close_followers()
        await self._http.aclose()


async def follow_late(ws_url: str, task_id: str, subprotocol: str) -> list[dict[str, Any]]:
    """A subscriber arriving after the fact: everything it receives until completion."""
    follower = Follower(task_id, subprotocol, ws_url)
    session = Session()
    follower.sessions.append(session)
    async with asyncio.timeout(10):
        await follower.subscribe_once(session)
    return session.updates


def _error_code(errors: Any) -> str:
    try:
        return str(errors[0]["extensions"]["code"])
    except (KeyError, IndexError, TypeError):
        return "NO_CODE"
