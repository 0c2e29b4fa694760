"""Background: work a request does not wait for is kept alive, logged when it fails, and waited
for at shutdown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from taskwire.background import Background
from taskwire.errors import ServiceUnavailable


async def test_spawned_work_runs_to_the_end_and_is_forgotten() -> None:
    background = Background()
    done = asyncio.Event()

    async def work() -> None:
        await asyncio.sleep(0)
        done.set()

    background.spawn(work(), what="work")
    assert len(background) == 1
    await asyncio.wait_for(done.wait(), timeout=5)
    await background.aclose()
    assert len(background) == 0


async def test_a_failure_is_logged_an_outage_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    background = Background()

    async def outage() -> None:
        raise ServiceUnavailable("The database is unavailable.")

    async def bug() -> None:
        raise RuntimeError("boom")

    background.spawn(outage(), what="deferring task 1")
    background.spawn(bug(), what="deferring task 2")
    await background.aclose()

    records = {(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records}
    assert (logging.WARNING, "deferring task 1 failed") in records
    assert (logging.ERROR, "deferring task 2 failed") in records


async def test_close_waits_for_running_work_then_cancels_what_overruns() -> None:
    background = Background()
    finished = asyncio.Event()
    cancelled = asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0.01)
        finished.set()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    background.spawn(quick(), what="quick")
    background.spawn(stuck(), what="stuck")
    await background.aclose(timeout=0.2)

    assert finished.is_set()
    assert cancelled.is_set()
    assert len(background) == 0


async def test_settle_waits_for_work_that_running_work_spawns() -> None:
    background = Background()
    done: list[str] = []

    async def second() -> None:
        await asyncio.sleep(0.01)
        done.append("second")

    async def first() -> None:
        await asyncio.sleep(0.01)
        background.spawn(second(), what="second")
        done.append("first")

    background.spawn(first(), what="first")

    assert await background.settle(timeout=5) == set()
    assert done == ["first", "second"]


async def test_settle_returns_what_still_runs_without_cancelling_it() -> None:
    background = Background()
    release = asyncio.Event()

    async def blocked() -> None:
        await release.wait()

    background.spawn(blocked(), what="blocked")

    (still,) = await background.settle(timeout=0.05)
    assert not still.cancelled()
    release.set()
    assert await background.settle(timeout=5) == set()
