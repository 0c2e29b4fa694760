"""Opportunistic batching: calls that arrive while the previous batch is on the wire go out
together as one, so a round trip's cost is shared by everything that was waiting for it.

Nothing waits for a batch to fill: a lone call leaves on the next turn of the event loop, so
light load keeps its latency, and a burst (a processor handed hundreds of deliveries at once,
fifty HTTP clients) turns hundreds of statements into a few.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from taskwire.errors import ServiceUnavailable

Item = TypeVar("Item")
Result = TypeVar("Result")

Run = Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]


class Batcher(Generic[Item, Result]):
    """`await batcher.submit(item)` runs `run` on a batch of items and returns this item's result.

    `run` gets at most `max_size` items and returns their results in the same order. `key`
    names items that must not share a batch (one task's two transitions): the later one waits
    for the next batch, so every item sees the effect of those submitted before it, exactly as
    if the calls had run one after another. A batch that fails with anything but
    ServiceUnavailable is re-run one item at a time, so one bad item fails only its own caller.
    """

    def __init__(
        self,
        run: Run[Item, Result],
        *,
        max_size: int = 256,
        max_in_flight: int = 2,
        key: Callable[[Item], Hashable] | None = None,
        linger_seconds: float = 0.0,
    ) -> None:
        if max_size < 1 or max_in_flight < 1:
            raise ValueError("max_size and max_in_flight must be at least 1")
        if linger_seconds < 0:
            raise ValueError("linger_seconds must not be negative")
        self._run = run
        self._max_size = max_size
        self._max_in_flight = max_in_flight
        self._key = key
        # For work nobody waits on: a batch leaves this long after its first item, not on the
        # next turn of the loop, so calls that trickle in still share it.
        self._linger = linger_seconds
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._scheduled or not self._pending or len(self._in_flight) >= self._max_in_flight:
            return
        self._scheduled = True
        if self._linger:
            loop.call_later(self._linger, self._start, loop)
        else:
            # call_soon, not now: the other callers of this turn of the loop join the batch.
            loop.call_soon(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        batch = self._take()
        if not batch:
            return
        task = loop.create_task(self._flush(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._schedule(task.get_loop())

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        rest: list[tuple[Item, asyncio.Future[Result]]] = []
        keys: set[Hashable] = set()
        for entry in self._pending:
            if entry[1].done():  # its caller was cancelled before it left
                continue
            if len(batch) >= self._max_size:
                rest.append(entry)
                continue
            if self._key is not None:
                key = self._key(entry[0])
                if key in keys:
                    rest.append(entry)
                    continue
                keys.add(key)
            batch.append(entry)
        self._pending = rest
        return batch

    async def _flush(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except ServiceUnavailable as exc:
            for _, future in batch:
                # One instance per caller: a shared exception would collect every caller's
                # traceback as each of them re-raises it.
                _settle_error(future, ServiceUnavailable(str(exc)), cause=exc)
            return
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                _settle_error(batch[0][1], exc)
                return
            await asyncio.gather(*(self._flush([entry]) for entry in batch))
            return
        if len(results) != len(batch):
            error = RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
            for _, future in batch:
                _settle_error(future, error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _settle_error(
    future: asyncio.Future[Result], error: BaseException, *, cause: BaseException | None = None
) -> None:
    if future.done():
        return
    if cause is not None:
        error.__cause__ = cause
    future.set_exception(error)
