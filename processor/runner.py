"""The processor's main loop: consume with a prefetch window, work many tasks at once, run the
outbox dispatcher, and stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from typing import Any

from processor.handler import handle
from taskwire import service
from taskwire.bootstrap import Services
from taskwire.errors import ServiceUnavailable

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def run(services: Services, stop: asyncio.Event) -> None:
    """Process tasks until `stop` is set; then finish (or hand back) what is in flight."""
    worker = worker_name()
    dispatcher = asyncio.create_task(dispatch_forever(services, stop))
    inflight: set[asyncio.Task[None]] = set()
    services.metrics.track_in_flight(inflight)
    log.info(
        "processor %s started (concurrency %d)", worker, services.settings.processor_concurrency
    )
    try:
        async with services.queue.consume(
            prefetch=services.settings.processor_concurrency
        ) as deliveries:
            services.metrics.consuming.set(1)

            async def take_all() -> None:
                # No await between deliveries that are already buffered: a burst becomes
                # hundreds of handlers in one turn of the loop, whose claims share statements.
                async for delivery in deliveries:
                    job = asyncio.create_task(handle(services, delivery, worker=worker))
                    inflight.add(job)
                    job.add_done_callback(inflight.discard)

            await _until(stop, take_all())
            services.metrics.consuming.set(0)  # draining: no longer taking work
            # Settle what is in flight on the channel it came from, before the consumer closes.
            await _drain(inflight, grace_seconds=services.settings.shutdown_grace_seconds)
    finally:
        services.metrics.consuming.set(0)
        # The dispatcher ends its round on its own once stop is set; cancelling it mid-statement
        # could leave a transaction open on a shared connection.
        if not stop.is_set():
            dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)
        log.info("processor %s stopped", worker)


async def dispatch_forever(services: Services, stop: asyncio.Event) -> None:
    interval = min(services.settings.dispatch_grace_seconds / 2, 5.0)
    while not stop.is_set():
        try:
            while await service.dispatch_due(services) > 0:
                pass
        except ServiceUnavailable as exc:
            log.warning("dispatcher paused: %s", exc)
        except Exception:
            log.exception("dispatcher run failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def _until(stop: asyncio.Event, consuming: Coroutine[Any, Any, None]) -> None:
    """Run `consuming` until it ends or `stop` is set, whichever comes first."""
    consumer = asyncio.ensure_future(consuming)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({consumer, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not consumer.done():
            # Between deliveries it only ever waits for the next one: cancelling loses none.
            consumer.cancel()
        await asyncio.gather(stopped, return_exceptions=True)
    try:
        await consumer
    except asyncio.CancelledError:
        if not stop.is_set():
            raise


async def _drain(inflight: set[asyncio.Task[None]], *, grace_seconds: float) -> None:
    if not inflight:
        return
    log.info("waiting up to %gs for %d task(s) in flight", grace_seconds, len(inflight))
    _, pending = await asyncio.wait(set(inflight), timeout=grace_seconds)
    for job in pending:
        job.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
