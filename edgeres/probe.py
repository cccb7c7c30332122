"""A machine-speed probe for the regression gate: a fixed small ONNX Runtime workload timed beside the artifact.

Latency measured today is compared with latency measured on another day, when the machine may have been quieter
or busier. Benchmark suites calibrate a host before trusting its timings (pyperf records the load average, CPU
model and frequency with every result and tunes the system; asv's ``continuous`` mode times both revisions in one
session). The gate does the portable part of that: it times this probe *interleaved* with the artifact's trials,
in the baseline's run and again in the check's, and judges the artifact's latency relative to the probe's, so a
machine that is uniformly slower today cancels out.

The probe is a chain of 3x3 convolutions and ReLUs on one small feature map (the same kind of work as a ResNet:
ONNX Runtime's convolution kernels, its intra-op thread pool with the artifact's thread count, one call per
inference), sized once, when the baseline is written, so one call takes about as long as one call of the artifact
at its smallest batch: contention that slows one slows the other alike. The size is recorded in the baseline
(:class:`ProbeSpec`) and rebuilt from it at check time, so both runs time exactly the same work::

    spec = calibrate_probe(target_ms=0.9, threads=2)
    with open_probe(spec) as probe:
        probe.infer(probe.input)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeres.errors import GateInputError

log = logging.getLogger(__name__)

PROBE_VERSION = 1  # bump when the probe's graph changes: a baseline's probe is only compared with the same version
PROBE_CHANNELS = 16
PROBE_DEPTH = 16  # convolutions, unless sized to the artifact (ResNet-20 has 19, ResNet-18 20, ResNet-50 53)
PROBE_SIZES = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384)  # feature-map sides tried when sizing the probe


@dataclass(frozen=True)
class ProbeSpec:
    """Which probe a baseline timed: rebuilt from this at check time."""

    size: int  # side of the square feature map
    channels: int = PROBE_CHANNELS
    depth: int = PROBE_DEPTH
    threads: int | None = None  # ONNX Runtime intra-op threads (the artifact runner's)
    spinning: bool = False  # whether idle pool threads spin (as the artifact's runner in the same trials)
    version: int = PROBE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeSpec:
        try:
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        except TypeError as exc:
            raise GateInputError(f"the baseline's probe record is unreadable ({exc}); rewrite the baseline with "
                                 "--update-baseline") from exc

    @property
    def label(self) -> str:
        return f"conv3x3 x{self.depth}, {self.channels}ch {self.size}x{self.size}, {self.threads or 'auto'} threads"


def probe_model(spec: ProbeSpec) -> Any:
    """The probe's ONNX model (seeded weights, so every build is byte-identical)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = spec.channels
    nodes, inits = [], []
    prev = "x"
    for i in range(spec.depth):
        w = (rng.standard_normal((c, c, 3, 3)) * (2.0 / (9 * c)) ** 0.5).astype(np.float32)  # He init: stays O(1)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    nodes.append(helper.make_node("ReduceMean", [prev], ["y"], keepdims=0))
    graph = helper.make_graph(nodes, "edgeres_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, spec.size, spec.size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class ProbeRunner:
    """Runs the probe with ONNX Runtime: ``infer(probe.input)``, the shape of a runner for the timing loops."""

    last_stage_times = None  # the probe's latency is always the whole call

    def __init__(self, spec: ProbeSpec) -> None:
        import onnxruntime as ort

        from edgeres.backends.onnxruntime import session_options

        self.spec = spec
        so = session_options(threads=spec.threads, spinning=spec.spinning)
        self._session = ort.InferenceSession(probe_model(spec).SerializeToString(), so,
                                             providers=["CPUExecutionProvider"])
        self.input = np.random.default_rng(1).standard_normal((1, spec.channels, spec.size, spec.size),
                                                              dtype=np.float32)

    def __enter__(self) -> ProbeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, batch: np.ndarray) -> Any:
        return self._session.run(None, {"x": batch})[0]

    def close(self) -> None:
        self._session = None


def open_probe(spec: ProbeSpec) -> ProbeRunner:
    """Build and open the probe ``spec`` describes.

    Raises:
        GateInputError: the spec is of another probe version than this edgeres builds.
    """
    if spec.version != PROBE_VERSION:
        raise GateInputError(f"the baseline's machine-speed probe is version {spec.version}, this edgeres builds "
                             f"version {PROBE_VERSION}; rewrite the baseline with --update-baseline")
    return ProbeRunner(spec)


def _median_call_ms(runner: ProbeRunner, calls: int) -> float:
    runner.infer(runner.input)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        runner.infer(runner.input)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def calibrate_probe(*, target_ms: float, threads: int | None, depth: int = PROBE_DEPTH, spinning: bool = False,
                    budget_s: float = 3.0) -> ProbeSpec:
    """The probe of ``depth`` convolutions whose call takes closest to ``target_ms`` (in ratio), trying feature
    maps from small to large.

    Like pyperf's loop calibration, this runs once, when the baseline is written; checks reuse the recorded size.
    """
    deadline = time.perf_counter() + budget_s
    timed: dict[int, float] = {}

    def time_size(size: int) -> float:
        with open_probe(ProbeSpec(size=size, depth=depth, threads=threads, spinning=spinning)) as runner:
            timed[size] = _median_call_ms(runner, calls=9 if target_ms < 50 else 3)
        log.debug("probe %dx%d: %.3f ms (target %.3f ms)", size, size, timed[size], target_ms)
        return timed[size]

    previous = None
    for size in PROBE_SIZES:
        if time_size(size) >= target_ms or time.perf_counter() > deadline:
            break
        previous = size
    if previous is not None and timed[size] > target_ms:  # the work grows as size^2: try the size between
        lo, hi = timed[previous], timed[size]
        frac = (np.sqrt(target_ms) - np.sqrt(lo)) / max(1e-9, np.sqrt(hi) - np.sqrt(lo))
        between = int(round(previous + frac * (size - previous)))
        if previous < between < size:
            time_size(between)
    best = min(timed, key=lambda s: abs(np.log(timed[s] / target_ms)))
    return ProbeSpec(size=best, depth=depth, threads=threads, spinning=spinning)


def machine_state() -> dict[str, Any]:
    """What the machine was doing: 1/5/15-minute load averages, logical CPUs, and CPU time counters (jiffies) for
    the steal and busy fractions between two readings (see :func:`cpu_fractions`)."""
    from edgeres.environment import cpu_count, cpu_model

    state: dict[str, Any] = {"cpu_model": cpu_model(), "cpu_count": cpu_count(), "loadavg": None, "cpu_times": None}
    try:
        state["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        state["cpu_times"] = [int(x) for x in fields]
    except (OSError, ValueError, IndexError):
        pass
    return state


def cpu_fractions(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, float] | None:
    """Busy and steal fractions of all CPUs between two :func:`machine_state` readings (Linux), else None."""
    a, b = before.get("cpu_times"), after.get("cpu_times")
    if not a or not b or len(a) < 8 or len(b) < 8:
        return None
    d = [y - x for x, y in zip(a, b)]
    total = sum(d[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    if total <= 0:
        return None
    return {"busy": round(1 - (d[3] + d[4]) / total, 3), "steal": round(d[7] / total, 3)}

