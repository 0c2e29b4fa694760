"""A Lua script run for many calls in one pipelined round trip (the cache's compare-and-set,
the rate limiter's GCRA), with the script loaded on demand."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

Call = tuple[Sequence[str], Sequence[EncodableT]]


class PipelinedScript:
    def __init__(self, client: Redis, source: str) -> None:
        self._client = client
        self._source = source
        # No I/O here: register_script only computes the SHA; the script is loaded on NOSCRIPT.
        self._sha: str = client.register_script(source).sha

    async def run_many(self, calls: Sequence[Call]) -> list[object]:
        """One reply per call, in order, an exception object in place of a failed call's reply.
        Raises RedisError when the round trip itself fails."""
        replies = await self._run(calls)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            # Redis restarted or flushed its scripts; NOSCRIPT means the call did not run.
            await self._client.script_load(self._source)
            replies = await self._run(calls)
        return replies

    async def _run(self, calls: Sequence[Call]) -> list[object]:
        # EVALSHA queued by hand: a pipeline given redis-py's Script object asks SCRIPT EXISTS
        # before every execute, a round trip of its own. Redis runs the calls in this order.
        pipeline = self._client.pipeline(transaction=False)
        for keys, args in calls:
            pipeline.evalsha(self._sha, len(keys), *keys, *args)
        replies: list[object] = await pipeline.execute(raise_on_error=False)
        return replies
