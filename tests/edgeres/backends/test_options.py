"""TensorRTOptions: validated once where it is made, JSON-ready for the sidecar, read back from old and new
sidecars, and the flags a non-TensorRT backend ignores."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgeres.backends.options import TensorRTOptions
from edgeres.errors import InputError


@pytest.mark.parametrize("kwargs,message", [
    ({"int8_mode": "dynamic"}, "--int8-mode must be one of explicit, implicit, got 'dynamic'"),
    ({"high_precision": "bf16"}, "--high-precision must be one of fp16, fp32, got 'bf16'"),
    ({"workspace_mb": 0}, "--workspace must be a positive number of MiB, got 0"),
    ({"workspace_mb": -64}, "--workspace must be a positive number of MiB, got -64"),
    ({"opt_level": 6}, "--opt-level must be 0..5, got 6"),
    ({"opt_level": -1}, "--opt-level must be 0..5, got -1"),
    ({"workspace_mb": float("nan")}, "--workspace must be a positive number of MiB, got nan"),
    ({"dla_core": -1}, "--dla-core must be a DLA core number (0, 1, ...), got -1"),
])
def test_bad_values_are_refused_where_the_options_are_made(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        TensorRTOptions(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("kwargs", [
    {}, {"int8_mode": "implicit", "high_precision": "fp32"}, {"workspace_mb": 1}, {"opt_level": 0},
    {"opt_level": 5}, {"dla_core": 0, "version_compatible": True, "tf32": False},
])
def test_the_edges_of_each_range_are_accepted(kwargs: dict) -> None:
    options = TensorRTOptions(**kwargs)
    assert all(getattr(options, name) == value for name, value in kwargs.items())


def test_frozen_and_the_timing_cache_is_a_path(tmp_path: Path) -> None:
    options = TensorRTOptions(timing_cache=str(tmp_path / "t.cache"))
    assert options.timing_cache == tmp_path / "t.cache" and isinstance(options.timing_cache, Path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.workspace_mb = 1  # type: ignore[misc]


def test_to_dict_is_json_and_from_dict_gives_the_same_options(tmp_path: Path) -> None:
    options = TensorRTOptions(int8_mode="implicit", workspace_mb=512, timing_cache=tmp_path / "t.cache",
                              opt_level=4, dla_core=1, version_compatible=True, high_precision="fp32", tf32=False)
    data = json.loads(json.dumps(options.to_dict()))
    assert data == {"int8_mode": "implicit", "workspace_mb": 512, "timing_cache": str(tmp_path / "t.cache"),
                    "opt_level": 4, "dla_core": 1, "version_compatible": True, "high_precision": "fp32",
                    "tf32": False}
    assert TensorRTOptions.from_dict(data) == options
    assert TensorRTOptions.from_dict(TensorRTOptions().to_dict()) == TensorRTOptions()


def test_from_dict_reads_a_sidecar_written_before_the_options_object() -> None:
    """The ``options`` of an FP32 engine's sidecar as edgeres wrote them before: no high_precision key, int8_mode
    null, the build's own facts beside the options."""
    old = {"workspace_mb": 256, "timing_cache": None, "opt_level": 5, "dla_core": None, "version_compatible": True,
           "tf32": True, "dla_layers": None, "int8_mode": None, "layer_precisions": {"Float": 7}}
    assert TensorRTOptions.from_dict(old) == TensorRTOptions(workspace_mb=256, opt_level=5, version_compatible=True)


def test_a_sidecar_holding_an_impossible_value_is_refused_like_the_flag() -> None:
    with pytest.raises(InputError, match="--opt-level must be 0..5, got 7"):
        TensorRTOptions.from_dict({"opt_level": 7})


def test_flags_set_names_only_what_differs_from_the_defaults(tmp_path: Path) -> None:
    assert TensorRTOptions().flags_set() == []
    assert TensorRTOptions(high_precision="fp32").flags_set() == []  # never among the flags ONNX Runtime warns about
    options = TensorRTOptions(int8_mode="implicit", workspace_mb=64, timing_cache=tmp_path / "t", opt_level=3,
                              dla_core=0, version_compatible=True, tf32=False)
    assert options.flags_set() == ["--workspace", "--timing-cache", "--opt-level", "--dla-core",
                                   "--version-compatible", "--no-tf32", "--int8-mode implicit"]
