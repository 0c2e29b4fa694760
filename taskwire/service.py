"""The use cases. Resolvers and message handlers decode their input, call one of these, and
convert the result; everything that must stay true across processes is decided here."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
from collections.abc import AsyncGenerator, Callable
from typing import Any, overload
from uuid import UUID

from taskwire import tracing
from taskwire.bootstrap import Services
from taskwire.errors import (
    BadUserInput,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from taskwire.identity import Principal
from taskwire.logs import REQUEST_ID, bound_task, log_transition, task_fields
from taskwire.models import Task, TaskStatus, backoff_seconds
from taskwire.ports import RESYNC, Resync
from taskwire.settings import Settings

log = logging.getLogger(__name__)

# How soon a subscription that needs the database during an outage asks again.
RESYNC_RETRY_SECONDS = 1.0


def parse_task_id(raw: str) -> UUID:
    if len(raw) > 64:
        raise BadUserInput("id must be a UUID.")
    try:
        return UUID(raw)
    except ValueError:
        raise BadUserInput("id must be a UUID.") from None


def check_input(input_data: str, *, max_bytes: int) -> None:
    # Checked on characters first so that a huge string is refused before it is encoded.
    if len(input_data) > max_bytes:
        raise BadUserInput(f"inputData is longer than the limit of {max_bytes} bytes.")
    try:
        size = len(input_data.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadUserInput("inputData must be valid Unicode text.") from None
    if size > max_bytes:
        raise BadUserInput(f"inputData is {size} bytes; the limit is {max_bytes} bytes.")
    if "\x00" in input_data:
        # PostgreSQL text cannot hold NUL; refusing it here keeps both databases alike.
        raise BadUserInput("inputData must not contain NUL characters.")


MAX_IDEMPOTENCY_KEY_LENGTH = 200


def check_idempotency_key(key: str | None) -> None:
    if key is None:
        return
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise BadUserInput(
            f"idempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters long."
        )
    # The same rules as inputData: the database stores only valid Unicode text without NUL.
    if "\x00" in key or not _is_unicode(key):
        raise BadUserInput("idempotencyKey must be valid Unicode text without NUL characters.")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _require_write(caller: Principal) -> None:
    if not caller.may_write:
        raise Forbidden("A watch token may only read and subscribe to its task.")


async def create_task(
    services: Services,
    caller: Principal,
    input_data: str,
    *,
    idempotency_key: str | None = None,
) -> Task:
    """_create_task in the span that starts the task's trace (when tracing is on)."""
    with tracing.span("taskwire.createTask") as span:
        task = await _create_task(services, caller, input_data, idempotency_key=idempotency_key)
        tracing.set_task_id(span, task.id)
        return task


async def _create_task(
    services: Services,
    caller: Principal,
    input_data: str,
    *,
    idempotency_key: str | None = None,
) -> Task:
    """Commit the task, owned by the caller, cache it and publish it with a confirm.

    The answer waits for the commit and the cache write, not for the broker's confirm: the
    tasks table is the outbox, so a publish that fails (or a process that dies before it is
    confirmed) is re-published by the dispatcher, exactly as when it failed in the request.
    Past `publish_backlog` unconfirmed publishes the request waits for its own. A repeated
    idempotency key (per owner) returns the task it created (in its current state) and
    publishes nothing.
    """
    _require_write(caller)
    if services.settings.crash_point == "unexpected_error":
        # Test-only fault injection: a bug whose message holds a secret, which the API must
        # mask for the client and log for the operator.
        raise RuntimeError(f"bug while connecting to {services.settings.database_url}")
    check_input(input_data, max_bytes=services.settings.max_input_bytes)
    check_idempotency_key(idempotency_key)
    # After the input checks, so that a malformed request does not use up the caller's budget.
    retry_after = await services.limiter.acquire(caller.subject)
    if retry_after > 0:
        services.metrics.rate_limited.inc()
        seconds = max(1, math.ceil(retry_after))
        raise RateLimited(f"Too many tasks created; try again in {seconds} s.", retryAfter=seconds)
    task, created = await services.store.create(
        input_data,
        attempt_limit=services.settings.max_attempts,
        idempotency_key=idempotency_key,
        owner=caller.subject,
    )
    if not created:
        if task.input_data != input_data:
            raise Conflict("This idempotencyKey was already used with a different inputData.")
        return task
    if services.settings.crash_point == "after_commit":
        # Test-only fault injection: die between the commit and the publish, as a crash would.
        os._exit(70)
    services.metrics.tasks_created.inc()
    log_transition(log, task, "created", None)
    with bound_task(task.id):  # before spawn and gather: their tasks copy the context
        if len(services.publishes) < services.settings.publish_backlog:
            services.publishes.spawn(
                _dispatch(services, task, answered=True), what=f"publishing task {task.id}"
            )
            await _cache(services, task)
        else:
            # Independent of each other (the cache orders versions itself): one wait, not two.
            await asyncio.gather(_dispatch(services, task), _cache(services, task))
    return task


async def _own(services: Services, caller: Principal, task_id: UUID) -> None:
    """Raise NotFound unless the caller may see the task: another owner's task answers exactly
    as one that does not exist. Owners never change, so checking before the UPDATE is enough."""
    _require_write(caller)
    task = await services.store.get(task_id)
    if task is None or not caller.may_read(task):
        raise NotFound()


async def cancel_task(services: Services, caller: Principal, task_id: UUID) -> Task:
    """PENDING -> CANCELLED; a processor that receives it later skips it."""
    await _own(services, caller, task_id)
    task = await services.store.cancel(task_id)
    if task is None:
        raise await _refusal(services, task_id, "cancelled", TaskStatus.PENDING)
    log_transition(log, task, "cancelled", TaskStatus.PENDING)
    services.metrics.task_finished(task)
    await announce(services, task)
    return task


async def retry_task(services: Services, caller: Principal, task_id: UUID) -> Task:
    """FAILED -> PENDING with a fresh budget of attempts, and back onto the queue."""
    await _own(services, caller, task_id)
    task = await services.store.retry(task_id, extra_attempts=services.settings.max_attempts)
    if task is None:
        raise await _refusal(services, task_id, "retried", TaskStatus.FAILED)
    log_transition(log, task, "retried", TaskStatus.FAILED)
    await announce(services, task)
    await _dispatch(services, task)
    return task


async def _refusal(
    services: Services, task_id: UUID, verb: str, required: TaskStatus
) -> NotFound | Conflict:
    current = await services.store.get(task_id)
    if current is None:
        return NotFound()
    return Conflict(
        f"The task is {current.status}; only a {required} task can be {verb}.",
        status=current.status.value,
    )


async def _dispatch(services: Services, task: Task, *, answered: bool = False) -> None:
    """Publish with a confirm, then push the outbox deadline out. `answered`: the caller has
    its answer already, so this runs in the background and may wait for the deferral too."""
    try:
        with tracing.publishing(task.id):
            # The request's id travels with the message: the processor's lines name it too.
            headers = tracing.headers(request_id=REQUEST_ID.get())
            await services.queue.publish(task.id, headers=headers)
    except ServiceUnavailable:
        services.metrics.queue_publish_failures.inc()
        log.warning(
            "publish of task %s failed; the dispatcher will publish it",
            task.id,
            extra=task_fields(task.id),
        )
        return
    # The deadline only spares the dispatcher a re-publish: a failure costs one redundant
    # publish, logged, and nothing the caller gets back depends on it.
    deferral = services.store.defer_dispatch(task.id, seconds=services.settings.redispatch_seconds)
    what = f"deferring the re-publish of task {task.id}"
    if not answered:
        services.background.spawn(deferral, what=what)
        return
    try:
        await deferral
    except ServiceUnavailable as exc:
        log.warning("%s failed: %s", what, exc, extra=task_fields(task.id))


async def get_task(services: Services, caller: Principal, task_id: UUID) -> Task | None:
    """The task if the caller may see it, else None (whether or not it exists)."""
    task = await read_task(services, task_id)
    return task if task is not None and caller.may_read(task) else None


async def read_task(services: Services, task_id: UUID) -> Task | None:
    """Read-through: Redis first, PostgreSQL on a miss (or when Redis is down)."""
    try:
        cached = await services.cache.get(task_id)
    except ServiceUnavailable:
        services.metrics.redis_errors["cache_read"].inc()
        log.warning(
            "cache read failed for task %s; reading the database",
            task_id,
            extra=task_fields(task_id),
        )
        cached = None
    if cached is not None:
        services.metrics.cache_hits.inc()
        return cached
    services.metrics.cache_misses.inc()
    task = await services.store.get(task_id)
    if task is not None:
        await _cache(services, task)
    return task


@overload
def watch_task(
    services: Services, caller: Principal, task_id: UUID
) -> AsyncGenerator[Task, None]: ...


@overload
def watch_task(
    services: Services, caller: Principal, task_id: UUID, present: Callable[[Task], object]
) -> AsyncGenerator[object, None]: ...


async def watch_task(
    services: Services,
    caller: Principal,
    task_id: UUID,
    present: Callable[[Task], Any] | None = None,
) -> AsyncGenerator[Any, None]:
    """The current state, then every newer version, ending after a terminal state; each one as
    `present` makes it, when given (the resolver's GraphQL type).

    Subscribing happens before the first read so that no change can fall between the two.
    Counts the subscription while it runs and every change delivered after the first state.
    (`present` rather than a generator of the caller's mapping this one's: a subscription holds
    every generator in its chain, each with its frame and the loop's weak reference to it,
    for its whole life.)
    """
    metrics = services.metrics
    metrics.subscriptions.inc()
    try:
        async with services.events.subscribe(task_id) as subscription:
            first = await get_task(services, caller, task_id)
            if first is None:
                raise NotFound()
            # Only the version and whether it is final are kept of the last state delivered:
            # the state itself is not held while waiting (for minutes, usually) for the next.
            version, terminal = first.version, first.terminal
            yield first if present is None else present(first)
            del first
            resync_pending = False
            while not terminal:
                event: Task | Resync = (
                    RESYNC
                    if resync_pending
                    else await subscription.get(timeout=_recheck_after(services.settings))
                )
                if isinstance(event, Resync):
                    # Events may have been missed (reconnect, overflow, or a long silence):
                    # the database is the truth.
                    try:
                        truth = await services.store.get(task_id)
                    except ServiceUnavailable:
                        # Keep the subscriber through a database outage: events still arrive
                        # (and wait in the inbox); the re-read is tried again shortly.
                        resync_pending = True
                        await asyncio.sleep(RESYNC_RETRY_SECONDS)
                        continue
                    resync_pending = False
                    if truth is None:
                        return
                    await _cache(services, truth)
                    event = truth
                    del truth
                if event.version > version:
                    version, terminal = event.version, event.terminal
                    metrics.events_delivered.inc()
                    yield event if present is None else present(event)
                del event
    finally:
        metrics.subscriptions.dec()


def _recheck_after(settings: Settings) -> float:
    # Spread over +-25 %: subscriptions opened together (a reconnect storm, a page of tasks)
    # would otherwise all re-read the database in the same instant, every time.
    return settings.watch_recheck_seconds * (0.75 + random.random() / 2)


async def claim_task(services: Services, task_id: UUID, *, worker: str) -> Task | None:
    task = await services.store.claim(
        task_id, worker=worker, lease_seconds=services.settings.lease_seconds
    )
    if task is not None:
        # The store does not say whether it took a PENDING task or an expired lease.
        log_transition(log, task, "failed" if task.terminal else "claimed", None)
        if task.status is TaskStatus.FAILED:  # out of attempts: given up by the claim itself
            services.metrics.task_finished(task)
        await announce(services, task)
    return task


async def complete_task(services: Services, claimed: Task, result: str) -> Task | None:
    """Finish the attempt that `claimed` holds; None when that attempt lost the task."""
    task = await services.store.complete(claimed.id, attempt=claimed.attempts, result=result)
    if task is not None:
        log_transition(log, task, "completed", TaskStatus.PROCESSING)
        services.metrics.attempt_finished(claimed, task, "completed")
        services.metrics.task_finished(task)
        await announce(services, task)
    return task


async def fail_attempt(services: Services, claimed: Task, error: str) -> Task | None:
    """A failed attempt: back to PENDING and onto the queue after a backoff while the task has
    attempts left, FAILED once it has none. None when that attempt had lost the task."""
    settings = services.settings
    if claimed.attempts >= claimed.attempt_limit:
        task = await services.store.fail(claimed.id, attempt=claimed.attempts, error=error)
        if task is not None:
            log_transition(log, task, "failed", TaskStatus.PROCESSING)
            services.metrics.attempt_finished(claimed, task, "failed")
            services.metrics.task_finished(task)
            await announce(services, task)
        return task
    delay = backoff_seconds(
        claimed.attempts,
        base=settings.retry_base_seconds,
        cap=settings.retry_max_seconds,
        jitter=random.random(),
    )
    task = await services.store.retry_later(
        claimed.id, attempt=claimed.attempts, error=error, delay_seconds=delay
    )
    if task is None:
        return None
    log_transition(log, task, "retried", TaskStatus.PROCESSING)
    services.metrics.attempt_finished(claimed, task, "retried")
    services.metrics.retries.inc()
    await announce(services, task)
    try:
        with tracing.publishing(task.id):
            # The retry keeps naming the request that queued the task (the handler set it).
            headers = tracing.headers(request_id=REQUEST_ID.get())
            await services.queue.publish(task.id, delay_seconds=delay, headers=headers)
    except ServiceUnavailable:
        services.metrics.queue_publish_failures.inc()
        log.warning(
            "delayed publish of task %s failed; the dispatcher will publish it",
            task.id,
            extra=task_fields(task.id),
        )
    return task


async def release_task(services: Services, claimed: Task) -> Task | None:
    task = await services.store.release(claimed.id, attempt=claimed.attempts)
    if task is not None:
        log_transition(log, task, "released", TaskStatus.PROCESSING)
        await announce(services, task)
    return task


async def dispatch_due(services: Services, *, limit: int = 100) -> int:
    """Re-publish what the outbox says was never confirmed or never claimed; returns how many."""
    due = await services.store.due_for_dispatch(
        limit=limit, grace_seconds=services.settings.redispatch_seconds
    )
    published = 0
    for task_id in due:
        try:
            # A new trace: the context of the task's first one is not kept (taskwire.tracing).
            with tracing.publishing(task_id, new_trace=True):
                await services.queue.publish(task_id, headers=tracing.headers())
        except ServiceUnavailable:
            await services.store.defer_dispatch(
                task_id, seconds=services.settings.dispatch_grace_seconds
            )
            continue
        published += 1
    if published:
        log.info("dispatcher re-published %d task(s)", published)
    return published


async def announce(services: Services, task: Task) -> None:
    """Write-through to the cache, then tell subscribers. Redis is an accelerator: a failure
    here is logged and never undoes or fails the transition that already committed.

    In this order, not at once: a subscriber that arrives after the event was published reads
    the cache next, which must already hold this version (or it would wait for a recheck)."""
    await _cache(services, task)
    try:
        with tracing.span("taskwire.event", task_id=task.id):
            await services.events.publish(task)
    except ServiceUnavailable:
        services.metrics.redis_errors["event_publish"].inc()
        log.warning(
            "event publish failed for task %s version %d",
            task.id,
            task.version,
            extra=task_fields(task.id),
        )
    else:
        services.metrics.events_published.inc()


async def _cache(services: Services, task: Task) -> None:
    try:
        await services.cache.put(task, ttl_seconds=services.settings.result_ttl_seconds)
    except ServiceUnavailable:
        services.metrics.redis_errors["cache_write"].inc()
        log.warning(
            "cache write failed for task %s version %d",
            task.id,
            task.version,
            extra=task_fields(task.id),
        )
