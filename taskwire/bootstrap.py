"""The one place that opens connections: `async with connect(settings) as services`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from taskwire.background import Background
from taskwire.cache import open_cache
from taskwire.events import open_events
from taskwire.metrics import Metrics
from taskwire.ports import EventBus, TaskCache, TaskQueue, TaskStore
from taskwire.queue import open_queue
from taskwire.ratelimit import RateLimiter, open_rate_limiter
from taskwire.settings import Settings
from taskwire.store import open_store


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a use case needs, opened for the lifetime of one process."""

    settings: Settings
    store: TaskStore
    cache: TaskCache
    events: EventBus
    queue: TaskQueue
    # createTask per owner; shared through Redis across API replicas.
    limiter: RateLimiter
    # This process's Prometheus metrics (its own registry).
    metrics: Metrics = field(default_factory=Metrics)
    # What a use case starts and does not wait for (taskwire.background).
    background: Background = field(default_factory=Background)
    # createTask's publishes awaiting their confirm, counted apart: their number is the bound
    # past which createTask waits for its own publish (Settings.publish_backlog).
    publishes: Background = field(default_factory=Background)


@asynccontextmanager
async def connect(
    settings: Settings, *, pool_size: int = 10, metrics: Metrics | None = None
) -> AsyncIterator[Services]:
    metrics = metrics if metrics is not None else Metrics()
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            open_store(
                settings.database_url,
                dispatch_grace_seconds=settings.dispatch_grace_seconds,
                pool_size=pool_size,
            )
        )
        cache = await stack.enter_async_context(
            open_cache(settings.redis_url, prefix=settings.channel_prefix)
        )
        events = await stack.enter_async_context(
            open_events(settings.redis_url, prefix=settings.channel_prefix)
        )
        queue = await stack.enter_async_context(
            open_queue(settings.rabbitmq_url, name=settings.queue_name)
        )
        limiter = await stack.enter_async_context(
            open_rate_limiter(
                settings.redis_url,
                prefix=settings.channel_prefix,
                per_minute=settings.rate_limit_per_minute,
                burst=settings.rate_limit_burst,
            )
        )
        metrics.queue.watch(queue)
        background = Background()
        publishes = Background()
        # Closed before the connections (the exit stack unwinds backwards), publishes first:
        # a confirmed publish still starts its deferral in `background`.
        stack.push_async_callback(background.aclose)
        stack.push_async_callback(publishes.aclose)
        yield Services(
            settings=settings,
            store=store,
            cache=cache,
            events=events,
            queue=queue,
            limiter=limiter,
            metrics=metrics,
            background=background,
            publishes=publishes,
        )
