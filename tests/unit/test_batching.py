"""Batcher: concurrent calls share batches, and each caller still gets only its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from taskwire.batching import Batcher
from taskwire.errors import ServiceUnavailable


class Recorder:
    """A batch function that doubles numbers and remembers every batch it was given."""

    def __init__(self, *, fail_on: int | None = None, unavailable: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.unavailable = unavailable
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.unavailable:
            raise ServiceUnavailable("down")
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [item * 2 for item in items]


async def test_concurrent_calls_share_a_batch_and_get_their_own_results() -> None:
    run = Recorder()
    batcher = Batcher(run)

    results = await asyncio.gather(*(batcher.submit(n) for n in range(100)))

    assert results == [n * 2 for n in range(100)]
    assert run.batches == [list(range(100))]


async def test_a_lone_call_does_not_wait_for_company() -> None:
    run = Recorder()
    batcher = Batcher(run)

    assert await asyncio.wait_for(batcher.submit(21), timeout=5) == 42
    assert run.batches == [[21]]


async def test_calls_arriving_during_a_batch_form_the_next_one() -> None:
    run = Recorder()
    run.release.clear()
    batcher = Batcher(run, max_in_flight=1)
    first = asyncio.ensure_future(batcher.submit(1))
    await _until(lambda: len(run.batches) == 1)
    later = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)  # a turn of the loop: nothing may leave while the first is out

    assert run.batches == [[1]]
    run.release.set()
    assert await asyncio.gather(first, *later) == [2, 4, 6, 8]
    assert run.batches == [[1], [2, 3, 4]]


async def test_batches_stop_at_the_maximum_size() -> None:
    run = Recorder()
    batcher = Batcher(run, max_size=3)

    await asyncio.gather(*(batcher.submit(n) for n in range(7)))

    assert [len(batch) for batch in run.batches] == [3, 3, 1]


async def test_one_key_never_appears_twice_in_a_batch() -> None:
    run = Recorder()
    batcher: Batcher[int, int] = Batcher(run, key=lambda item: item % 10)

    results = await asyncio.gather(*(batcher.submit(n) for n in (1, 11, 2, 21, 3)))

    assert results == [2, 22, 4, 42, 6]
    assert run.batches == [[1, 2, 3], [11], [21]]


async def test_a_bad_item_fails_only_its_own_caller() -> None:
    run = Recorder(fail_on=3)
    batcher = Batcher(run)

    outcomes = await asyncio.gather(*(batcher.submit(n) for n in range(5)), return_exceptions=True)

    assert outcomes[:3] == [0, 2, 4]
    assert outcomes[4] == 8
    assert isinstance(outcomes[3], ValueError)
    assert run.batches[0] == [0, 1, 2, 3, 4]  # then each on its own
    assert sorted(run.batches[1:]) == [[n] for n in range(5)]


async def test_an_outage_fails_every_caller_with_its_own_error() -> None:
    run = Recorder(unavailable=True)
    batcher = Batcher(run)

    outcomes = await asyncio.gather(*(batcher.submit(n) for n in range(3)), return_exceptions=True)

    assert all(isinstance(outcome, ServiceUnavailable) for outcome in outcomes)
    assert len({id(outcome) for outcome in outcomes}) == 3
    assert run.batches == [[0, 1, 2]]  # not retried item by item: the outage is not theirs


async def test_a_cancelled_caller_leaves_the_others_alone() -> None:
    run = Recorder()
    run.release.clear()
    batcher = Batcher(run, max_in_flight=1)
    blocker = asyncio.ensure_future(batcher.submit(0))
    await _until(lambda: len(run.batches) == 1)
    doomed = asyncio.ensure_future(batcher.submit(1))
    kept = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    doomed.cancel()
    run.release.set()

    assert list(await asyncio.gather(blocker, kept)) == [0, 4]
    assert doomed.cancelled()
    assert run.batches == [[0], [2]]


async def test_a_lingering_batcher_gathers_calls_that_trickle_in() -> None:
    run = Recorder()
    batcher = Batcher(run, linger_seconds=0.05)

    async def later(item: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return await batcher.submit(item)

    results = await asyncio.gather(later(1, 0), later(2, 0.01), later(3, 0.02))

    assert list(results) == [2, 4, 6]
    assert run.batches == [[1, 2, 3]]


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Recorder(), max_size=0)
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Recorder(), max_in_flight=0)
    with pytest.raises(ValueError, match="negative"):
        Batcher(Recorder(), linger_seconds=-1)


async def _until(condition: object, timeout: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)
