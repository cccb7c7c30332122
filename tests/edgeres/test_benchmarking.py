"""edgeres.bench: timing loops, trtexec's definitions, profile limits, stage split, preprocessing, JSON, CLI.

The tiny models here are real ONNX files (``helpers.colour``: GlobalAveragePool -> Gemm) that ONNX Runtime runs in
microseconds; latency is injected with ``helpers.runners.SleepRunner`` on the ``virtual_clock`` fixture.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeres.backends.base import BatchProfile
from edgeres.benchmarking import (
    BenchResult, bench, describe_artifact, load_result, parse_batches, parse_duration, time_calls, time_preprocess,
)
from edgeres.card import ModelCard, Preprocess
from edgeres.errors import InputError
from helpers.clocks import VirtualClock
from helpers.colour import CLASSES, colour_images, colour_model
from helpers.runners import SleepRunner


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return colour_model(tmp_path / "colour.onnx")


def test_bench_measures_each_batch_with_trtexec_definitions(model: Path) -> None:
    result = bench(model, batches=(1, 4), warmup_s=0.0, iterations=20, quiet=True)
    assert [r.batch for r in result.results] == [1, 4]
    for r in result.results:
        assert r.iterations == 20 and r.latency.count == 20
        assert r.throughput == pytest.approx(20 / r.wall_s)  # inferences / total host wall time
        assert r.images_per_s == pytest.approx(r.throughput * r.batch)
        assert r.latency.min <= r.latency.median <= r.latency.p99 <= r.latency.max
        assert r.latency.median == pytest.approx(np.median(r.samples_ms))
        assert r.wall_s * 1e3 >= sum(r.samples_ms) * 0.999  # the loop's wall time covers every timed call
        assert "compute" in r.stages and "h2d" not in r.stages  # ORT on the CPU has no copies to report
    assert result.artifact.backend == "onnxruntime" and result.artifact.arch == "colour"
    assert result.environment.artifact_sha256 == result.artifact.sha256
    assert result.environment.backend_version == onnx_runtime_version()
    assert result.preprocess is not None and result.preprocess.source == "synthetic"


def onnx_runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def test_batches_outside_the_profile_are_skipped_with_a_note(tmp_path: Path) -> None:
    fixed = colour_model(tmp_path / "fixed4.onnx", batch=4)
    result = bench(fixed, batches="1,4,8", warmup_s=0, iterations=3, preprocess=False, quiet=True)
    assert [r.batch for r in result.results] == [4]
    assert [s["batch"] for s in result.skipped] == [1, 8]
    assert "4:4:4" in result.skipped[0]["reason"]
    with pytest.raises(InputError, match="no requested batch size"):
        bench(fixed, batches=(1, 2), warmup_s=0, iterations=3, preprocess=False, quiet=True)


def test_real_sleep_is_measured_in_wall_time(model: Path) -> None:
    card = ModelCard(arch="x", class_names=CLASSES, preprocess=Preprocess.small(size=16))
    calls = time_calls(SleepRunner(card, ms=2.0), np.zeros((1, 3, 16, 16), np.float32), iterations=5)
    assert min(calls.latency_ms) >= 2.0 and calls.wall_s * 1e3 >= sum(calls.latency_ms)


def test_stage_split_and_no_transfers_use_the_runner_stage_times(model: Path) -> None:
    card = ModelCard(arch="x", class_names=CLASSES, preprocess=Preprocess.small(size=16))
    runner = SleepRunner(card, ms=0.5, stages=True)
    with_copies = bench(model, runner=runner, batches=(2,), warmup_s=0, iterations=5, preprocess=False, quiet=True)
    r = with_copies.results[0]
    assert set(r.stages) == {"h2d", "compute", "d2h"}
    assert (r.stages["h2d"].median, r.stages["compute"].median, r.stages["d2h"].median) == (0.25, 1.0, 0.125)
    assert r.latency.min >= 0.5  # host wall time of the call
    compute_only = bench(model, runner=runner, batches=(2,), warmup_s=0, iterations=5, transfers=False,
                         preprocess=False, quiet=True)
    assert compute_only.results[0].samples_ms == [1.0] * 5


def test_duration_loop_runs_at_least_the_duration_and_the_minimum_calls(virtual_clock: VirtualClock) -> None:
    card = ModelCard(arch="x", class_names=CLASSES, preprocess=Preprocess.small(size=16))
    runner = SleepRunner(card, ms=1.0, clock=virtual_clock)
    calls = time_calls(runner, np.zeros((1, 3, 16, 16), np.float32), duration_s=0.0305, warmup_s=0.0101,
                       min_iterations=3)
    assert runner.calls == 11 + 31  # warm-up until 10.1 ms have passed, then until 30.5 ms have
    assert calls.latency_ms == pytest.approx([1.0] * 31) and calls.wall_s == pytest.approx(0.031)
    capped = time_calls(runner, np.zeros((1, 3, 16, 16), np.float32), duration_s=1.0, max_iterations=7)
    assert len(capped.latency_ms) == 7
    few = time_calls(runner, np.zeros((1, 3, 16, 16), np.float32), duration_s=1e-6, min_iterations=4)
    assert len(few.latency_ms) == 4
    with pytest.raises(InputError):
        time_calls(runner, np.zeros((1, 3, 16, 16), np.float32), duration_s=1.0, iterations=3)


def test_preprocess_is_timed_on_the_card_dataset_when_it_exists(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    colour_images(root / "val", per_class=2)
    card = ModelCard(arch="x", class_names=CLASSES, preprocess=Preprocess.small(size=16),
                     dataset={"root": str(root)})
    timing = time_preprocess(card)
    assert timing.source == "images" and timing.detail == str(root / "val") and timing.per_image.count == 6
    gone = ModelCard(arch="x", class_names=CLASSES, preprocess=Preprocess.small(size=16),
                     dataset={"root": str(tmp_path / "moved")})
    assert time_preprocess(gone).source == "synthetic"


def test_result_round_trips_through_json(model: Path, tmp_path: Path) -> None:
    result = bench(model, batches=(1,), warmup_s=0, iterations=5, quiet=True)
    path = result.write_json(tmp_path / "bench.json")
    data = json.loads(path.read_text())
    assert data["kind"] == "edgeres.bench" and data["results"][0]["latency_ms"]["count"] == 5
    again = load_result(path)
    assert again.to_dict() == data
    with pytest.raises(InputError, match="not an edgeres bench result"):
        BenchResult.from_dict({"results": []})


def test_describe_artifact_hashes_a_plain_onnx(model: Path) -> None:
    info = describe_artifact(model)
    assert info.sha256 == info.model_sha256 and len(info.sha256) == 64
    with pytest.raises(InputError, match="not found"):
        describe_artifact(model.with_name("missing.onnx"))


@pytest.mark.parametrize("text, expected", [("1s", 1.0), ("500ms", 0.5), ("2", 2.0), ("0.25 s", 0.25)])
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["fast", "-1s", "nan", "1h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InputError, match="duration"):
        parse_duration(text)


def test_parse_batches() -> None:
    assert parse_batches("1, 8,32,8") == (1, 8, 32)
    for bad in ("0", "a,b", ""):
        with pytest.raises(InputError):
            parse_batches(bad)


def test_cli_bench_writes_json_markdown_and_png(model: Path, tmp_path: Path) -> None:
    from cli import cli

    out, md, png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    res = CliRunner().invoke(cli, ["-q", "bench", str(model), "--batch", "1,2,4096", "--iterations", "5",
                                   "--warmup", "0ms", "--out", str(out), "--report", str(md), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "latency per inference (ms)" in res.output and "batch 4096 skipped" in res.output
    assert [r["batch"] for r in json.loads(out.read_text())["results"]] == [1, 2]
    assert "| batch | n | min |" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_rejects_bad_durations_and_both_limits(model: Path) -> None:
    from cli import cli

    res = CliRunner().invoke(cli, ["bench", str(model), "--duration", "soon"])
    assert res.exit_code == 2 and "duration" in res.output
    res = CliRunner().invoke(cli, ["bench", str(model), "--duration", "1s", "--iterations", "3"])
    assert res.exit_code == 2 and "not both" in res.output
    res = CliRunner().invoke(cli, ["bench", str(model), "--iterations", "3", "--plot", "latency.jpg"])
    assert res.exit_code == 2 and "latency.jpg must end in .png" in res.output


def test_built_artifact_is_described_by_its_sidecar(model: Path, tmp_path: Path) -> None:
    from edgeres import backends
    from edgeres.io import sha256_file

    built = backends.build(model, backend="onnxruntime", precision="fp32", out=tmp_path / "colour.fp32.onnx")
    info = describe_artifact(built)
    assert info.sha256 == sha256_file(built) and info.model_sha256 == sha256_file(model)
    assert (info.backend, info.precision, info.arch) == ("onnxruntime", "fp32", "colour")
    result = bench(built, batches=(2,), warmup_s=0, iterations=3, preprocess=False, quiet=True)
    assert result.artifact == info and result.profile == "1:8:32"


def test_environment_names_the_gpu_when_ort_runs_on_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeres.benchmarking import ArtifactInfo, runner_environment

    (tmp_path / "nvidia-smi").write_text('#!/bin/sh\necho "NVIDIA H100 80GB HBM3"\n')
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    card = ModelCard(arch="x", class_names=CLASSES, preprocess=Preprocess.small(size=16))
    runner = SleepRunner(card, ms=0.1)
    info = ArtifactInfo("m.onnx", "a" * 64, "a" * 64, "onnxruntime", "fp32", "x")
    assert runner_environment(runner, info).device != "NVIDIA H100 80GB HBM3"  # CPU provider: the CPU
    runner.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # type: ignore[attr-defined]
    env = runner_environment(runner, info)
    assert env.device == env.gpu_name == "NVIDIA H100 80GB HBM3"


def test_tensorrt_engine_reports_the_stage_split_and_its_gpu(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the recorded TensorRT 10.13 API's test double (CPU-only): H2D / compute / D2H per call, the GPU
    named by the CUDA driver, TensorRT's version."""
    from trt_double import install

    from edgeres.backends import tensorrt as trt_backend
    from edgeres.backends.base import Precision
    from edgeres.io import sha256_file

    install(monkeypatch, "10.13.3")
    src = colour_model(tmp_path / "colour.onnx")
    engine = tmp_path / "colour.fp32.engine"
    card = ModelCard(arch="colour", class_names=CLASSES, preprocess=Preprocess.small(size=16))
    trt_backend.build_engine(src, out=engine, precision=Precision.FP32, card=card,
                             source_onnx_sha256=sha256_file(src), profile=BatchProfile(1, 4, 8), progress=False)
    result = bench(engine, batches="1,4,16", warmup_s=0, iterations=4, preprocess=False, quiet=True)
    assert [r.batch for r in result.results] == [1, 4] and result.skipped[0]["batch"] == 16
    assert all(set(r.stages) == {"h2d", "compute", "d2h"} for r in result.results)
    assert result.artifact.backend == "tensorrt" and result.artifact.model_sha256 == sha256_file(src)
    env = result.environment
    assert env.device == env.gpu_name == "NVIDIA Jetson AGX Orin (fake)" and env.backend_version.startswith("10.13.3")
