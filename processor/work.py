"""The work itself: reverse the input after a simulated delay."""

from __future__ import annotations

import asyncio


class PoisonInput(Exception):
    """The input carries the configured poison marker (test-only fault injection)."""


async def reverse_text(text: str, *, delay_seconds: float, poison_marker: str = "") -> str:
    # The delay stands in for real work; it yields the loop so one process runs many at once.
    await asyncio.sleep(delay_seconds)
    if poison_marker and poison_marker in text:
        raise PoisonInput("the input contains the configured poison marker")
    return text[::-1]
