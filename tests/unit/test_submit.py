"""`taskwire submit`: arguments, output, exit codes and reconnects against a fake API, and the
GraphQL client against scripted in-process HTTP and websocket servers."""

from __future__ import annotations

import argparse
import asyncio
import http.server
import io
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ClassVar

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from taskwire.cli import _parser, main
from taskwire.client import ApiError, ConnectionLost, GraphQLApi, Task
from taskwire.submit import (
    EXIT_API,
    EXIT_OK,
    EXIT_TASK_FAILED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Backoff,
    Progress,
    Streams,
    run,
    watch,
)
from tests.support.processes import free_port

TASK_ID = "0b7c9f4e-2d3a-4c61-9d0e-5f1a2b3c4d5e"
HANG = "hang"  # a session that never sends anything (for --timeout)


def task(status: str = "PENDING", version: int = 1, attempts: int = 0, **extra: Any) -> Task:
    return {"id": TASK_ID, "status": status, "version": version, "attempts": attempts, **extra}


PROCESSING = task("PROCESSING", 2, 1)
COMPLETED = task("COMPLETED", 3, 1, result="desserts")
Session = list[Task | Exception | str]


class FakeApi:
    """createTask answers `created` (or raises it); each subscription plays the next session."""

    def __init__(self, created: Task | ApiError, *sessions: Session) -> None:
        self.created = created
        self.sessions = list(sessions)
        self.calls: list[tuple[str, str | None]] = []
        self.subscriptions = 0

    def create(self, text: str, idempotency_key: str | None = None) -> Task:
        self.calls.append((text, idempotency_key))
        if isinstance(self.created, ApiError):
            raise self.created
        return self.created

    async def updates(self, task_id: str) -> AsyncIterator[Task]:
        assert task_id == TASK_ID
        self.subscriptions += 1
        for item in self.sessions.pop(0):
            if item == HANG:
                await asyncio.Event().wait()
            if isinstance(item, Exception):
                raise item
            assert isinstance(item, dict)
            yield item


def submit(
    argv: list[str], api: FakeApi, *, stdin: str = "", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    streams = Streams(io.StringIO(stdin), io.StringIO(), io.StringIO())
    args = _parser().parse_args(["submit", *argv])
    code = run(args, env=env or {}, streams=streams, connect=lambda url, token: api)
    assert isinstance(streams.stdout, io.StringIO)
    assert isinstance(streams.stderr, io.StringIO)
    return code, streams.stdout.getvalue(), streams.stderr.getvalue()


def test_without_watch_prints_the_id_and_status() -> None:
    api = FakeApi(task())
    code, out, err = submit(["stressed", "--idempotency-key", "k1"], api)
    assert (code, out, err) == (EXIT_OK, f"{TASK_ID} PENDING\n", "")
    assert api.calls == [("stressed", "k1")]
    assert api.subscriptions == 0


@pytest.mark.parametrize(
    ("stdin", "text"),
    [("stressed\n", "stressed"), ("two\nlines\r\n", "two\nlines"), ("kept  \n\n", "kept  \n")],
)
def test_a_dash_reads_the_text_from_stdin_without_its_last_newline(stdin: str, text: str) -> None:
    api = FakeApi(task())
    assert submit(["-"], api, stdin=stdin)[0] == EXIT_OK
    assert api.calls == [(text, None)]


def test_url_and_token_come_from_the_environment_unless_given() -> None:
    seen: list[tuple[str, str | None]] = []

    def connect(url: str, token: str | None) -> FakeApi:
        seen.append((url, token))
        return FakeApi(task())

    env = {"TASKWIRE_URL": "https://api.example/graphql", "TASKWIRE_TOKEN": "t0k"}
    for argv in (["x"], ["x", "--url", "http://h:1/graphql", "--token", "other"]):
        run(_parser().parse_args(["submit", *argv]), env=env, streams=_quiet(), connect=connect)
    run(_parser().parse_args(["submit", "x"]), env={}, streams=_quiet(), connect=connect)
    assert seen == [
        ("https://api.example/graphql", "t0k"),
        ("http://h:1/graphql", "other"),
        ("http://127.0.0.1:8000/graphql", None),
    ]


def _quiet() -> Streams:
    return Streams(io.StringIO(), io.StringIO(), io.StringIO())


def test_watch_prints_each_change_then_the_result() -> None:
    api = FakeApi(task(), [task(), PROCESSING, COMPLETED])
    code, out, err = submit(["stressed", "--watch"], api)
    assert (code, err) == (EXIT_OK, "")
    lines = out.splitlines()
    assert lines[0] == f"task {TASK_ID}"
    assert [line.split("] ")[1] for line in lines[1:4]] == [
        "PENDING",
        "PROCESSING attempt 1",
        "COMPLETED  attempt 1",
    ]
    assert lines[4:] == ["desserts"]
    assert "\r" not in out  # not a terminal: plain lines, no redrawing
    assert "\x1b" not in out


@pytest.mark.parametrize(
    ("final", "message"),
    [
        (
            task("FAILED", 7, 3, error="PoisonInput: no"),
            "FAILED after 3 attempt(s): PoisonInput: no",
        ),
        (task("CANCELLED", 2, 0), "CANCELLED after 0 attempt(s)"),
    ],
)
def test_a_failed_or_cancelled_task_exits_1_with_its_error(final: Task, message: str) -> None:
    code, out, err = submit(["x", "--watch"], FakeApi(task(), [final]))
    assert code == EXIT_TASK_FAILED
    assert err == f"taskwire submit: task {TASK_ID} {message}\n"
    assert final["status"] in out


def test_json_prints_only_the_final_task_on_stdout() -> None:
    code, out, err = submit(["x", "--watch", "--json"], FakeApi(task(), [PROCESSING, COMPLETED]))
    assert code == EXIT_OK
    assert json.loads(out) == COMPLETED
    assert "PROCESSING attempt 1" in err
    assert json.loads(submit(["x", "--json"], FakeApi(task()))[1]) == task()


@pytest.mark.parametrize("as_json", [False, True])
def test_a_refusal_exits_3_with_the_message_and_code(as_json: bool) -> None:
    refusal = ApiError("Too many tasks", "RATE_LIMITED", retryAfter=2)
    code, out, err = submit(["x", "--watch", *(["--json"] if as_json else [])], FakeApi(refusal))
    assert code == EXIT_API
    assert err == "taskwire submit: Too many tasks [RATE_LIMITED] (retry after 2 s)\n"
    if as_json:
        assert json.loads(out) == {
            "errors": [
                {
                    "message": "Too many tasks",
                    "extensions": {"retryAfter": 2, "code": "RATE_LIMITED"},
                }
            ]
        }
    else:
        assert out == ""


def test_an_error_on_the_subscription_exits_3() -> None:
    lost = ApiError("No task with that id.", "NOT_FOUND")
    code, _, err = submit(["x", "--watch"], FakeApi(task(), [lost]))
    assert code == EXIT_API
    assert err.endswith("No task with that id. [NOT_FOUND]\n")


async def test_a_dropped_socket_reconnects_and_nothing_goes_backwards() -> None:
    api = FakeApi(
        task(),
        [task(), ConnectionLost("the websocket closed (1006)")],
        [ConnectionLost("connection refused")],
        # The new subscription repeats an older state first: it must not be shown again.
        [task(), PROCESSING],  # ...and ends without a final state: subscribe again
        [PROCESSING, COMPLETED],
    )
    out, notes = io.StringIO(), io.StringIO()
    final, in_time = await watch(
        api, task(), Progress(out, notes=notes, live=False), backoff=Backoff(base=0.001)
    )
    assert (final, in_time) == (COMPLETED, True)
    assert api.subscriptions == 4
    statuses = [line.split("] ")[1].split()[0] for line in out.getvalue().splitlines()[1:]]
    assert statuses == ["PENDING", "PROCESSING", "COMPLETED"]
    assert notes.getvalue().count("reconnecting in") == 3
    assert "the websocket closed (1006); reconnecting in" in notes.getvalue()


async def test_watching_gives_up_when_the_api_stays_unreachable() -> None:
    refused: Session = [ConnectionLost("connection refused")]
    api = FakeApi(task(), *([refused] * 100))
    with pytest.raises(ApiError, match="no answer from the API for 0 s: connection refused"):
        await watch(
            api,
            task(),
            Progress(io.StringIO(), notes=io.StringIO(), live=False),
            backoff=Backoff(base=0.001),
            give_up_seconds=0.05,
        )
    assert 1 < api.subscriptions < 100


@pytest.mark.timeout(10)
def test_timeout_exits_4_with_the_latest_state() -> None:
    code, out, err = submit(
        ["x", "--watch", "--json", "--timeout", "0.2"], FakeApi(task(), [PROCESSING, HANG])
    )
    assert code == EXIT_TIMEOUT
    assert json.loads(out) == PROCESSING
    assert err.endswith(f"task {TASK_ID} is still PROCESSING after --timeout 0.2 s\n")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["x", "--url", "ftp://host/graphql"], {}, "--url 'ftp://host/graphql'"),
        (["x"], {"TASKWIRE_URL": "127.0.0.1:8000"}, "--url '127.0.0.1:8000'"),
        (["x", "--token", "two words"], {}, "the token is empty or contains whitespace"),
        (["x", "--watch", "--timeout", "0"], {}, "--timeout must be a positive number"),
        (["x", "--timeout", "5"], {}, "--timeout only applies to --watch"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], env: dict[str, str], message: str) -> None:
    api = FakeApi(task())
    code, out, err = submit(argv, api, env=env)
    assert (code, out) == (EXIT_USAGE, "")
    assert err.startswith(f"taskwire submit: {message}")
    assert api.calls == []


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["submit", "--watch"])
    assert exited.value.code == 2
    assert "the following arguments are required: text" in capsys.readouterr().err


def test_an_unreachable_api_exits_3_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TASKWIRE_TOKEN", raising=False)
    url = f"http://127.0.0.1:{free_port()}/graphql"
    assert main(["submit", "x", "--url", url]) == EXIT_API
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"taskwire submit: cannot reach the API at {url}: ")
    assert len(captured.err.splitlines()) == 1


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    now = [100.0]
    out = io.StringIO()
    progress = Progress(out, notes=io.StringIO(), live=True, clock=lambda: now[0])
    progress.show(task())
    now[0] = 101.5
    progress.redraw()  # the ticker: same state, the elapsed time moves
    progress.show(PROCESSING)
    progress.finish()
    assert out.getvalue() == (
        f"task {TASK_ID}\n"
        "\r\x1b[K[   0.0s] PENDING"
        "\r\x1b[K[   1.5s] PENDING"
        "\r\x1b[K[   1.5s] PROCESSING attempt 1\n"
    )


def test_a_retry_is_shown_as_pending_after_an_attempt() -> None:
    out = io.StringIO()
    progress = Progress(out, notes=io.StringIO(), live=False, clock=lambda: 0.0)
    progress.show(task("PENDING", 3, 1))
    assert out.getvalue().splitlines()[1] == "[   0.0s] PENDING    retry after attempt 1"


def test_the_subcommand_is_listed_with_its_exit_codes() -> None:
    parser = _parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    help_text = subparsers.choices["submit"].format_help()
    assert "- reads it from stdin" in help_text
    assert "3 the API refused" in " ".join(help_text.split())


# The client against a scripted graphql-transport-ws server.

Handler = Callable[[ServerConnection], Awaitable[None]]


async def _served(handler: Handler, token: str | None = "secret") -> list[Any]:
    """Run one subscription against `handler`; what it yielded, then the exception if any."""
    async with serve(
        handler, "127.0.0.1", 0, subprotocols=[Subprotocol("graphql-transport-ws")]
    ) as server:
        port = server.sockets[0].getsockname()[1]
        api = GraphQLApi(f"http://127.0.0.1:{port}/graphql", token)
        seen: list[Any] = []
        try:
            async with asyncio.timeout(5):
                async for update in api.updates(TASK_ID):
                    seen.append(update)
        except (ApiError, ConnectionLost) as error:
            seen.append(error)
        return seen


async def _handshake(socket: ServerConnection) -> dict[str, Any]:
    init = json.loads(await socket.recv())
    await socket.send(json.dumps({"type": "connection_ack"}))
    subscribe = json.loads(await socket.recv())
    return {"init": init, "subscribe": subscribe}


def _next(item: Task) -> str:
    return json.dumps({"id": "1", "type": "next", "payload": {"data": {"taskUpdated": item}}})


async def test_the_client_speaks_graphql_transport_ws() -> None:
    frames: dict[str, Any] = {}

    async def handler(socket: ServerConnection) -> None:
        frames["subprotocol"] = socket.subprotocol
        frames.update(await _handshake(socket))
        await socket.send(json.dumps({"type": "ping"}))
        frames["pong"] = json.loads(await socket.recv())
        await socket.send(_next(PROCESSING))
        await socket.send(_next(COMPLETED))
        await socket.send(json.dumps({"id": "1", "type": "complete"}))
        await socket.wait_closed()

    assert await _served(handler) == [PROCESSING, COMPLETED]
    assert frames["subprotocol"] == "graphql-transport-ws"
    assert frames["init"] == {
        "type": "connection_init",
        "payload": {"Authorization": "Bearer secret"},
    }
    assert frames["subscribe"]["type"] == "subscribe"
    assert frames["subscribe"]["payload"]["variables"] == {"id": TASK_ID}
    assert "taskUpdated(id: $id)" in frames["subscribe"]["payload"]["query"]
    assert frames["pong"] == {"type": "pong"}


async def test_a_refused_token_is_an_api_error_not_a_reconnect() -> None:
    async def handler(socket: ServerConnection) -> None:
        await socket.recv()
        await socket.close(4403, "Forbidden")

    [error] = await _served(handler, token=None)
    assert isinstance(error, ApiError)
    assert error.code == "UNAUTHENTICATED"
    assert error.message == "the API closed the websocket: Forbidden (4403)"


async def test_a_subscription_error_carries_the_graphql_code() -> None:
    async def handler(socket: ServerConnection) -> None:
        await _handshake(socket)
        error = {"message": "No task with that id.", "extensions": {"code": "NOT_FOUND"}}
        await socket.send(json.dumps({"id": "1", "type": "error", "payload": [error]}))
        await socket.wait_closed()

    [error] = await _served(handler)
    assert isinstance(error, ApiError)
    assert (error.message, error.code) == ("No task with that id.", "NOT_FOUND")


@pytest.mark.parametrize("code", [1001, 1011, 1012])
async def test_a_dropped_socket_is_a_lost_connection(code: int) -> None:
    async def handler(socket: ServerConnection) -> None:
        await _handshake(socket)
        await socket.send(_next(PROCESSING))
        await socket.close(code, "going")

    seen = await _served(handler)
    assert seen[0] == PROCESSING
    assert isinstance(seen[1], ConnectionLost)
    assert str(code) in str(seen[1])


async def test_nobody_listening_is_a_lost_connection() -> None:
    api = GraphQLApi(f"http://127.0.0.1:{free_port()}/graphql", None)
    with pytest.raises(ConnectionLost):
        async for _ in api.updates(TASK_ID):
            pass


# The HTTP half against a scripted server: what each answer becomes.

ANSWERS: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/ok": (200, {}, json.dumps({"data": {"createTask": PROCESSING}}).encode()),
    "/401": (
        401,
        {"WWW-Authenticate": "Bearer"},
        json.dumps(
            {"errors": [{"message": "Invalid token.", "extensions": {"code": "UNAUTHENTICATED"}}]}
        ).encode(),
    ),
    "/502": (502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>"),
    "/moved": (307, {"Location": "http://elsewhere.invalid/graphql"}, b""),
}


class _Scripted(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers.get("Authorization"), body))
        status, headers, payload = ANSWERS[self.path]
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        _Scripted.seen.clear()


def test_create_posts_the_mutation_with_the_token(http_api: str) -> None:
    created = GraphQLApi(f"{http_api}/ok", "secret").create("stressed", "key-1")
    assert created == PROCESSING
    [(_, authorization, body)] = _Scripted.seen
    assert authorization == "Bearer secret"
    assert body["variables"] == {"input": {"inputData": "stressed", "idempotencyKey": "key-1"}}
    assert "createTask(input: $input)" in body["query"]


@pytest.mark.parametrize(
    ("path", "message", "code"),
    [
        ("/401", "Invalid token.", "UNAUTHENTICATED"),
        ("/502", "the API answered HTTP 502 Bad Gateway", None),
        ("/moved", "the API answered HTTP 307 Temporary Redirect", None),
    ],
)
def test_http_refusals_are_api_errors(
    http_api: str, path: str, message: str, code: str | None
) -> None:
    with pytest.raises(ApiError) as refused:
        GraphQLApi(f"{http_api}{path}", "secret").create("x")
    assert (refused.value.message, refused.value.code) == (message, code)
    assert len(_Scripted.seen) == 1  # the redirect was not followed with the token
