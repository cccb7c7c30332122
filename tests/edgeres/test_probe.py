"""edgeres.probe: the probe's graph is valid and identical on every build, its spec round-trips, sizing picks the
size whose call is closest to the target, and the machine-state readings turn into busy/steal fractions."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgeres.probe as probe_mod
from edgeres.errors import GateInputError
from edgeres.probe import (
    PROBE_VERSION, ProbeSpec, calibrate_probe, cpu_fractions, machine_state, open_probe, probe_model,
)


def test_probe_graph_is_valid_deterministic_and_runs() -> None:
    spec = ProbeSpec(size=8, depth=5, threads=1)
    model = probe_model(spec)
    onnx.checker.check_model(model)
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 5
    assert model.SerializeToString() == probe_model(spec).SerializeToString()  # the same work in both runs
    with open_probe(spec) as runner:
        assert runner.input.shape == (1, 16, 8, 8)
        out = runner.infer(runner.input)
        assert out.shape == () and np.isfinite(out) and out > 0  # one number; He init keeps values O(1)


def test_spec_round_trips_and_a_foreign_version_is_refused() -> None:
    spec = ProbeSpec(size=24, depth=19, threads=2, spinning=False)
    assert ProbeSpec.from_dict(spec.to_dict()) == spec
    assert "19" in spec.label and "24x24" in spec.label
    with pytest.raises(GateInputError, match="--update-baseline"):
        open_probe(ProbeSpec(size=8, version=PROBE_VERSION + 1))
    with pytest.raises(GateInputError, match="unreadable"):
        ProbeSpec.from_dict({"depth": 3})


def test_sizing_picks_the_size_closest_to_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a call that costs 0.001 ms per feature-map pixel, a 1 ms target is a side of ~31.6: between the
    listed 24 and 32, which the size^2 interpolation tries too."""
    tried = []

    def fake_time(runner: probe_mod.ProbeRunner, calls: int) -> float:
        tried.append(runner.spec.size)
        return 0.001 * runner.spec.size ** 2

    monkeypatch.setattr(probe_mod, "_median_call_ms", fake_time)
    spec = calibrate_probe(target_ms=1.0, threads=1, depth=4)
    assert tried[:7] == [4, 6, 8, 12, 16, 24, 32] and spec.size in (31, 32) and spec.depth == 4
    assert calibrate_probe(target_ms=1e6, threads=1, depth=4, budget_s=0.0).size == 4  # budget spent: the first


def test_machine_state_and_cpu_fractions() -> None:
    state = machine_state()
    assert state["cpu_count"] >= 1 and isinstance(state["cpu_model"], str)
    before = {"cpu_times": [100, 0, 50, 800, 50, 0, 0, 0]}
    after = {"cpu_times": [400, 0, 150, 900, 50, 0, 0, 100]}  # of 600 jiffies: 100 idle, 100 stolen
    assert cpu_fractions(before, after) == {"busy": round(500 / 600, 3), "steal": round(100 / 600, 3)}
    assert cpu_fractions({}, after) is None
