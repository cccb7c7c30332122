"""Fake runners: objects with a runner's interface (``infer``, ``profile``, ``last_stage_times``, context manager)
whose latency the test chooses."""
from __future__ import annotations

import time

import numpy as np

from edgeres.backends.base import BatchProfile, StageTimes
from edgeres.card import ModelCard

from .clocks import VirtualClock


class SleepRunner:
    """A runner whose every call takes ``ms`` (plus ``extra_ms``): latency injection without a model.

    With a :class:`VirtualClock` it advances that clock instead of sleeping, by ``ms`` times a seeded lognormal
    jitter of relative spread ``jitter``.
    """

    backend = "onnxruntime"
    precision = "fp32"

    def __init__(self, card: ModelCard, *, ms: float, extra_ms: float = 0.0,
                 profile: BatchProfile = BatchProfile(1, 8, 32), stages: bool = False,
                 clock: VirtualClock | None = None, jitter: float = 0.0, seed: int = 0) -> None:
        self.card, self.ms, self.extra_ms, self.profile, self.stages = card, ms, extra_ms, profile, stages
        self.clock, self.jitter, self.rng = clock, jitter, np.random.default_rng(seed)
        self.last_stage_times: StageTimes | None = None
        self.calls = 0

    def __enter__(self) -> SleepRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        ms = self.ms + self.extra_ms
        if self.clock is None:
            time.sleep(ms / 1e3)
        else:
            self.clock.now += ms * float(self.rng.lognormal(0.0, self.jitter)) / 1e3
        self.calls += 1
        if self.stages:  # a GPU-like split with fixed, known stage times
            self.last_stage_times = StageTimes(compute_ms=1.0, h2d_ms=0.25, d2h_ms=0.125, total_ms=1.375)
        return np.zeros((batch.shape[0], self.card.num_classes), np.float32)

    def close(self) -> None:
        pass
