"""edgeres.environment: the record, and external Jetson/GPU tools faked as scripts on PATH (present, failing,
hanging, absent)."""
from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from edgeres import __version__
from edgeres import environment as env_mod
from edgeres.environment import Environment, collect, jetson_clocks, jetson_model, jetson_power_mode, run_tool


SLEEP = shutil.which("sleep")  # found before the fixture narrows PATH


def _tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder that is the whole PATH, so only the fakes written into it exist."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_jetson_power_mode_and_clocks_come_from_the_tools(tools: Path) -> None:
    _tool(tools, "nvpmodel", 'echo "NV Power Mode: MAXN"; echo 0')
    _tool(tools, "jetson_clocks",
          'if [ "$1" = "--show" ]; then echo "SOC family:tegra234"; echo "GPU MinFreq=1300500000"; fi')
    assert jetson_power_mode() == "NV Power Mode: MAXN / 0"
    assert jetson_clocks() == "SOC family:tegra234\nGPU MinFreq=1300500000"


def test_absent_failing_and_hanging_tools_give_none(tools: Path) -> None:
    assert jetson_power_mode() is None and jetson_clocks() is None  # absent
    _tool(tools, "nvpmodel", "echo 'need root' >&2; exit 1")
    assert jetson_power_mode() is None  # fails
    _tool(tools, "jetson_clocks", f"{SLEEP} 10; echo late")  # a child process holds the output pipe open
    start = time.perf_counter()
    assert jetson_clocks(timeout_s=0.3) is None  # hangs
    assert 0.3 <= time.perf_counter() - start < 5


def test_run_tool_passes_arguments(tools: Path) -> None:
    _tool(tools, "echoargs", 'echo "$@"')
    assert run_tool(["echoargs", "-q", "x y"]) == "-q x y"


def test_collect_on_a_cpu_backend_names_the_cpu(tools: Path) -> None:
    env = collect(backend="onnxruntime", threads=2, artifact_sha256="ab" * 32)
    assert env.device == env.cpu_model and env.cpu_model
    assert env.backend_version  # onnxruntime's installed version
    assert env.threads == 2 and env.cpu_count >= 1
    assert env.gpu_name is None and env.power_mode is None and env.clocks is None
    assert env.edgeres_version == __version__ and env.artifact_sha256 == "ab" * 32


def test_collect_on_tensorrt_names_the_gpu(tools: Path) -> None:
    _tool(tools, "nvidia-smi", 'echo "NVIDIA H100 80GB HBM3"; echo "NVIDIA H100 80GB HBM3"')
    env = collect(backend="tensorrt", backend_version="10.13.3")
    assert env.device == env.gpu_name == "NVIDIA H100 80GB HBM3"
    assert env.backend_version == "10.13.3"


def test_collect_on_a_jetson(tools: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_file = tmp_path / "model"
    model_file.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr(env_mod, "_JETSON_MODEL_FILE", model_file)
    _tool(tools, "nvpmodel", 'echo "NV Power Mode: 15W"; echo 1')
    env = collect(backend="tensorrt", backend_version="10.3.0")
    assert env.jetson_model == "NVIDIA Jetson AGX Orin Developer Kit"
    assert env.device == env.jetson_model  # no nvidia-smi on a Jetson
    assert env.power_mode == "NV Power Mode: 15W / 1"


def test_jetson_model_ignores_other_boards(tmp_path: Path) -> None:
    board = tmp_path / "model"
    board.write_text("Raspberry Pi 5 Model B\x00")
    assert jetson_model(model_file=board) is None
    assert jetson_model(model_file=tmp_path / "absent") is None


def test_round_trip_and_differences() -> None:
    env = Environment(backend="onnxruntime", backend_version="1.32.0", device="cpu", cpu_model="cpu", cpu_count=2)
    again = Environment.from_dict({**env.to_dict(), "unknown_future_field": 1})
    assert again == env
    other = Environment.from_dict({**env.to_dict(), "backend_version": "1.33.0", "threads": 4})
    assert env.differences(other) == {"backend_version": ("1.32.0", "1.33.0"), "threads": (None, 4)}
    assert env.differences(other, keys=("device",)) == {}


def test_no_tool_is_run_through_a_shell(tools: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _tool(tools, "nvpmodel", f'echo "$1"; : > {marker}')  # only shell builtins: PATH holds nothing else
    assert run_tool(["nvpmodel", "$(echo injected); echo twice"]) == "$(echo injected); echo twice"
    assert marker.exists() and os.environ["PATH"] == str(tools)
