"""Fake clocks: time that moves only when a test (or a fake runner) moves it."""
from __future__ import annotations


class VirtualClock:
    """A clock that only moves when told to (``clock.now += seconds``): swapped in for a module's clock, it makes
    timings, rates and latency verdicts deterministic on a loaded machine."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
