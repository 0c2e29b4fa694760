"""The GraphQL client `taskwire submit` talks to the API with: a POST over HTTP(S) and one
`taskUpdated` subscription over `graphql-transport-ws`.

Standard library HTTP (a blocking call on the main thread, which Ctrl-C interrupts at once) and
the `websockets` package that uvicorn[standard] brings along; no client library of its own.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

Task = dict[str, Any]

TASK_FIELDS = (
    "id status inputData result error attempts version createdAt updatedAt startedAt finishedAt"
)
CREATE = (
    f"mutation Submit($input: CreateTaskInput!) {{ createTask(input: $input) {{ {TASK_FIELDS} }} }}"
)
WATCH = f"subscription Watch($id: ID!) {{ taskUpdated(id: $id) {{ {TASK_FIELDS} }} }}"
SUBPROTOCOL = "graphql-transport-ws"
HTTP_TIMEOUT_SECONDS = 30.0
WS_OPEN_TIMEOUT_SECONDS = 10.0
# The server's close codes (graphql_api.websocket) that say "this request is wrong", where
# connecting again would get the same answer. 1008 and 1009 are the RFC's policy and size codes.
REFUSING_CLOSE_CODES = {1002, 1003, 1007, 1008, 1009, 4400, 4401, 4403, 4409, 4429}
# 4403 is how the server refuses a missing, bad or expired token on a websocket.
CLOSE_CODE_NAMES = {4403: "UNAUTHENTICATED", 4429: "TOO_MANY_REQUESTS"}


class ApiError(Exception):
    """The API refused the request, or could not be reached: connecting again will not help."""

    def __init__(self, message: str, code: str | None = None, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.extensions = {**extensions, **({"code": code} if code else {})}

    @classmethod
    def from_errors(cls, errors: object) -> ApiError:
        """The first GraphQL error of a response (the others are usually about the same)."""
        first = errors[0] if isinstance(errors, list) and errors else {}
        if not isinstance(first, dict):
            first = {}
        message = str(first.get("message") or "the API answered with an error")
        extensions = first.get("extensions")
        extensions = dict(extensions) if isinstance(extensions, dict) else {}
        code = extensions.pop("code", None)
        return cls(message, str(code) if code is not None else None, **extensions)

    def as_graphql(self) -> dict[str, Any]:
        return {"errors": [{"message": self.message, "extensions": self.extensions}]}


class ConnectionLost(Exception):
    """The websocket dropped or could not be opened for a reason that may pass: reconnect."""


def websocket_url(http_url: str) -> str:
    parts = urlsplit(http_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit(parts._replace(scheme=scheme))


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class GraphQLApi:
    """The API at `url` (its /graphql endpoint), as the user holding `token`."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token

    def create(self, text: str, idempotency_key: str | None = None) -> Task:
        task_input: dict[str, Any] = {"inputData": text}
        if idempotency_key is not None:
            task_input["idempotencyKey"] = idempotency_key
        data = self.execute(CREATE, {"input": task_input})
        task = data.get("createTask")
        if not isinstance(task, dict):
            raise ApiError("the API answered createTask without a task")
        return task

    def execute(self, query: str, variables: Mapping[str, Any]) -> dict[str, Any]:
        """POST one operation; its `data`, or ApiError with the first GraphQL error."""
        body = json.dumps({"query": query, "variables": dict(variables)}).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/graphql-response+json, application/json",
            **auth_headers(self.token),
        }
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            opener = urllib.request.build_opener(_NoRedirects())
            with opener.open(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            # 401, 413, 429...: the body is still the GraphQL error shape, when the API sent it.
            status, raw = error.code, error.read()
            if _graphql_errors(raw) is None:
                raise ApiError(f"the API answered HTTP {status} {error.reason}") from None
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise ApiError(f"cannot reach the API at {self.url}: {reason}") from None
        errors = _graphql_errors(raw)
        if errors:
            raise ApiError.from_errors(errors)
        document = _json_object(raw)
        data = document.get("data") if document else None
        if status != 200 or not isinstance(data, dict):
            raise ApiError(f"the API answered HTTP {status} without GraphQL data")
        return data

    async def updates(self, task_id: str) -> AsyncIterator[Task]:
        """One `taskUpdated` subscription: the current state, then every change, until the
        server completes it. Raises ConnectionLost when the socket drops, ApiError on a refusal."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
        from websockets.typing import Subprotocol

        url = websocket_url(self.url)
        try:
            async with connect(
                url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                open_timeout=WS_OPEN_TIMEOUT_SECONDS,
                compression=None,
                # Tokens travel in connection_init; Python's default User-Agent is fine.
            ) as socket:
                await socket.send(json.dumps({"type": "connection_init", "payload": self._init()}))
                await _expect_ack(socket)
                subscribe = {"query": WATCH, "variables": {"id": task_id}}
                await socket.send(
                    json.dumps({"id": "1", "type": "subscribe", "payload": subscribe})
                )
                async for frame in socket:
                    message = _message(frame)
                    kind = message.get("type")
                    if kind == "ping":
                        await socket.send(json.dumps({"type": "pong"}))
                    elif kind == "next" and message.get("id") == "1":
                        yield _task_from(message.get("payload"))
                    elif kind == "error" and message.get("id") == "1":
                        raise ApiError.from_errors(message.get("payload"))
                    elif kind == "complete" and message.get("id") == "1":
                        return
                # A close with 1000 or 1001 (the server going away) ends the loop quietly.
                raise _closed_error(socket.close_code, socket.close_reason)
        except ConnectionClosed as closed:
            close = closed.rcvd
            raise _closed_error(
                close.code if close else None, close.reason if close else None
            ) from None
        except InvalidStatus as refused:
            status = refused.response.status_code
            if status >= 500:
                raise ConnectionLost(f"the websocket handshake got HTTP {status}") from None
            raise ApiError(f"the API refused the websocket with HTTP {status}") from None
        except (OSError, TimeoutError, WebSocketException) as error:
            raise ConnectionLost(f"{type(error).__name__}: {error}") from None

    def _init(self) -> dict[str, str]:
        return auth_headers(self.token)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect as a GET without the body but with the Authorization
    header, to wherever it points: answer with the redirect as an error instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


async def _expect_ack(socket: Any) -> None:
    while True:
        message = _message(await socket.recv())
        if message.get("type") == "connection_ack":
            return
        if message.get("type") == "ping":
            await socket.send(json.dumps({"type": "pong"}))


def _closed_error(code: int | None, reason: str | None) -> Exception:
    if code is not None and code in REFUSING_CLOSE_CODES:
        return ApiError(
            f"the API closed the websocket: {reason or 'closed'} ({code})",
            CLOSE_CODE_NAMES.get(code),
        )
    return ConnectionLost(f"the websocket closed ({code or 'no close frame'})")


def _message(frame: str | bytes) -> dict[str, Any]:
    message = _json_object(frame)
    if message is None:
        raise ApiError("the API sent a websocket message that is not a JSON object")
    return message


def _task_from(payload: object) -> Task:
    if not isinstance(payload, dict):
        raise ApiError("the API sent a subscription result without a payload")
    if payload.get("errors"):
        raise ApiError.from_errors(payload["errors"])
    data = payload.get("data")
    task = data.get("taskUpdated") if isinstance(data, dict) else None
    if not isinstance(task, dict):
        raise ApiError("the API sent a subscription result without a task")
    return task


def _json_object(raw: str | bytes) -> dict[str, Any] | None:
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _graphql_errors(raw: bytes) -> list[Any] | None:
    document = _json_object(raw)
    errors = document.get("errors") if document else None
    return errors if isinstance(errors, list) and errors else None
