"""Work a request starts but does not wait for, owned by the process's Services: held by a
strong reference while it runs, its failure logged, and waited for (briefly) at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from taskwire.errors import ServiceUnavailable

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 5.0


class Background:
    def __init__(self) -> None:
        # The loop keeps only weak references to tasks: without these, one could vanish mid-run.
        self._running: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._running)

    def spawn(self, work: Coroutine[Any, Any, None], *, what: str) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._running.add(task)
        task.add_done_callback(lambda done: self._finished(done, what))

    def _finished(self, task: asyncio.Task[None], what: str) -> None:
        self._running.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, ServiceUnavailable):
            log.warning("%s failed: %s", what, error)
        elif error is not None:
            log.error("%s failed", what, exc_info=error)

    async def settle(self, timeout: float) -> set[asyncio.Task[None]]:
        """Wait up to `timeout` seconds for what runs to finish, including work that running
        work spawns meanwhile; return what still runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # A finished task leaves the set in a callback that may not have run yet.
            running = {task for task in self._running if not task.done()}
            left = deadline - loop.time()
            if not running or left <= 0:
                return running
            await asyncio.wait(running, timeout=left)

    async def aclose(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Let what runs finish, for up to `timeout` seconds; cancel the rest."""
        pending = await self.settle(timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
