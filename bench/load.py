"""Load generators run in processes of their own, so that their CPU never counts as the
server's and their event loop never stalls the code under test.

The parent side is run_load(); a load module's side is serve_load() (stdin params -> JSON on
stdout) and closed_loop() (N clients, each issuing its next request when the last one
answered, for a fixed time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from bench.model import Measurement

# How much of a failed child's stderr the error carries.
STDERR_TAIL_LINES = 30


async def run_load(module: str, params: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run `python -m module` with `params` as JSON on stdin and return the JSON object that
    is the last line of its stdout. RuntimeError (with the child's stderr tail) when it exits
    non-zero, prints no JSON object, or runs past `timeout` (it is killed)."""
    # The child's streams are temporary files, not pipes: a result line runs to megabytes of
    # latency samples, and through asyncio pipes it was once cut at 128 KiB (seen on 3.11).
    with (
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        stdin.write(json.dumps(dict(params)).encode())
        stdin.seek(0)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, stdin=stdin, stdout=stdout, stderr=stderr
        )
        try:
            async with asyncio.timeout(timeout):
                await child.wait()
        except TimeoutError:
            child.kill()
            await child.wait()
            raise RuntimeError(
                f"load {module} ran past {timeout:g} s and was killed:\n{_tail(stderr)}"
            ) from None
        finally:
            if child.returncode is None:  # cancelled: never leave a load generator behind
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
        if child.returncode != 0:
            raise RuntimeError(f"load {module} exited {child.returncode}:\n{_tail(stderr)}")
        stdout.seek(0)
        output = stdout.read()
        lines = output.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            result = None
        if not isinstance(result, dict):
            last = lines[-1][:300] if lines else "(no output)"
            raise RuntimeError(
                f"load {module} printed no JSON object ({len(output)} bytes on stdout, last "
                f"line {last!r}):\n{_tail(stderr)}"
            )
        return result


def _tail(stderr: IO[bytes]) -> str:
    stderr.seek(0)
    text = stderr.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-STDERR_TAIL_LINES:])


LoadFunction = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def serve_load(load: LoadFunction) -> None:
    """A load module's main(): read the params, run `load` on uvloop when it is installed,
    add the process's own CPU time, and print the result as one JSON line."""
    params = json.loads(sys.stdin.read() or "{}")
    if not isinstance(params, dict):
        raise SystemExit("load params must be a JSON object")
    result = _event_loop_runner()(load(params))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.setdefault("load_cpu_seconds", usage.ru_utime + usage.ru_stime)
    print(json.dumps(result), flush=True)


def _event_loop_runner() -> Callable[[Awaitable[dict[str, Any]]], dict[str, Any]]:
    try:
        import uvloop
    except ImportError:
        return _run_asyncio

    def run_uvloop(main: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        return uvloop.run(_wrapped(main))

    return run_uvloop


def _run_asyncio(main: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return asyncio.run(_wrapped(main))


async def _wrapped(main: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return await main


@dataclass(slots=True)
class LoopResult:
    """What closed_loop() counted inside its measuring window."""

    operations: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def throughput(self) -> float:
        return self.operations / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "errors": self.errors,
            "seconds": self.seconds,
            "throughput": self.throughput,
            "latencies_ms": self.latencies_ms,
            "first_error": self.first_error,
        }


# One operation of one client: its index and how many operations it has done so far.
Operation = Callable[[int, int], Awaitable[None]]


async def closed_loop(
    operation: Operation, *, concurrency: int, seconds: float, warmup: float = 1.0
) -> LoopResult:
    """`concurrency` clients each run `operation` back to back: first for `warmup` seconds
    (connections open, caches fill; not counted), then for `seconds`. An operation counts when
    it finishes inside that window (so the rate is the steady one, without a ramp at either
    end); one that raises counts as an error, not as throughput, and its client goes on."""
    result = LoopResult(seconds=seconds)
    window_start = time.perf_counter() + warmup
    window_end = window_start + seconds

    async def client(index: int) -> None:
        done = 0
        while (began := time.perf_counter()) < window_end:
            try:
                await operation(index, done)
            except Exception as exc:
                if window_start <= time.perf_counter() <= window_end:
                    result.errors += 1
                    result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                continue
            finally:
                done += 1
            ended = time.perf_counter()
            if window_start <= ended <= window_end:
                result.operations += 1
                result.latencies_ms.append((ended - began) * 1000)

    await asyncio.gather(*(client(index) for index in range(concurrency)))
    return result


async def fixed_count(operation: Operation, *, concurrency: int, count: int) -> LoopResult:
    """`concurrency` clients share `count` operations (pre-loading work, say); the result's
    seconds are the time they took. Failed operations are counted and not retried."""
    result = LoopResult()
    issued = 0
    began = time.perf_counter()

    async def client(index: int) -> None:
        nonlocal issued
        done = 0
        while issued < count:
            issued += 1
            started = time.perf_counter()
            try:
                await operation(index, done)
            except Exception as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                continue
            finally:
                done += 1
            result.operations += 1
            result.latencies_ms.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(client(index) for index in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


def measurement(
    name: str,
    result: Mapping[str, Any],
    *,
    peak_rss_kib: float | None = None,
    extra: Mapping[str, float] | None = None,
) -> Measurement:
    """A Measurement from a load module's LoopResult JSON; RuntimeError when not one operation
    succeeded (a number from nothing but errors would be a lie)."""
    if not result.get("operations"):
        raise RuntimeError(f"{name}: no operation succeeded ({result.get('first_error')})")
    errors = int(result.get("errors", 0))
    if errors:
        print(
            f"bench: {name}: {errors} failed operations, first: {result.get('first_error')}",
            file=sys.stderr,
        )
    figures = {"errors": float(errors), **(extra or {})}
    return Measurement(
        scenario=name,
        throughput=float(result["throughput"]),
        latencies_ms=tuple(float(sample) for sample in result["latencies_ms"]),
        peak_rss_kib=peak_rss_kib,
        extra=figures,
    )
