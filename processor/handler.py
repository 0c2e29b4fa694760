"""What happens to one message: decode, claim, work, finish, and only then settle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from processor.work import reverse_text
from taskwire import service, tracing
from taskwire.bootstrap import Services
from taskwire.errors import ServiceUnavailable
from taskwire.logs import REQUEST_ID, bound_task, log_transition
from taskwire.models import Task, TaskStatus
from taskwire.ports import Delivery
from taskwire.queue import decode_task_id

log = logging.getLogger(__name__)

# How long a message whose task could not be reached (database down) is held before it goes
# back to the queue: holding it keeps a broken dependency from turning into a redelivery storm.
UNAVAILABLE_BACKOFF_SECONDS = 1.0


async def handle(services: Services, delivery: Delivery, *, worker: str) -> None:
    try:
        task_id = decode_task_id(delivery.body)
    except ValueError as exc:
        log.error("malformed message sent to the dead-letter queue: %s", exc)
        services.metrics.dead_lettered["malformed"].inc()
        await delivery.dead_letter()
        return
    # Every line logged while handling it names the task and the request that queued it (when
    # its headers name an acceptable one), and its spans continue the trace its publisher
    # started.
    request_id = tracing.delivered_request_id(delivery)
    token = REQUEST_ID.set(request_id) if request_id is not None else None
    try:
        with bound_task(task_id), tracing.consuming(delivery, task_id):
            await _settle(services, delivery, task_id, worker=worker)
    finally:
        if token is not None:
            REQUEST_ID.reset(token)


async def _settle(services: Services, delivery: Delivery, task_id: UUID, *, worker: str) -> None:
    try:
        outcome = await process(services, task_id, worker=worker)
    except ServiceUnavailable as exc:
        log.warning("task %s deferred: %s", task_id, exc)
        await asyncio.sleep(UNAVAILABLE_BACKOFF_SECONDS)
        await delivery.requeue()
        return
    except asyncio.CancelledError:
        await asyncio.shield(delivery.requeue())
        raise
    if outcome is not None and outcome.status is TaskStatus.FAILED:
        # Out of attempts: the message goes where an operator looks for what gave up.
        services.metrics.dead_lettered["failed"].inc()
        log_transition(log, outcome, "dead-lettered", TaskStatus.FAILED)
        await delivery.dead_letter()
    else:
        await delivery.ack()


async def process(services: Services, task_id: UUID, *, worker: str) -> Task | None:
    """Claim, work and finish one task; returns the state it was left in (None if this
    delivery could not claim it)."""
    with tracing.span("taskwire.claim", task_id=task_id):
        claimed = await service.claim_task(services, task_id, worker=worker)
    if claimed is None:
        # Finished, cancelled, or held by a live lease elsewhere. Rare in normal operation and
        # worth a line when it is not: the fault tests count these.
        log.info("duplicate delivery of task %s: not claimable, settled", task_id)
        return None
    if claimed.status is not TaskStatus.PROCESSING:
        log.warning("task %s gave up: %s", task_id, claimed.error)
        return claimed
    settings = services.settings
    try:
        async with _heartbeat(services, claimed), tracing.span("taskwire.work", task_id=task_id):
            result = await reverse_text(
                claimed.input_data,
                delay_seconds=settings.task_delay_seconds,
                poison_marker=settings.poison_marker,
            )
    except asyncio.CancelledError:
        # Shutting down mid-work: hand the task back so that another worker takes it now
        # rather than after the lease expires.
        await asyncio.shield(service.release_task(services, claimed))
        raise
    except Exception as exc:
        log.warning("task %s attempt %d failed: %r", task_id, claimed.attempts, exc)
        with tracing.span("taskwire.fail", task_id=task_id):
            return await service.fail_attempt(services, claimed, f"{type(exc).__name__}: {exc}")
    # Its line, "task <id> completed on attempt <n> (...)", is the service's transition line.
    with tracing.span("taskwire.complete", task_id=task_id):
        done = await service.complete_task(services, claimed, result)
    if done is None:
        log.warning(
            "task %s attempt %d lost its lease; result discarded", task_id, claimed.attempts
        )
    return done


@asynccontextmanager
async def _heartbeat(services: Services, claimed: Task) -> AsyncIterator[None]:
    """Renew the lease while the work runs, so long work is not taken over."""
    lease = services.settings.lease_seconds

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                alive = await services.store.heartbeat(
                    claimed.id, attempt=claimed.attempts, lease_seconds=lease
                )
            except ServiceUnavailable:
                continue
            if not alive:
                log.warning("task %s attempt %d lost its lease", claimed.id, claimed.attempts)
                return

    if services.settings.task_delay_seconds < lease / 3:
        yield
        return
    renewer = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
