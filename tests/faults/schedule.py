"""Seeded fault schedules: which task, which process, when. Every choice and every injected
fault is printed as it happens, so a failing run can be read and replayed with its seed."""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TypeVar

SEED_VARIABLE = "TASKWIRE_FAULT_SEED"
T = TypeVar("T")


def fault_seed(env: Mapping[str, str] = os.environ) -> tuple[int, bool]:
    """The run's seed and whether it was given: TASKWIRE_FAULT_SEED, else a fresh random one
    (each run explores another schedule; the printed seed replays it)."""
    raw = env.get(SEED_VARIABLE, "").strip()
    if raw:
        return int(raw), True
    return secrets.randbelow(10**6), False


class FaultPlan:
    """One scenario's random choices, derived from the run's seed and the scenario's name only,
    so a scenario replays the same whether it runs alone or with the others."""

    def __init__(self, seed: int, scenario: str, nodeid: str | None = None) -> None:
        self.seed = seed
        self.scenario = scenario
        self.rng = random.Random(f"{seed}:{scenario}")
        self.events: list[str] = []
        self._started = time.monotonic()
        target = f"'{nodeid}'" if nodeid else "tests/faults"
        self.note(f"seed {seed} (replay: {SEED_VARIABLE}={seed} .venv/bin/pytest {target})")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def note(self, text: str) -> None:
        line = f"[{self.scenario} +{self.elapsed:6.2f}s] {text}"
        self.events.append(line)
        print(line, flush=True)

    def uniform(self, low: float, high: float, what: str) -> float:
        value = round(self.rng.uniform(low, high), 2)
        self.note(f"{what}: {value:g}")
        return value

    def randint(self, low: int, high: int, what: str) -> int:
        value = self.rng.randint(low, high)
        self.note(f"{what}: {value}")
        return value

    def choice(self, options: Sequence[T], what: str) -> T:
        value = self.rng.choice(options)
        self.note(f"{what}: {value}")
        return value

    def token(self) -> str:
        """A short random string (not printed: it only makes inputs unique)."""
        return f"{self.rng.getrandbits(32):08x}"
