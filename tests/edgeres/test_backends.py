"""The backend dispatcher and the ONNX Runtime backend, on a tiny real ResNet-20 (1x32x32, 10 classes)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeres import backends
from edgeres.backends import BackendName, BatchProfile, Precision, Sidecar, sidecar_path
from edgeres.backends.onnxruntime import OnnxRuntimeRunner, physical_cores, session_options
from edgeres.card import ModelCard, Preprocess
from edgeres.errors import BackendError, BackendUnavailable, InputError, ModelError
from edgeres.io import sha256_file
from helpers.models import make_tiny_onnx


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def fp32_artifact(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("art") / "tiny.fp32.onnx"
    return backends.build(tiny, backend="auto", precision="fp32", out=out, profile=BatchProfile(1, 4, 16))


def _batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32)).astype(np.float32)


def test_auto_picks_onnxruntime_here_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edgeres.backends"):
        choice, reason = backends.choose_backend("auto")
    assert choice is BackendName.ONNXRUNTIME
    assert "TensorRT unavailable" in reason and "ONNX Runtime" in reason
    assert any("onnxruntime" in r.getMessage() and "TensorRT" in r.getMessage() for r in caplog.records)
    assert backends.choose_backend("onnxruntime")[0] is BackendName.ONNXRUNTIME
    with pytest.raises(BackendUnavailable, match="--backend onnxruntime"):
        backends.choose_backend("tensorrt")
    with pytest.raises(InputError, match="unknown backend"):
        backends.choose_backend("openvino")


def test_fp32_build_writes_a_sidecar_that_round_trips(tiny: Path, fp32_artifact: Path) -> None:
    sc = Sidecar.read(sidecar_path(fp32_artifact))
    assert sc.backend == "onnxruntime" and sc.precision == "fp32"
    assert sc.backend_version == ort.__version__
    assert sc.artifact_file == fp32_artifact.name
    assert sc.artifact_sha256 == sha256_file(fp32_artifact)
    assert sc.source_onnx_sha256 == sha256_file(tiny)
    assert sc.profile == {"min": 1, "opt": 4, "max": 16}
    assert sc.card.arch == "resnet20" and sc.card.class_names[3] == "c3"
    assert Sidecar.from_dict(json.loads(json.dumps(sc.to_dict()))) == sc
    # graph-optimised: BN folded into convolutions, and the card still in the file
    ops = {n.op_type for n in onnx.load(str(fp32_artifact)).graph.node}
    assert "BatchNormalization" not in ops


def test_runner_matches_bare_onnxruntime(tiny: Path, fp32_artifact: Path) -> None:
    x = _batch(3)
    ref = ort.InferenceSession(str(tiny), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with backends.open(fp32_artifact, threads=1) as runner:
        assert runner.backend == "onnxruntime" and runner.precision == "fp32"
        assert runner.profile == BatchProfile(1, 4, 16)
        logits = runner.infer(x)
        times = runner.last_stage_times
    assert logits.shape == (3, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    assert times is not None and times.compute_ms > 0 and times.h2d_ms is None and times.d2h_ms is None


def test_runner_refuses_bad_batches(fp32_artifact: Path) -> None:
    with backends.open(fp32_artifact) as runner:
        with pytest.raises(InputError, match=r"shape \(N, 1, 32, 32\)"):
            runner.infer(np.zeros((2, 3, 32, 32), np.float32))
        with pytest.raises(InputError, match="outside .* profile 1:4:16"):
            runner.infer(np.zeros((17, 1, 32, 32), np.float32))
        out = runner.infer(_batch(2).astype(np.float64))  # other float dtypes are converted
        assert out.shape == (2, 10)


def test_plain_onnx_with_card_opens_on_onnxruntime(tiny: Path, tmp_path: Path) -> None:
    with backends.open(tiny) as runner:
        assert runner.backend == "onnxruntime" and runner.precision == "fp32"
        assert runner.infer(_batch(5)).shape == (5, 10)
    bare = make_tiny_onnx(tmp_path / "bare.onnx", card=False)
    with pytest.raises(ModelError, match="no edgeres model card"):
        backends.open(bare)


def test_open_refuses_engine_without_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "model.int8.engine"
    engine.write_bytes(b"\x00engine")
    with pytest.raises(BackendError, match="no sidecar .*edgeres build"):
        backends.open(engine)
    with pytest.raises(InputError, match="not found"):
        backends.open(tmp_path / "missing.onnx")


def _copy_artifact(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    dst.write_bytes(src.read_bytes())
    sidecar_path(dst).write_bytes(sidecar_path(src).read_bytes())
    return dst


def test_open_refuses_a_changed_file(fp32_artifact: Path, tmp_path: Path) -> None:
    art = _copy_artifact(fp32_artifact, tmp_path)
    with backends.open(art):
        pass
    art.write_bytes(art.read_bytes() + b"\x00")
    with pytest.raises(BackendError, match="does not match its sidecar .*rebuild .*--precision fp32"):
        backends.open(art)


def _edit_sidecar(art: Path, **changes: object) -> None:
    data = json.loads(sidecar_path(art).read_text())
    data.update(changes)
    sidecar_path(art).write_text(json.dumps(data))


def test_open_refuses_a_backend_or_version_that_cannot_run_it(fp32_artifact: Path, tmp_path: Path) -> None:
    art = _copy_artifact(fp32_artifact, tmp_path)
    _edit_sidecar(art, backend="tensorrt", backend_version="10.3.0")
    with pytest.raises(BackendUnavailable, match="TensorRT .*cannot run here.*--backend onnxruntime"):
        backends.open(art)
    _edit_sidecar(art, backend="onnxruntime", backend_version="99.0.0")
    with pytest.raises(BackendError, match="built with onnxruntime 99.0.0 .*rebuild"):
        backends.open(art)
    _edit_sidecar(art, backend="openvino", backend_version="1")
    with pytest.raises(BackendError, match="unknown backend 'openvino'"):
        backends.open(art)
    sidecar_path(art).write_text("{not json")
    with pytest.raises(BackendError, match="cannot read artifact sidecar"):
        backends.open(art)


def test_open_rejects_unknown_options(fp32_artifact: Path) -> None:
    with pytest.raises(InputError, match="unknown runner option"):
        backends.open(fp32_artifact, warp_speed=True)


def test_build_refuses_onnx_without_card_and_int8_without_ranges(tmp_path: Path, tiny: Path) -> None:
    bare = make_tiny_onnx(tmp_path / "bare.onnx", card=False)
    with pytest.raises(ModelError, match="carries no edgeres model card"):
        backends.build(bare, precision="fp32", out=tmp_path / "bare.fp32.onnx")
    with pytest.raises(InputError, match="int8 needs calibration ranges"):
        backends.build(tiny, precision=Precision.INT8, out=tmp_path / "t.int8.onnx")
    with pytest.raises(InputError, match="must end in .onnx"):
        backends.build(tiny, backend="onnxruntime", precision="fp32", out=tmp_path / "t.engine")
    assert not (tmp_path / "t.engine").exists()


def test_session_options_defaults() -> None:
    assert physical_cores() >= 1
    so = session_options()
    assert so.intra_op_num_threads == physical_cores()
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert session_options(threads=3).intra_op_num_threads == 3
    with pytest.raises(InputError, match="--threads must be >= 1"):
        session_options(threads=0)


def test_runner_used_directly_has_the_protocol(tiny: Path) -> None:
    card = ModelCard(arch="resnet20", class_names=[str(i) for i in range(10)],
                     preprocess=Preprocess.small(size=32, channels=1))
    runner = OnnxRuntimeRunner(tiny, card=card, threads=1)
    assert runner.profile == BatchProfile(1, 8, 1024)  # dynamic batch axis
    runner.close()
    with pytest.raises(BackendError, match="closed"):
        runner.infer(_batch(1))


def test_onnxruntime_names_every_tensorrt_option_it_ignores(tiny: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="edgeres.backends"):
        backends.build(tiny, backend="onnxruntime", precision="fp32", out=tmp_path / "t.fp32.onnx",
                       tensorrt=backends.TensorRTOptions(dla_core=0, workspace_mb=1024))
    warning = next(r.getMessage() for r in caplog.records if "ignores the TensorRT" in r.getMessage())
    assert "--dla-core" in warning and "--workspace" in warning  # DLA core 0 is a choice, not "unset"
