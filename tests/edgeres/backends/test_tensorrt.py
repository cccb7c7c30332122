"""The TensorRT builder and pycuda runtime, run end to end on the CPU against the test double of each real API
surface (TensorRT 8.6.1, 10.13.3, 11.4.0): build fp32/fp16/int8 (explicit and implicit), serialize, open, infer
in batches incl. a partial one, stage times; and what must differ between the versions."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from trt_double import VERSIONS, FakeDevice, FakeGpu, install, version_int

from edgeres.backends import tensorrt as trt_backend
from edgeres.backends.base import BatchProfile, Precision, read_sidecar_for
from edgeres.backends.options import TensorRTOptions
from edgeres.card import ModelCard, Preprocess
from edgeres.errors import BackendError, BackendUnavailable, InputError, ModelError
from edgeres.io import sha256_file
from helpers.reference import cpu_logits as _reference

PROFILE = BatchProfile(1, 4, 8)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y)  # a residual Add, as in a ResNet block
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard(arch="tiny", class_names=[str(i) for i in range(10)], preprocess=Preprocess.small(size=16))


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Tiny().eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter warns; dynamo needs onnxscript
        torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def qdq_onnx(fp32_onnx: Path) -> Path:
    from edgeres.quantization import quantize_model, tensors_to_observe

    model = onnx.load(str(fp32_onnx))
    amax = {name: 4.0 for name in tensors_to_observe(model)}
    qmodel = quantize_model(model, amax)
    path = fp32_onnx.with_name("tiny.qdq.onnx")
    onnx.save(qmodel, str(path))
    return path


@pytest.fixture(params=VERSIONS)
def double(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    return install(monkeypatch, request.param)


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _engine_header(path: Path) -> dict:
    """What the double's serialized engine says about how it was built."""
    data = path.read_bytes()
    (n,) = struct.unpack("<I", data[8:12])
    return json.loads(data[12:12 + n])


def _build(src: Path, tmp_path: Path, card: ModelCard, precision: Precision, *, calibration_cache=None,
           calibration_data=None, **options):
    """build_engine with ``options`` (TensorRTOptions fields) made into the options object on the way."""
    out = tmp_path / f"m.{precision.value}.engine"
    sidecar = trt_backend.build_engine(src, out=out, precision=precision, card=card,
                                       source_onnx_sha256=sha256_file(src), profile=PROFILE, progress=False,
                                       options=TensorRTOptions(**options), calibration_cache=calibration_cache,
                                       calibration_data=calibration_data)
    return out, sidecar


def _cache(tmp_path: Path, fp32_onnx: Path, trt_version: str, algorithm: str = "EntropyCalibration2") -> Path:
    from calibration import trt_cache
    from edgeres.quantization import tensors_to_observe

    amax = {name: 2.0 + i / 10 for i, name in enumerate(tensors_to_observe(onnx.load(str(fp32_onnx))))}
    amax.setdefault("input", 3.0)
    path = tmp_path / "calib.cache"
    trt_cache.write(path, amax, trt_version=trt_version, algorithm=algorithm)
    return path


def _carded_with_ranges(fp32_onnx: Path, tmp_path: Path, card: ModelCard):
    """The tiny ONNX with its card (what `edgeres build` starts from) and fixed ranges for it."""
    from calibration.ranges import Ranges
    from edgeres.card import attach_card_to_onnx
    from edgeres.quantization import tensors_to_observe

    model = onnx.load(str(fp32_onnx))
    attach_card_to_onnx(model, card)
    src = tmp_path / "tiny.card.onnx"
    onnx.save(model, str(src))
    amax = {name: 4.0 for name in tensors_to_observe(model)} | {"input": 4.0}
    ranges = Ranges(amax=amax, method="minmax", num_images=4, model_sha256=sha256_file(src), manifest_sha256="0" * 64,
                    preprocess=card.preprocess.to_dict())
    return src, ranges


@contextlib.contextmanager
def _raw_build(double, onnx_path: Path):
    """TensorRT's own API, as an application would call it: the ONNX parsed into an explicit-batch network with
    a 1:4:8 profile, and a config, all in the GPU's primary context (pushed for the block)."""
    trt, cuda = double.trt, double.cuda
    cuda.init()
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        logger = trt.Logger()
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
                                         if double.version.startswith("8.") else 0)
        parser = trt.OnnxParser(network, logger)
        assert parser.parse(onnx_path.read_bytes())
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        profile.set_shape("input", (1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))
        config.add_optimization_profile(profile)
        yield builder, network, config
    finally:
        cuda.Context.pop()
        ctx.detach()


def _run_batches(out: Path, double) -> tuple[list[np.ndarray], list]:
    results, times = [], []
    with trt_backend.TensorRTRunner(out) as runner:
        for n in (8, 3, 1):  # full, partial, smallest
            results.append(runner.infer(_images(n, seed=n)))
            times.append(runner.last_stage_times)
    return results, times


def test_build_fp32_and_infer_in_batches(double, fp32_onnx: Path, tmp_path: Path, card: ModelCard) -> None:
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    assert out.is_file() and read_sidecar_for(out).artifact_sha256 == sha256_file(out)
    fp = sidecar.fingerprint
    assert fp["tensorrt"] == trt_backend.trt_version() == double.trt.__version__.removesuffix(".post1") and fp["compute_capability"] == "8.7"
    assert fp["gpu"] == FakeDevice().name and fp["cuda"] == "12.2" and fp["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert fp["tensorrt_location"] == f"/double/tensorrt-{double.version}/tensorrt", "which TensorRT was imported"
    assert sidecar.backend == "tensorrt" and sidecar.backend_version == fp["tensorrt"]
    results, times = _run_batches(out, double)
    for n, got in zip((8, 3, 1), results):
        np.testing.assert_allclose(got, _reference(fp32_onnx, _images(n, seed=n)), rtol=1e-4, atol=1e-5)
    for t in times:
        assert t is not None and t.h2d_ms is not None and t.d2h_ms is not None and t.compute_ms >= 0
        assert t.total_ms >= t.compute_ms
    ops = [entry for entry in double.gpu.log]
    assert [o[0] for o in ops[:3]] == ["htod", "execute", "dtoh"]
    assert all(o[2] for o in ops if o[0] in ("htod", "dtoh")), "async copies must use page-locked host memory"
    assert [o[1]["input"] for o in ops if o[0] == "execute"] == [8, 3, 1]
    assert not double.gpu.memory, "device memory freed on close"
    assert all(not c.alive for c in double.gpu.contexts) and not double.gpu.stack()
    # what must differ: 8.x sets EXPLICIT_BATCH; 10.x ignores it and 11.x lacks it
    assert fp["network_flags"] == (["EXPLICIT_BATCH"] if double.version.startswith("8.") else [])


def test_batches_larger_than_the_profile_are_split(double, fp32_onnx: Path, tmp_path: Path, card) -> None:
    out, _ = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    with trt_backend.TensorRTRunner(out) as runner:
        got = runner.infer(_images(19))
    np.testing.assert_allclose(got, _reference(fp32_onnx, _images(19)), rtol=1e-4, atol=1e-5)
    assert [o[1]["input"] for o in double.gpu.log if o[0] == "execute"] == [8, 8, 3]


def test_fp16(double, fp32_onnx: Path, tmp_path: Path, card) -> None:
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP16)
    header = _engine_header(out)
    if double.version == "11.4.0":
        # 11.x: no precision flags exist; the network itself is FP16 (from edgeres.quantization.to_fp16)
        assert not set(header["builder_flags"]) & {"FP16", "INT8"}
        assert header["strongly_typed"] and sidecar.options["layer_precisions"] == {"Half": header["layers"].__len__()}
        assert sidecar.fingerprint["sources"]["network_onnx_sha256"] != sha256_file(fp32_onnx)
    else:
        assert "FP16" in header["builder_flags"] and "INT8" not in header["builder_flags"]
        assert sidecar.fingerprint["sources"]["network_onnx_sha256"] == sha256_file(fp32_onnx)
    with trt_backend.TensorRTRunner(out) as runner:
        got = runner.infer(_images(5))
    np.testing.assert_allclose(got, _reference(fp32_onnx, _images(5)), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("high_precision", ["fp16", "fp32"])
def test_int8_explicit_qdq(double, qdq_onnx: Path, tmp_path: Path, card, high_precision: str) -> None:
    """The unquantized layers run in FP16 by default on every era (8.x: the FP16 flag; 10.x/11.x strongly typed:
    an FP16-typed Q/DQ network), in FP32 on request."""
    from edgeres.quantization import to_fp16

    out, sidecar = _build(qdq_onnx, tmp_path, card, Precision.INT8, high_precision=high_precision)
    header = _engine_header(out)
    flags = set(header["builder_flags"])
    typed = not double.version.startswith("8.")
    if not typed:  # 8.x: Q/DQ networks need the INT8 flag; explicit batch; FP16 by flag
        assert "INT8" in flags and header["network_flags"] & 1
        assert not header["strongly_typed"] and ("FP16" in flags) == (high_precision == "fp16")
    elif double.version.startswith("10."):  # 10.x: strongly typed, no precision flags
        assert sidecar.fingerprint["network_flags"] == ["STRONGLY_TYPED"]
        assert header["strongly_typed"] and not flags & {"FP16", "INT8"}
    else:  # 11.x: always strongly typed; no flag to set
        assert sidecar.fingerprint["network_flags"] == [] and not flags & {"FP16", "INT8"}
    assert sidecar.int8["mode"] == "explicit" and header["int8_scales"] is None
    assert sidecar.int8["high_precision"] == high_precision
    assert sidecar.options["layer_precisions"].get("Int8", 0) > 0
    reference = qdq_onnx
    if typed and high_precision == "fp16":  # what TensorRT parsed: the same Q/DQ with an FP16 float part
        reference = to_fp16(qdq_onnx, tmp_path / "ref.fp16.qdq.onnx")
        assert sidecar.fingerprint["sources"]["network_onnx_sha256"] == sha256_file(reference)
    else:
        assert sidecar.fingerprint["sources"]["network_onnx_sha256"] == sha256_file(qdq_onnx)
    results, times = _run_batches(out, double)
    for n, got in zip((8, 3, 1), results):
        np.testing.assert_allclose(got, _reference(reference, _images(n, seed=n)), rtol=1e-4, atol=1e-4)
    assert all(t.h2d_ms is not None for t in times)


def test_int8_implicit_from_cache(double, fp32_onnx: Path, tmp_path: Path, card) -> None:
    cache = _cache(tmp_path, fp32_onnx, trt_backend.trt_version())
    if double.version == "11.4.0":
        with pytest.raises(InputError, match="removed in TensorRT 11.*--int8-mode explicit"):
            _build(fp32_onnx, tmp_path, card, Precision.INT8, int8_mode="implicit", calibration_cache=cache)
        assert not double.trt._d_messages  # refused before any TensorRT object was asked to build
        return
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.INT8, int8_mode="implicit", calibration_cache=cache)
    header = _engine_header(out)
    from calibration import trt_cache

    _, scales = trt_cache.read(cache)
    assert header["int8_scales"] == pytest.approx(scales), "TensorRT served the cache's scales, no data needed"
    assert header["calibrator"] == "ENTROPY_CALIBRATION_2" and "INT8" in header["builder_flags"]
    assert sidecar.int8["mode"] == "implicit"
    assert sidecar.int8["cache_header"] == f"TRT-{version_int(double.trt.__version__)}-EntropyCalibration2"
    results, _ = _run_batches(out, double)
    np.testing.assert_allclose(results[1], _reference(fp32_onnx, _images(3, seed=3)), rtol=1e-4, atol=1e-5)


def test_int8_implicit_calibrated_on_the_device(double, fp32_onnx, tmp_path, card) -> None:
    cache = tmp_path / "device.cache"
    data = [_images(4, seed=s) for s in range(3)] + [_images(2, seed=9)]  # the short last batch is completed
    if double.version == "11.4.0":
        with pytest.raises(InputError, match="removed in TensorRT 11"):
            _build(fp32_onnx, tmp_path, card, Precision.INT8, int8_mode="implicit", calibration_cache=cache,
                   calibration_data=data)
        assert all(not c.alive for c in double.gpu.contexts)
        return
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.INT8, int8_mode="implicit",
                          calibration_cache=cache, calibration_data=iter(data))
    amax = max(float(np.abs(b).max()) for b in data)
    assert _engine_header(out)["int8_scales"] == pytest.approx({"input": amax / 127})  # computed from device memory
    assert sidecar.int8["calibrated_on_device"] and sidecar.int8["calibration_batches"] == 4
    assert sidecar.int8["calibration_batch_size"] == 4
    header = f"TRT-{version_int(double.trt.__version__)}-EntropyCalibration2"
    assert cache.read_text().splitlines()[0] == header == sidecar.int8["cache_header"]
    assert not double.gpu.memory and not double.gpu.stack(), "calibration memory and context released"
    assert len(double.gpu.contexts_used) == 1 and double.gpu.contexts_used[0].primary, "one context for everything"
    again, _ = _build(fp32_onnx, tmp_path, card, Precision.INT8, int8_mode="implicit", calibration_cache=cache)
    assert _engine_header(again)["int8_scales"] == pytest.approx({"input": amax / 127}), "the saved cache is reused"


@pytest.mark.parametrize("version", ["8.6.1", "10.13.3"])  # 11.x has no calibrators (see the test above)
def test_int8_implicit_minmax_cache_picks_minmax_calibrator(version, monkeypatch, fp32_onnx, tmp_path, card) -> None:
    install(monkeypatch, version)
    cache = _cache(tmp_path, fp32_onnx, trt_backend.trt_version(), algorithm="MinMaxCalibration")
    out, _ = _build(fp32_onnx, tmp_path, card, Precision.INT8, int8_mode="implicit", calibration_cache=cache)
    assert _engine_header(out)["calibrator"] == "MINMAX_CALIBRATION"


def test_int8_implicit_cache_for_another_version_is_refused(double, fp32_onnx, tmp_path, card) -> None:
    other = "10.3" if double.version.startswith("8.") else "8.6.1"
    cache = _cache(tmp_path, fp32_onnx, other)
    with pytest.raises(InputError, match="(silently ignore|removed in TensorRT 11)"):
        _build(fp32_onnx, tmp_path, card, Precision.INT8, int8_mode="implicit", calibration_cache=cache)


def test_int8_explicit_needs_a_qdq_model(double, fp32_onnx, tmp_path, card) -> None:
    with pytest.raises(ModelError, match="no QuantizeLinear"):
        _build(fp32_onnx, tmp_path, card, Precision.INT8)


def test_parse_errors_name_each_node_and_op(double, tmp_path, card) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 16, 16])
    nodes = [helper.make_node("Relu", ["input"], ["a"], name="ok_relu"),
             helper.make_node("FancyOp", ["a"], ["b"], name="fancy_1", domain="com.example"),
             helper.make_node("OtherOp", ["b"], ["logits"], name="other_2", domain="com.example")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as info:
        _build(path, tmp_path, card, Precision.FP32)
    msg = str(info.value)
    assert "node 1 'fancy_1' (FancyOp)" in msg and "node 2 'other_2' (OtherOp)" in msg
    assert "No importer registered for op: FancyOp" in msg
    assert not (tmp_path / "m.fp32.engine").exists()


def test_options_reach_the_builder(double, fp32_onnx, tmp_path, card) -> None:
    cache_file = tmp_path / "timing.cache"
    if double.version.startswith("8.5"):  # no optimization level and no version compatibility before 8.6
        with pytest.raises(InputError, match="--opt-level needs TensorRT 8.6"):
            _build(fp32_onnx, tmp_path, card, Precision.FP32, opt_level=5)
        with pytest.raises(InputError, match="--version-compatible needs TensorRT 8.6"):
            _build(fp32_onnx, tmp_path, card, Precision.FP32, version_compatible=True)
        out, _ = _build(fp32_onnx, tmp_path, card, Precision.FP32, workspace_mb=256)
        assert _engine_header(out)["workspace"] == 256 << 20
        return
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP32, workspace_mb=256, opt_level=5,
                          timing_cache=cache_file, version_compatible=True)
    header = _engine_header(out)
    assert header["workspace"] == 256 << 20 and header["opt_level"] == 5
    assert "VERSION_COMPATIBLE" in header["builder_flags"] and sidecar.fingerprint["version_compatible"]
    first = cache_file.read_bytes()
    assert first.startswith(b"FAKETC1:")
    _build(fp32_onnx, tmp_path, card, Precision.FP32, timing_cache=cache_file)
    assert int(cache_file.read_bytes().split(b":")[2]) > int(first.split(b":")[2]), "timing cache reused and grown"
    with pytest.raises(InputError, match="--opt-level"):
        _build(fp32_onnx, tmp_path, card, Precision.FP32, opt_level=9)


def test_dla_core_must_exist(monkeypatch, fp32_onnx, tmp_path, card) -> None:
    for version in VERSIONS:
        install(monkeypatch, version, dla_cores=0)
        with pytest.raises(InputError, match="0 DLA core"):
            _build(fp32_onnx, tmp_path, card, Precision.FP16, dla_core=0)


def test_runner_from_another_thread(double, fp32_onnx, tmp_path, card) -> None:
    out, _ = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    runner = trt_backend.TensorRTRunner(out)
    assert not double.gpu.stack(), "no context left bound to the opening thread"
    result: dict = {}

    def work() -> None:
        try:
            result["out"] = runner.infer(_images(2))
        except Exception as exc:  # noqa: BLE001 - reported below
            result["err"] = exc

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runner.close()
    runner.close()  # idempotent
    assert "err" not in result, result.get("err")
    np.testing.assert_allclose(result["out"], _reference(fp32_onnx, _images(2)), rtol=1e-4, atol=1e-5)


def test_runner_rejects_bad_batches(double, fp32_onnx, tmp_path, card) -> None:
    out, _ = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    with trt_backend.TensorRTRunner(out) as runner:
        with pytest.raises(InputError, match="does not match the engine input"):
            runner.infer(np.zeros((2, 3, 8, 8), np.float32))
        with pytest.raises(InputError, match="empty batch"):
            runner.infer(np.zeros((0, 3, 16, 16), np.float32))


def test_fingerprint_mismatch_is_explained_before_deserializing(double, fp32_onnx, tmp_path, card) -> None:
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    gpu = FakeGpu(devices=[FakeDevice(name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9), integrated=False)])
    install(double_monkeypatch := pytest.MonkeyPatch(), double.version, gpu=gpu)
    try:
        with pytest.raises(BackendError, match=r"compute capability 8\.7 .*RTX 4090 \(8\.9\)"):
            trt_backend.TensorRTRunner(out)
    finally:
        double_monkeypatch.undo()
    other = {"8": "10.13.3", "10": "11.4.0", "11": "8.6.1"}[double.version.split(".")[0]]
    mp = pytest.MonkeyPatch()
    try:
        install(mp, other)
        with pytest.raises(BackendError, match=f"built by TensorRT {sidecar.backend_version}"):
            trt_backend.TensorRTRunner(out)
    finally:
        mp.undo()


def test_engine_from_another_version_fails_clearly_even_without_fingerprint(double, fp32_onnx, tmp_path,
                                                                          card) -> None:
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    from edgeres.backends.base import write_sidecar

    sidecar.fingerprint = {}
    write_sidecar(out, sidecar)
    other = "11.4.0" if double.version != "11.4.0" else "10.13.3"
    mp = pytest.MonkeyPatch()
    try:
        install(mp, other)
        with pytest.raises(BackendError, match="Version tag does not match"):
            trt_backend.TensorRTRunner(out)
    finally:
        mp.undo()


def test_l4t_release_is_recorded(double, fp32_onnx, tmp_path, card, monkeypatch) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    from edgeres.backends.tensorrt import fingerprint

    monkeypatch.setattr(fingerprint, "NV_TEGRA_RELEASE", release)
    _, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    assert sidecar.fingerprint["l4t"] == "R36.4.0"


def test_without_gpu_or_tensorrt_nothing_is_created(monkeypatch, fp32_onnx, tmp_path, card) -> None:
    double = install(monkeypatch, "10.13.3", gpu=FakeGpu(devices=[]))
    ok, why = trt_backend.is_available()
    assert not ok and "no CUDA device" in why
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        _build(fp32_onnx, tmp_path, card, Precision.FP32)
    assert not double.trt._d_messages
    install(monkeypatch, "10.13.3", with_tensorrt=False)
    ok, why = trt_backend.is_available()
    assert not ok and "TensorRT" in why
    install(monkeypatch, "10.13.3", with_pycuda=False)
    ok, why = trt_backend.is_available()
    assert not ok and "pycuda cannot be imported" in why
    install(monkeypatch, "11.4.0")
    ok, why = trt_backend.is_available()
    assert ok and "TensorRT 11.4.0.106" in why


@pytest.mark.parametrize("int8_mode", ["explicit", "implicit"])
def test_dispatcher_build_and_open_int8(double, fp32_onnx, tmp_path, card, int8_mode) -> None:
    """`edgeres build --backend tensorrt --precision int8` and `edgeres infer` go through these two calls."""
    from edgeres import backends

    src, ranges = _carded_with_ranges(fp32_onnx, tmp_path, card)
    out = tmp_path / "tiny.int8.engine"
    if int8_mode == "implicit" and double.version == "11.4.0":
        with pytest.raises(InputError, match="removed in TensorRT 11"):
            backends.build(src, backend="tensorrt", precision="int8", out=out, ranges=ranges,
                           tensorrt=TensorRTOptions(int8_mode=int8_mode), profile=PROFILE, progress=False)
        assert not out.exists()
        return
    backends.build(src, backend="tensorrt", precision="int8", out=out, ranges=ranges,
                   tensorrt=TensorRTOptions(int8_mode=int8_mode), profile=PROFILE, progress=False)
    sidecar = read_sidecar_for(out)
    assert sidecar.int8["mode"] == int8_mode and sidecar.fingerprint["tensorrt"] == trt_backend.trt_version()
    with backends.open(out) as runner:
        logits = runner.infer(_images(5))
        assert logits.shape == (5, 10) and runner.last_stage_times.h2d_ms is not None
    header = _engine_header(out)
    if int8_mode == "implicit":
        assert header["calibrator"] == "MINMAX_CALIBRATION" and header["int8_scales"]
    else:
        assert header["int8_scales"] is None and sidecar.options["layer_precisions"].get("Int8")
        kept = onnx.load(str(out.with_name(sidecar.int8["qdq_onnx"])))
        scale_types = {i.data_type for i in kept.graph.initializer if i.name.endswith("scale")}
        typed = not double.version.startswith("8.")
        # the Q/DQ kept beside the engine is what TensorRT parsed: FP16 float part where types decide (10.x/11.x)
        assert scale_types == ({onnx.TensorProto.FLOAT16} if typed else {onnx.TensorProto.FLOAT}), scale_types
        assert sidecar.fingerprint["sources"]["network_onnx_sha256"] == sidecar.int8["qdq_onnx_sha256"]


# ---------------------------------------------------------------- rules of the real libraries (issue 10)


PRE_11 = [v for v in VERSIONS if not v.startswith("11.")]  # implicit calibration exists up to 10.x


@pytest.mark.parametrize("version", PRE_11)
def test_device_calibration_batches_below_the_profile_opt_are_read_at_their_own_size(version, monkeypatch, fp32_onnx,
                                                                                      tmp_path, card) -> None:
    """TensorRT calibrates at the calibration profile's opt (profile 0's opt = 4 here when none is pinned): a
    calibrator holding batches of 3 must pin a calibration profile of 3, and complete its short last batch."""
    double = install(monkeypatch, version)
    data = [_images(3, seed=s) for s in range(2)] + [_images(1, seed=7)]
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.INT8, int8_mode="implicit",
                          calibration_cache=tmp_path / "c.cache", calibration_data=data)
    assert sidecar.int8["calibration_batch_size"] == 3 and sidecar.int8["calibration_batches"] == 3
    amax = max(float(np.abs(b).max()) for b in data)
    assert _engine_header(out)["int8_scales"] == pytest.approx({"input": amax / 127})
    assert not any("Calibration Profile is not defined" in m for _, m in double.messages)


@pytest.mark.parametrize("version", PRE_11)
def test_double_refuses_calibration_below_the_profile_opt(version, monkeypatch, fp32_onnx) -> None:
    """What a calibrator without a calibration profile does on a GPU: TensorRT reads opt (4) rows from a
    buffer of 2, past its end."""
    double = install(monkeypatch, version)
    trt, cuda = double.trt, double.cuda
    with _raw_build(double, fp32_onnx) as (builder, network, config):
        config.set_flag(trt.BuilderFlag.INT8)
        buffer = cuda.mem_alloc(2 * 3 * 16 * 16 * 4)
        served = []

        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)

            def get_batch_size(self) -> int:
                return 2  # ignored by TensorRT

            def get_batch(self, names: list) -> list | None:
                served.append(1)
                return [int(buffer)] if len(served) == 1 else None

            def read_calibration_cache(self) -> None:
                return None

            def write_calibration_cache(self, cache) -> None:
                return None

        calibrator = Calibrator()
        config.int8_calibrator = calibrator
        assert builder.build_serialized_network(network, config) is None
        assert any("Calibration Profile is not defined" in m for _, m in double.messages)
        assert any("calibration read (4, 3, 16, 16)" in m and "illegal memory access" in m for _, m in double.messages)
        buffer.free()


def test_one_primary_context_for_build_and_run(double, fp32_onnx, tmp_path, card) -> None:
    out, _ = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    _run_batches(out, double)
    used = double.gpu.contexts_used  # the primary context dies with its last release and is made anew on retain
    assert used and all(c.primary for c in used), "builder, runtime and buffers share the device's primary context"
    assert not any(c.alive for c in double.gpu.contexts) and not double.gpu.memory


def test_runner_closed_from_another_thread_releases_its_context(double, fp32_onnx, tmp_path, card) -> None:
    out, _ = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    runner = trt_backend.TensorRTRunner(out)
    runner.infer(_images(2))
    errors: list = []

    def close() -> None:
        try:
            runner.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=close)
    t.start()
    t.join()
    assert not errors, errors  # pycuda leaks a context detached off-thread while not current; the double refuses
    assert not double.gpu.memory and not any(c.alive for c in double.gpu.contexts)


def test_runner_failing_to_open_frees_everything_inside_its_context(double, fp32_onnx, tmp_path, card,
                                                                    monkeypatch) -> None:
    out, _ = _build(fp32_onnx, tmp_path, card, Precision.FP32)

    def no_stream(*args, **kwargs):
        raise double.cuda.MemoryError("cuStreamCreate failed: out of memory")

    monkeypatch.setattr(double.cuda, "Stream", no_stream)  # after the engine and buffers exist
    with pytest.raises(double.cuda.MemoryError):
        trt_backend.TensorRTRunner(out)
    assert not double.gpu.memory and not any(c.alive for c in double.gpu.contexts) and not double.gpu.stack()


def test_the_pycuda_double_refuses_what_pycuda_refuses(double) -> None:
    cuda = double.cuda
    cuda.init()
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    stream = cuda.Stream()
    host = cuda.pagelocked_empty((4,), np.float32)
    dev = cuda.mem_alloc(16)
    cuda.Context.pop()
    with pytest.raises(cuda.LogicError, match="explicit_context_dependent"):
        cuda.memcpy_htod_async(dev, host, stream)  # stream work with no context current
    with pytest.raises(cuda.LogicError, match="explicit_context_dependent"):
        cuda.Event().record(stream)
    errors: list = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(cuda.LogicError, ctx.detach)))
    t.start()
    t.join()
    assert errors and "leaks it" in str(errors[0].value)  # a non-current context detached on another thread
    assert not hasattr(stream, "begin_capture") and not hasattr(cuda, "Graph"), "pycuda has no graph API"
    ctx.push()
    dev.free()
    ctx.detach()  # current: released and popped
    assert not double.gpu.stack() and not ctx.alive


def test_cuda_graphs_are_not_offered(double, fp32_onnx, tmp_path, card) -> None:
    from edgeres import backends

    out, _ = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    with pytest.raises(InputError, match="unknown runner option.*cuda_graph"):
        backends.open(out, cuda_graph=True)


@pytest.mark.parametrize("version", [v for v in VERSIONS if not v.startswith("8.5")])  # 8.6+ (tested above)
def test_version_compatible_engines_load_with_host_code_allowed(version, monkeypatch, fp32_onnx, tmp_path,
                                                                card) -> None:
    double = install(monkeypatch, version)
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP32, version_compatible=True)
    assert sidecar.options["layer_precisions"], "the builder's own inspection must load the engine too"
    runtime = double.trt.Runtime(double.trt.Logger())
    assert runtime.deserialize_cuda_engine(out.read_bytes()) is None, "the double refuses without host code"
    with trt_backend.TensorRTRunner(out) as runner:
        np.testing.assert_allclose(runner.infer(_images(2)), _reference(fp32_onnx, _images(2)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("built", "runtime", "compatible", "ok"), [
    ("10.13.3", "10.13.3", False, True), ("10.13.3", "10.16.1", False, False), ("10.3.0", "10.13.3", True, True),
    ("10.13.3", "10.3.0", True, False), ("8.6.1", "10.13.3", True, True), ("8.5.2", "8.6.1", True, False),
    ("10.13.3", "11.4.0", True, True), ("8.6.1", "11.4.0", True, False), ("11.4.0", "10.13.3", True, False),
])
def test_version_compatibility_follows_nvidia_rules(built, runtime, compatible, ok) -> None:
    from trt_double._trt import runtime_accepts

    assert trt_backend.runtime_can_load(built, runtime, version_compatible=compatible) is ok
    assert runtime_accepts(built, runtime, compatible) is ok, "the double follows the same table"


def test_an_older_runtime_refuses_a_version_compatible_engine(monkeypatch, fp32_onnx, tmp_path, card) -> None:
    install(monkeypatch, "10.13.3")
    out, _ = _build(fp32_onnx, tmp_path, card, Precision.FP32, version_compatible=True)
    from edgeres import backends

    install(monkeypatch, "10.3.0" if (Path(__file__).parents[2] / "trt_api" / "10.3.0.json").is_file() else "8.6.1")
    with pytest.raises(BackendError, match="same or a later TensorRT"):
        backends.open(out)


def test_dla_needs_a_static_batch_and_its_core_is_set_at_load(monkeypatch, fp32_onnx, tmp_path, card) -> None:
    for version in VERSIONS:
        double = install(monkeypatch, version, dla_cores=2)
        with pytest.raises(InputError, match="static batch.*--batch 4"):
            _build(fp32_onnx, tmp_path, card, Precision.FP16, dla_core=1)  # 1:4:8 would all run on the GPU
        out = tmp_path / f"dla.{version}.engine"
        sidecar = trt_backend.build_engine(fp32_onnx, out=out, precision=Precision.FP16, card=card,
                                           source_onnx_sha256=sha256_file(fp32_onnx), profile=BatchProfile(4, 4, 4),
                                           progress=False, options=TensorRTOptions(dla_core=1))
        header = _engine_header(out)
        layers = sidecar.options["dla_layers"]
        assert header["dla_layers"] == layers["dla"] > 0 and layers["gpu"] > 0, version  # Gemm etc. fall back
        assert layers["dla"] + layers["gpu"] == len(header["layers"])
        with trt_backend.TensorRTRunner(out) as runner:
            runner.infer(_images(4))
        assert ("dla_execute", 1) in double.gpu.log, f"{version}: the engine ran on the core it was built for"


def test_u8_qdq_is_refused_before_tensorrt_parses_it(double, fp32_onnx, tmp_path, card) -> None:
    from edgeres.quantization import quantize_model, tensors_to_observe

    model = onnx.load(str(fp32_onnx))
    u8 = quantize_model(model, {name: 4.0 for name in tensors_to_observe(model)}, activations="u8")
    path = tmp_path / "tiny.u8.onnx"
    onnx.save(u8, str(path))
    with pytest.raises(ModelError, match="--activations u8.*TensorRT's parser rejects"):
        _build(path, tmp_path, card, Precision.INT8)
    parser = double.trt.OnnxParser(double.trt.Builder(double.trt.Logger()).create_network(
        1 << int(double.trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if double.version.startswith("8.") else 0),
        double.trt.Logger())
    assert not parser.parse(path.read_bytes()), "the double's parser rejects it like onnx-tensorrt does"
    assert "symmetric" in parser.get_error(0).desc() or "UINT8" in parser.get_error(0).desc()


def test_tf32_is_recorded_and_strict_fp32_clears_it(double, fp32_onnx, tmp_path, card) -> None:
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    assert sidecar.options["tf32"] is True and "TF32" in _engine_header(out)["builder_flags"]
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP32, tf32=False)
    assert sidecar.options["tf32"] is False and "TF32" not in _engine_header(out)["builder_flags"]


def test_unreadable_timing_cache_starts_a_new_one(double, fp32_onnx, tmp_path, card) -> None:
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"\x00garbage")
    _build(fp32_onnx, tmp_path, card, Precision.FP32, timing_cache=cache)
    assert cache.read_bytes().startswith(b"FAKETC1:"), "replaced by a cache TensorRT can read"




def test_dispatcher_passes_high_precision_and_tf32(monkeypatch, fp32_onnx, tmp_path, card) -> None:
    from edgeres import backends

    install(monkeypatch, "10.13.3")
    src, ranges = _carded_with_ranges(fp32_onnx, tmp_path, card)
    out = tmp_path / "tiny.int8.engine"
    backends.build(src, backend="tensorrt", precision="int8", out=out, ranges=ranges, profile=PROFILE,
                   tensorrt=TensorRTOptions(high_precision="fp32", tf32=False), progress=False)
    sidecar = read_sidecar_for(out)
    kept = onnx.load(str(out.with_name(sidecar.int8["qdq_onnx"])))
    assert {i.data_type for i in kept.graph.initializer if i.name.endswith("scale")} == {onnx.TensorProto.FLOAT}
    assert sidecar.int8["high_precision"] == "fp32" and sidecar.options["tf32"] is False


def test_layers_left_in_float_stay_there_on_every_era(double, fp32_onnx, tmp_path, card) -> None:
    """An accuracy budget's float layers: no Q/DQ in the ONNX; 8.x pins them with precision constraints, 10.x/11.x
    (strongly typed) get them from the FP16-typed network; the engine marks them Half, the rest INT8."""
    from edgeres import backends

    src, ranges = _carded_with_ranges(fp32_onnx, tmp_path, card)
    kept = "/conv2/Conv"
    assert kept in {n.name for n in onnx.load(str(src)).graph.node}
    out = tmp_path / "tiny.int8.engine"
    backends.build(src, backend="tensorrt", precision="int8", out=out, ranges=ranges, profile=PROFILE,
                   keep_fp32=[kept], progress=False)
    header, sidecar = _engine_header(out), read_sidecar_for(out)
    by_name = {name: prec for name, _, prec in header["layers"]}
    convs = {name: prec for name, op, prec in header["layers"] if op == "Conv"}
    assert convs.pop(kept) == "Half" and set(convs.values()) == {"Int8"}, by_name
    weakly = double.version.startswith("8.")
    assert ("OBEY_PRECISION_CONSTRAINTS" in header["builder_flags"]) == weakly
    assert sidecar.int8["float_layers"] == [kept]
    qdq = onnx.load(str(out.with_name(sidecar.int8["qdq_onnx"])))
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    conv2 = next(n for n in qdq.graph.node if n.name == kept)
    assert not any(name in dq_out for name in conv2.input), "no Q/DQ on the layer left in float"


def test_double_puts_every_layer_on_the_gpu_for_dla_with_a_dynamic_profile(monkeypatch, fp32_onnx) -> None:
    """What TensorRT does with DLA and min != max (what edgeres refuses up front): with GPU fallback every layer
    silently runs on the GPU; without it the build fails."""
    double = install(monkeypatch, "10.13.3", dla_cores=2)
    trt = double.trt
    for fallback in (True, False):
        with _raw_build(double, fp32_onnx) as (builder, network, config):
            config.set_flag(trt.BuilderFlag.FP16)
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = 0
            if fallback:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
            serialized = builder.build_serialized_network(network, config)
            if fallback:
                head = json.loads(bytes(serialized)[12:12 + struct.unpack("<I", bytes(serialized)[8:12])[0]])
                assert head["dla_layers"] == 0
                assert any("all layers run on the GPU" in m for _, m in double.messages)
            else:
                assert serialized is None
                assert any("DLA does not support dynamic shapes" in m for _, m in double.messages)


def test_the_pycuda_double_frees_like_pycuda(double) -> None:
    """device_allocation::free activates its own context on the thread that made it; elsewhere it leaks."""
    cuda = double.cuda
    cuda.init()
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    kept, other = cuda.mem_alloc(64), cuda.mem_alloc(64)
    cuda.Context.pop()
    kept.free()  # not current, but this is the context's own thread: pycuda pushes it for the call
    with pytest.raises(cuda.LogicError, match="freed twice"):
        kept.free()
    errors: list = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(cuda.LogicError, other.free)))
    t.start()
    t.join()
    assert errors and "out-of-thread" in str(errors[0].value)
    ctx.push()
    other.free()
    ctx.detach()
    assert not double.gpu.memory


def test_engine_and_sidecar_are_one_unit(double, fp32_onnx, tmp_path, card) -> None:
    """The sidecar is written before the engine is renamed into place: a failure between leaves no engine."""
    from edgeres.backends.tensorrt import builder

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builder, "write_sidecar", fail)
        with pytest.raises(OSError):
            _build(fp32_onnx, tmp_path, card, Precision.FP32)
    assert not (tmp_path / "m.fp32.engine").exists(), "no engine without its sidecar"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"], "nothing left behind"
    out, sidecar = _build(fp32_onnx, tmp_path, card, Precision.FP32)
    assert read_sidecar_for(out).artifact_sha256 == sha256_file(out) == sidecar.artifact_sha256


def test_the_sidecar_records_the_options_object_and_gives_it_back(double, fp32_onnx, tmp_path, card) -> None:
    """What `edgeres build` was asked for is in the engine's sidecar (``TensorRTOptions.to_dict``) and reads back
    as the same options; a float engine records the int8-only ones as null."""
    from edgeres import backends

    src, ranges = _carded_with_ranges(fp32_onnx, tmp_path, card)
    compatible = not double.version.startswith("8.5")  # no version compatibility before 8.6
    options = TensorRTOptions(workspace_mb=128, timing_cache=tmp_path / "t.cache", version_compatible=compatible,
                              high_precision="fp32", tf32=False)
    out = tmp_path / "tiny.int8.engine"
    backends.build(src, backend="tensorrt", precision="int8", out=out, ranges=ranges, profile=PROFILE,
                   tensorrt=options, progress=False)
    recorded = read_sidecar_for(out).options
    assert {k: recorded[k] for k in options.to_dict()} == options.to_dict()
    assert TensorRTOptions.from_dict(recorded) == options
    assert _engine_header(out)["workspace"] == 128 << 20
    fp32 = tmp_path / "tiny.fp32.engine"
    backends.build(src, backend="tensorrt", precision="fp32", out=fp32, profile=PROFILE, tensorrt=options,
                   progress=False)
    recorded = read_sidecar_for(fp32).options
    assert recorded["int8_mode"] is None and recorded["high_precision"] is None
    assert TensorRTOptions.from_dict(recorded) == dataclasses.replace(options, high_precision="fp16")
