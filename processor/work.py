"""The work itself: reverse the input after a simulated delay."""

from __future__ import annotations

import asyncio


async def reverse_text(text: str, *, delay_seconds: float) -> str:
    # The delay stands in for real work; it yields the loop so one process runs many at once.
    await asyncio.sleep(delay_seconds)
    return text[::-1]
