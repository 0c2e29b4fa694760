"""`taskwire submit "text" [--watch]`: create a task from the terminal and follow it live.

Exit codes: 0 submitted, or COMPLETED with --watch; 1 the task FAILED or was CANCELLED;
2 usage; 3 the API refused or could not be reached; 4 --timeout passed first; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

from taskwire.client import ApiError, ConnectionLost, GraphQLApi, Task

DEFAULT_URL = "http://127.0.0.1:8000/graphql"
EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_API, EXIT_TIMEOUT = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
# Without a successful frame for this long, the API is down, not blipping: stop reconnecting.
GIVE_UP_SECONDS = 60.0
TICK_SECONDS = 0.1
EPILOG = (
    "exit status: 0 submitted (or COMPLETED with --watch), 1 the task FAILED or was CANCELLED, "
    "2 usage error, 3 the API refused the request or could not be reached, "
    "4 --timeout passed before the task finished, 130 interrupted"
)


class Api(Protocol):
    """What submit needs of the API (taskwire.client.GraphQLApi; a fake in unit tests)."""

    def create(self, text: str, idempotency_key: str | None = None) -> Task: ...

    def updates(self, task_id: str) -> AsyncIterator[Task]: ...


@dataclass
class Streams:
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("text", help="the text to process; - reads it from stdin")
    parser.add_argument("--watch", action="store_true", help="follow the task until it finishes")
    parser.add_argument(
        "--url", help=f"the API's GraphQL endpoint (default $TASKWIRE_URL, else {DEFAULT_URL})"
    )
    parser.add_argument("--token", help="bearer token (default $TASKWIRE_TOKEN)")
    parser.add_argument(
        "--idempotency-key", help="makes a retried submit return the task it first created"
    )
    parser.add_argument(
        "--timeout", type=float, help="with --watch: give up after this many seconds (exit 4)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the task as JSON on stdout, progress on stderr"
    )


def run(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] | None = None,
    streams: Streams | None = None,
    connect: Callable[[str, str | None], Api] = GraphQLApi,
) -> int:
    env = os.environ if env is None else env
    io = streams or Streams()
    url = args.url or env.get("TASKWIRE_URL") or DEFAULT_URL
    token = args.token if args.token is not None else env.get("TASKWIRE_TOKEN")
    problem = _usage_problem(args, url, token)
    if problem:
        print(f"taskwire submit: {problem}", file=io.stderr)
        return EXIT_USAGE
    api = connect(url, token or None)
    report = Report(io, as_json=args.json)
    task: Task | None = None
    try:
        text = _text(args.text, io.stdin)
        task = api.create(text, args.idempotency_key)
        if not args.watch:
            return report.submitted(task)
        progress = Progress(io.stderr if args.json else io.stdout, notes=io.stderr)
        final, in_time = asyncio.run(watch(api, task, progress, timeout=args.timeout))
        return report.finished(final, in_time, args.timeout)
    except ApiError as error:
        return report.refused(error)
    except KeyboardInterrupt:
        return report.interrupted(task)


def _usage_problem(args: argparse.Namespace, url: str, token: str | None) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"--url {url!r}: give the API's http(s)://host:port/graphql address"
    if token is not None and (not token.strip() or any(c.isspace() for c in token.strip())):
        return "the token is empty or contains whitespace"
    if args.timeout is not None and not args.timeout > 0:
        return "--timeout must be a positive number of seconds"
    if args.timeout is not None and not args.watch:
        return "--timeout only applies to --watch"
    return None


def _text(argument: str, stdin: TextIO) -> str:
    if argument != "-":
        return argument
    # `echo text | taskwire submit -` ends with the newline echo adds; it is not part of the text.
    text = stdin.read()
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


@dataclass
class Backoff:
    """Exponential delays with jitter between reconnects, so that many watchers that lost the
    same API do not come back in one wave."""

    base: float = 0.25
    cap: float = 8.0
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        delay: float = min(self.cap, self.base * 2.0 ** (self.failures - 1))
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


async def watch(
    api: Api,
    task: Task,
    progress: Progress,
    *,
    timeout: float | None = None,
    backoff: Backoff | None = None,
    give_up_seconds: float = GIVE_UP_SECONDS,
) -> tuple[Task, bool]:
    """Follow `task` until a final state: (the latest state, whether it is final in time).

    Each subscription starts with the current state, so after a reconnect nothing is missed;
    versions never go backwards here even when the server repeats one."""
    backoff = backoff or Backoff()
    latest = task
    progress.show(latest)
    ticker = asyncio.create_task(_tick(progress)) if progress.live else None
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            contact = loop.time()
            while latest["status"] not in TERMINAL:
                try:
                    async for update in api.updates(str(task["id"])):
                        contact = loop.time()
                        backoff.reset()
                        if update["version"] >= latest["version"]:
                            latest = update
                            progress.show(latest)
                    if latest["status"] not in TERMINAL:
                        raise ConnectionLost("the subscription ended before a final state")
                except ConnectionLost as lost:
                    if loop.time() - contact > give_up_seconds:
                        message = f"no answer from the API for {give_up_seconds:.0f} s: {lost}"
                        raise ApiError(message) from None
                    delay = backoff.next_delay()
                    progress.note(f"{lost}; reconnecting in {delay:.1f} s")
                    await asyncio.sleep(delay)
    except TimeoutError:
        return latest, False
    finally:
        if ticker is not None:
            ticker.cancel()
        progress.finish()
    return latest, True


async def _tick(progress: Progress) -> None:
    while True:
        await asyncio.sleep(TICK_SECONDS)
        progress.redraw()


class Progress:
    """Status changes with the attempt and the time since submit: on a terminal one line
    redrawn in place (the elapsed time ticking), elsewhere one plain line per change."""

    def __init__(
        self,
        stream: TextIO,
        *,
        notes: TextIO,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.notes = notes
        self.live = _is_terminal(stream) if live is None else live
        self.clock = clock
        self.started = clock()
        self.shown: tuple[str, int] | None = None
        self.line = ""

    def show(self, task: Task) -> None:
        if self.shown is None:
            self._write_line(f"task {task['id']}")
        state = (str(task["status"]), int(task["attempts"]))
        if state == self.shown:
            return
        self.shown = state
        if self.live:
            self.redraw()
        else:
            self._write_line(self.render())

    def render(self) -> str:
        if self.shown is None:
            return ""
        status, attempts = self.shown
        elapsed = self.clock() - self.started
        if status == "PENDING" and attempts:
            detail = f"retry after attempt {attempts}"
        elif attempts:
            detail = f"attempt {attempts}"
        else:
            detail = ""
        return f"[{elapsed:6.1f}s] {status:<10} {detail}".rstrip()

    def redraw(self) -> None:
        if self.live and self.shown is not None:
            self.line = self.render()
            self.stream.write(f"\r\x1b[K{self.line}")
            self.stream.flush()

    def note(self, text: str) -> None:
        if self.live and self.line:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        print(f"taskwire submit: {text}", file=self.notes, flush=True)
        self.redraw()

    def finish(self) -> None:
        if self.live and self.line:
            self.stream.write("\n")
            self.stream.flush()
            self.line = ""

    def _write_line(self, text: str) -> None:
        self.finish()
        print(text, file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class Report:
    """The outcome on stdout/stderr, and the exit code that goes with it."""

    def __init__(self, streams: Streams, *, as_json: bool) -> None:
        self.io = streams
        self.as_json = as_json

    def submitted(self, task: Task) -> int:
        if self.as_json:
            self._json(task)
        else:
            print(f"{task['id']} {task['status']}", file=self.io.stdout, flush=True)
        return EXIT_OK

    def finished(self, task: Task, in_time: bool, timeout: float | None = None) -> int:
        if self.as_json:
            self._json(task)
        status = task["status"]
        if not in_time:
            self._error(f"task {task['id']} is still {status} after --timeout {timeout or 0:g} s")
            return EXIT_TIMEOUT
        if status == "COMPLETED":
            if not self.as_json:
                print(task["result"], file=self.io.stdout, flush=True)
            return EXIT_OK
        reason = f": {task['error']}" if task.get("error") else ""
        self._error(f"task {task['id']} {status} after {task['attempts']} attempt(s){reason}")
        return EXIT_TASK_FAILED

    def refused(self, error: ApiError) -> int:
        if self.as_json:
            self._json(error.as_graphql())
        detail = f" [{error.code}]" if error.code else ""
        retry_after = error.extensions.get("retryAfter")
        if retry_after is not None:
            detail += f" (retry after {retry_after} s)"
        self._error(f"{error.message}{detail}")
        return EXIT_API

    def interrupted(self, task: Task | None) -> int:
        # The task is the server's now: say which one it was, so that it can be looked up.
        going_on = f"; task {task['id']} carries on without us" if task else ""
        self._error(f"interrupted{going_on}")
        return EXIT_INTERRUPTED

    def _json(self, document: Mapping[str, Any]) -> None:
        print(json.dumps(document, ensure_ascii=False), file=self.io.stdout, flush=True)

    def _error(self, text: str) -> None:
        print(f"taskwire submit: {text}", file=self.io.stderr, flush=True)
