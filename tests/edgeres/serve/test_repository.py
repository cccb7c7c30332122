"""export-triton and the serving repository: every config.pbtxt parses with Triton's own schema
(tritonclient's model_config_pb2), for ONNX artifacts at fp32/fp16/int8 and several batch profiles and for a
TensorRT engine sidecar; the layout, labels and batching follow the artifact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from edgeres import backends
from edgeres.backends import BatchProfile, Sidecar, write_sidecar
from edgeres.errors import BackendError, InputError, ModelError
from edgeres.io import sha256_file
from edgeres.serve.config import parse_config, schema, validate_config
from edgeres.serve.repository import export_triton, model_name, serving_repository
from helpers.models import TINY_CLASSES, export_tiny, make_tiny_onnx, tiny_resnet20

PROFILES = [BatchProfile(1, 8, 16), BatchProfile(4, 4, 4), BatchProfile(1, 1, 1), BatchProfile(2, 16, 64)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_onnx(tmp_path_factory.mktemp("serve-repo") / "tiny.onnx")


@pytest.fixture(scope="module")
def ranges(tiny: Path):
    from PIL import Image

    from edgeres.calibrating import calibrate

    folder = tiny.parent / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
    return calibrate(tiny, data=folder, method="minmax", images=8, batch_size=4, quiet=True)


@pytest.fixture(scope="module")
def artifacts(tiny: Path, ranges) -> dict[tuple[str, str], Path]:
    out = {}
    for precision in ("fp32", "fp16", "int8"):
        for profile in PROFILES:
            path = tiny.parent / f"tiny.{precision}.{profile.min}-{profile.opt}-{profile.max}.onnx"
            backends.build(tiny, backend="onnxruntime", precision=precision, out=path, profile=profile,
                           ranges=ranges if precision == "int8" else None)
            out[precision, str(profile)] = path
    return out


def _engine(tmp_path: Path, *, profile: dict[str, int] | None = None, precision: str = "int8") -> Path:
    """A TensorRT artifact as `edgeres build --backend tensorrt` leaves it: engine bytes and a sidecar."""
    from edgeres.card import ModelCard, Preprocess

    engine = tmp_path / f"model.{precision}.engine"
    engine.write_bytes(b"serialized engine " + bytes(range(64)))
    card = ModelCard(arch="resnet20", class_names=TINY_CLASSES, preprocess=Preprocess.small(size=32, channels=1))
    write_sidecar(engine, Sidecar(backend="tensorrt", precision=precision, card=card, artifact_file=engine.name,
                                  artifact_sha256=sha256_file(engine), source_onnx_sha256="0" * 64,
                                  backend_version="10.3.0", profile=profile or {"min": 1, "opt": 8, "max": 32},
                                  fingerprint={"device": "Orin (sm_87)"}))
    return engine


def test_schema_is_tritons_own_and_rejects_what_triton_rejects() -> None:
    assert schema().ModelConfig.DESCRIPTOR.full_name == "inference.ModelConfig"
    with pytest.raises(ModelError, match="no field named \"max_batch\""):
        parse_config('name: "m"\nmax_batch: 4\n')
    with pytest.raises(ModelError, match=r"preferred batch sizes \[16\] are outside 1..8"):
        validate_config('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
                        'dynamic_batching { preferred_batch_size: [ 16 ] }\n')
    with pytest.raises(ModelError, match="dynamic batching needs max_batch_size > 0"):
        validate_config('name: "m"\nbackend: "python"\ndynamic_batching { }\n')


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("profile", PROFILES, ids=str)
def test_onnx_artifacts_export_to_configs_triton_parses(artifacts, tmp_path: Path, precision: str,
                                                        profile: BatchProfile) -> None:
    art = artifacts[precision, str(profile)]
    folder = export_triton(art, tmp_path / "repo", instances=2, max_queue_delay_us=250)
    assert folder == tmp_path / "repo" / model_name(art)
    config = validate_config((folder / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.default_model_filename == "model.onnx"
    assert config.max_batch_size == profile.max
    assert list(config.dynamic_batching.preferred_batch_size) == sorted({profile.opt, profile.max})
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.kind, g.count) for g in config.instance_group] == [(schema().ModelInstanceGroup.KIND_GPU, 2)]
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims)) == ("input", [1, 32, 32])
    assert (out.name, list(out.dims), out.label_filename) == ("logits", [10], "labels.txt")
    assert inp.data_type == out.data_type == schema().TYPE_FP32  # edgeres's ORT artifacts keep FP32 I/O
    assert (folder / "labels.txt").read_text().split() == TINY_CLASSES
    assert (folder / "1" / "model.onnx").read_bytes() == art.read_bytes()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [folder.name]  # no staging left behind


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_ep_block_carries_the_precision(artifacts, tmp_path: Path, precision: str) -> None:
    folder = export_triton(artifacts[precision, "1:8:16"], tmp_path, tensorrt_ep=True)
    config = validate_config((folder / "config.pbtxt").read_text())
    (acc,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == precision.upper()
    with pytest.raises(InputError, match="needs GPU instances"):
        export_triton(artifacts[precision, "1:8:16"], tmp_path, tensorrt_ep=True, device="cpu", force=True)


@pytest.mark.parametrize("profile", [{"min": 1, "opt": 8, "max": 32}, {"min": 4, "opt": 4, "max": 4}])
def test_engine_sidecar_exports_a_tensorrt_plan(tmp_path: Path, profile: dict[str, int]) -> None:
    engine = _engine(tmp_path, profile=profile)
    folder = export_triton(engine, tmp_path / "repo", name="resnet_int8")
    text = (folder / "config.pbtxt").read_text()
    config = validate_config(text)
    assert config.name == "resnet_int8" and config.platform == "tensorrt_plan"
    assert config.default_model_filename == "model.plan" and config.max_batch_size == profile["max"]
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert "TensorRT 10.3.0" in text and "Orin (sm_87)" in text  # the container must match the engine
    if profile["min"] > 1:
        assert "at least 4 images per request" in text
    with pytest.raises(InputError, match="runs on a GPU only"):
        export_triton(engine, tmp_path / "repo", device="cpu", force=True)


def test_an_engine_that_no_longer_matches_its_sidecar_is_refused(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    engine.write_bytes(b"another engine")
    with pytest.raises(BackendError, match="does not match its sidecar"):
        export_triton(engine, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_existing_model_is_kept_without_force_and_replaced_with_it(artifacts, tmp_path: Path) -> None:
    art = artifacts["fp32", "1:8:16"]
    folder = export_triton(art, tmp_path, name="m")
    (folder / "config.pbtxt").write_text("# hand edited\n")
    with pytest.raises(InputError, match="already exists; pass --force"):
        export_triton(art, tmp_path, name="m")
    assert (folder / "config.pbtxt").read_text() == "# hand edited\n"
    export_triton(art, tmp_path, name="m", force=True)
    assert validate_config((folder / "config.pbtxt").read_text()).name == "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_serving_repository_has_a_tensor_and_an_image_model(artifacts, tmp_path: Path) -> None:
    art = artifacts["int8", "2:16:64"]
    served = serving_repository(art, tmp_path / "models", name="tiny", instances=3, max_queue_delay_us=700)
    assert (served.tensor_model, served.image_model) == ("tiny", "tiny_image")
    tensor = validate_config((tmp_path / "models" / "tiny" / "config.pbtxt").read_text())
    image = validate_config((tmp_path / "models" / "tiny_image" / "config.pbtxt").read_text())
    for config in (tensor, image):
        assert config.backend == "python" and config.max_batch_size == 64
        assert config.dynamic_batching.max_queue_delay_microseconds == 700
        assert config.instance_group[0].count == 3
        assert config.parameters["edgeres_artifact"].string_value == str(art.resolve())
    assert tensor.input[0].data_type == schema().TYPE_FP32 and list(tensor.input[0].dims) == [1, 32, 32]
    assert image.input[0].data_type == schema().TYPE_UINT8 and image.input[0].allow_ragged_batch
    assert image.output[0].label_filename == "labels.txt"
    shim = (tmp_path / "models" / "tiny_image" / "1" / "model.py").read_text()
    assert "from edgeres.serve.python_model import ImageModel as TritonPythonModel" in shim
    compile(shim, "model.py", "exec")
    import subprocess
    import sys

    # the shim alone (as the stub's embedded Python runs it) puts edgeres on the path and finds the model class
    probe = shim.replace("from edgeres.serve.python_model import ImageModel as TritonPythonModel",
                         "import edgeres.serve.python_model as m; print(m.ImageModel.role)")
    run = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, cwd="/")
    assert run.returncode == 0 and run.stdout.strip() == "image", run.stderr
    with pytest.raises(InputError, match="is not empty"):
        serving_repository(art, tmp_path / "models")


def test_cli_export_triton(artifacts, tmp_path: Path) -> None:
    art = artifacts["fp16", "1:8:16"]
    res = CliRunner().invoke(cli, ["-q", "export-triton", str(art), "--repo", str(tmp_path), "--device", "cpu",
                                   "--name", "digits"])
    assert res.exit_code == 0, res.output
    assert f"wrote {tmp_path / 'digits' / 'config.pbtxt'}" in res.output
    config = validate_config((tmp_path / "digits" / "config.pbtxt").read_text())
    assert config.instance_group[0].kind == schema().ModelInstanceGroup.KIND_CPU
    res = CliRunner().invoke(cli, ["-q", "export-triton", str(art), "--repo", str(tmp_path), "--name", "digits"])
    assert res.exit_code == 1 and "already exists; pass --force" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["-q", "export-triton", str(art), "--repo", str(tmp_path), "--name", "../x"])
    assert res.exit_code == 1 and "model name '../x'" in res.output


def test_a_plain_exported_onnx_exports_with_the_batch_its_graph_has(tiny: Path, tmp_path: Path) -> None:
    from edgeres.card import read_onnx_card

    dynamic = validate_config((export_triton(tiny, tmp_path) / "config.pbtxt").read_text())
    assert dynamic.max_batch_size == BatchProfile().max
    fixed = export_tiny(tiny_resnet20(), tmp_path / "fixed4.onnx", read_onnx_card(tiny), batch=4)
    config = validate_config((export_triton(fixed, tmp_path) / "config.pbtxt").read_text())
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [4]


def test_serving_repository_records_the_artifact_identity_and_the_model_refuses_a_changed_file(
        tiny: Path, tmp_path: Path) -> None:
    """What `edgeres check --server` matches a baseline with: the artifact's sha256 and its source model's."""
    from edgeres.serve.python_model import _same_artifact

    art = tmp_path / "copy.fp32.onnx"
    backends.build(tiny, backend="onnxruntime", precision="fp32", out=art, profile=BatchProfile(1, 4, 8))
    serving_repository(art, tmp_path / "models", name="tiny")
    for model in ("tiny", "tiny_image"):
        config = validate_config((tmp_path / "models" / model / "config.pbtxt").read_text())
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["edgeres_artifact_sha256"] == sha256_file(art)
        assert params["edgeres_model_sha256"] == sha256_file(tiny) != sha256_file(art)  # the source ONNX
    _same_artifact(params)  # unchanged: served
    art.write_bytes(art.read_bytes() + b"\0")
    with pytest.raises(RuntimeError, match="changed after `edgeres serve` wrote this model"):
        _same_artifact(params)
    serving_repository(tiny, tmp_path / "plain", name="plain")  # a plain ONNX is its own source
    config = validate_config((tmp_path / "plain" / "plain" / "config.pbtxt").read_text())
    assert config.parameters["edgeres_artifact_sha256"].string_value == sha256_file(tiny)
    assert config.parameters["edgeres_model_sha256"].string_value == sha256_file(tiny)
