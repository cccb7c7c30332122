"""The TensorRT backend on a real GPU (``pytest -m gpu``): the same flow as test_tensorrt.py, for real.

Skipped cleanly where CUDA (pycuda + a device) or TensorRT is missing; the pycuda-only test needs CUDA but not
TensorRT, so the runtime's memory path (pinned copies, stream, events, use from another thread) can be proven on
any CUDA machine.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from helpers.reference import cpu_logits

pytestmark = pytest.mark.gpu


def _cuda_reason() -> str | None:
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device"
    except Exception as exc:  # noqa: BLE001 - ImportError, libcuda missing, driver errors: all mean "skip"
        return f"pycuda/CUDA unavailable ({exc})"
    return None


def _trt_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"TensorRT unavailable ({exc})"
    return None


CUDA_MISSING = _cuda_reason()
TRT_MISSING = CUDA_MISSING or _trt_reason()
needs_cuda = pytest.mark.skipif(CUDA_MISSING is not None, reason=CUDA_MISSING or "")
needs_trt = pytest.mark.skipif(TRT_MISSING is not None, reason=TRT_MISSING or "")


@needs_cuda
def test_pycuda_memory_path_from_another_thread() -> None:
    from edgeres.backends import cuda as cu

    ctx = cu.CudaContext(0)  # made here, used on a worker thread below
    import pycuda.driver as cuda

    assert cuda.Context.get_current() is None, "the opener's thread keeps no context"
    result: dict = {}

    def work() -> None:
        try:
            with ctx.active() as drv:
                data = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
                buf = cu.Buffer(drv, data.shape, np.float32)
                back = drv.pagelocked_empty(data.shape, np.float32)
                stream = drv.Stream()
                events = cu.StageEvents(drv)
                events.record(0, stream)
                cu.copy_batch_in(drv, buf, data[:5], stream)  # a partial batch
                events.record(1, stream)
                events.record(2, stream)
                drv.memcpy_dtoh_async(back[:5], buf.device, stream)
                events.record(3, stream)
                stream.synchronize()
                result["equal"] = bool(np.array_equal(back[:5], data[:5]))
                result["times"] = events.millis()
                buf.free()
        except Exception as exc:  # noqa: BLE001 - reported on the main thread
            result["error"] = exc

    def close_elsewhere() -> None:  # pycuda leaks a context detached off-thread unless it is current
        try:
            ctx.close()
        except Exception as exc:  # noqa: BLE001 - reported on the main thread
            result["close_error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    closer = threading.Thread(target=close_elsewhere)
    closer.start()
    closer.join()
    assert "error" not in result, result.get("error")
    assert "close_error" not in result, result.get("close_error")
    assert result["equal"]
    assert all(t >= 0 for t in result["times"])
    assert cuda.Context.get_current() is None
    assert not hasattr(cuda.Stream, "begin_capture") and not hasattr(cuda, "Graph"), (
        "this pycuda has stream capture after all: CUDA graphs could be offered (tests/trt_double says none has)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import onnx
    import torch
    from torch import nn

    from edgeres.quantization import quantize_model, tensors_to_observe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    folder = tmp_path_factory.mktemp("gpu")
    fp32 = folder / "tiny.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(fp32), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(fp32))
    qdq = folder / "tiny.qdq.onnx"
    onnx.save(quantize_model(proto, {n: 4.0 for n in tensors_to_observe(proto)}), str(qdq))
    return fp32, qdq


@needs_trt
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-2), ("fp16", 5e-2), ("int8", 0.25)])
def test_real_build_open_infer(tiny, tmp_path: Path, precision: str, atol: float) -> None:
    from edgeres.backends import tensorrt as trt_backend
    from edgeres.backends.base import BatchProfile, Precision
    from edgeres.backends.options import TensorRTOptions
    from edgeres.card import ModelCard, Preprocess
    from edgeres.io import sha256_file

    fp32, qdq = tiny
    src = qdq if precision == "int8" else fp32
    card = ModelCard(arch="tiny", class_names=[str(i) for i in range(10)], preprocess=Preprocess.small(size=32))
    out = tmp_path / f"tiny.{precision}.engine"
    sidecar = trt_backend.build_engine(src, out=out, precision=Precision(precision), card=card,
                                       source_onnx_sha256=sha256_file(fp32), profile=BatchProfile(1, 4, 8),
                                       options=TensorRTOptions(timing_cache=tmp_path / "timing.cache"), progress=False)
    assert sidecar.fingerprint["tensorrt"] == trt_backend.trt_version()
    batch = np.random.default_rng(0).standard_normal((11, 3, 32, 32)).astype(np.float32)
    with trt_backend.TensorRTRunner(out) as runner:
        got = runner.infer(batch)  # 8 + a partial 3
        times = runner.last_stage_times
        partial = runner.infer(batch[:3])
    np.testing.assert_allclose(got, cpu_logits(src, batch), atol=atol, rtol=0)
    np.testing.assert_allclose(partial, got[:3], atol=1e-3, rtol=0)
    assert times is not None and times.h2d_ms is not None and times.d2h_ms is not None and times.compute_ms > 0


@needs_trt
def test_real_implicit_int8_from_cache_or_refusal(tiny, tmp_path: Path) -> None:
    from calibration import trt_cache
    from edgeres.backends import tensorrt as trt_backend
    from edgeres.backends.base import BatchProfile, Precision
    from edgeres.backends.options import TensorRTOptions
    from edgeres.card import ModelCard
    from edgeres.errors import InputError
    from edgeres.io import sha256_file

    import onnx

    fp32, _ = tiny
    from edgeres.quantization import tensors_to_observe

    amax = {n: 4.0 for n in tensors_to_observe(onnx.load(str(fp32)))}
    amax.setdefault("input", 4.0)
    cache = tmp_path / "tiny.cache"
    trt_cache.write(cache, amax, trt_version=trt_backend.trt_version(), algorithm="EntropyCalibration2")
    card = ModelCard(arch="tiny", class_names=[str(i) for i in range(10)])
    kwargs = dict(out=tmp_path / "tiny.int8i.engine", precision=Precision.INT8, card=card,
                  source_onnx_sha256=sha256_file(fp32), profile=BatchProfile(1, 4, 8),
                  options=TensorRTOptions(int8_mode="implicit"), calibration_cache=cache, progress=False)
    if int(trt_backend.trt_version().split(".")[0]) >= 11:
        with pytest.raises(InputError, match="removed in TensorRT 11"):
            trt_backend.build_engine(fp32, **kwargs)
        return
    trt_backend.build_engine(fp32, **kwargs)
    with trt_backend.TensorRTRunner(kwargs["out"]) as runner:
        assert runner.infer(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)


@needs_trt
def test_real_runner_used_from_another_thread(tiny, tmp_path: Path) -> None:
    from edgeres.backends import tensorrt as trt_backend
    from edgeres.backends.base import BatchProfile, Precision
    from edgeres.card import ModelCard
    from edgeres.io import sha256_file

    fp32, _ = tiny
    out = tmp_path / "tiny.engine"
    trt_backend.build_engine(fp32, out=out, precision=Precision.FP32, card=ModelCard("tiny", [str(i) for i in range(10)]),
                             source_onnx_sha256=sha256_file(fp32), profile=BatchProfile(1, 2, 4), progress=False)
    runner = trt_backend.TensorRTRunner(out)
    result: dict = {}

    def work() -> None:
        try:
            result["out"] = runner.infer(np.ones((3, 3, 32, 32), np.float32))
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    runner.close()
    assert "error" not in result, result.get("error")
    assert result["out"].shape == (3, 10)


@needs_trt
def test_real_device_calibration_with_batches_below_the_profile_opt(tiny, tmp_path: Path) -> None:
    """TensorRT calibrates at the calibration profile's opt: batches of 3 under a 1:4:8 profile must build
    (edgeres pins a calibration profile of 3) instead of reading past the calibrator's buffer."""
    from edgeres.backends import tensorrt as trt_backend
    from edgeres.backends.base import BatchProfile, Precision
    from edgeres.backends.options import TensorRTOptions
    from edgeres.card import ModelCard
    from edgeres.errors import InputError
    from edgeres.io import sha256_file

    fp32, _ = tiny
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((3, 3, 32, 32)).astype(np.float32) for _ in range(3)] + [
        rng.standard_normal((1, 3, 32, 32)).astype(np.float32)]
    kwargs = dict(out=tmp_path / "tiny.cal.engine", precision=Precision.INT8,
                  card=ModelCard("tiny", [str(i) for i in range(10)]), source_onnx_sha256=sha256_file(fp32),
                  profile=BatchProfile(1, 4, 8), options=TensorRTOptions(int8_mode="implicit"),
                  calibration_cache=tmp_path / "cal.cache",
                  calibration_data=data, progress=False)
    if int(trt_backend.trt_version().split(".")[0]) >= 11:
        with pytest.raises(InputError, match="removed in TensorRT 11"):
            trt_backend.build_engine(fp32, **kwargs)
        return
    sidecar = trt_backend.build_engine(fp32, **kwargs)
    assert sidecar.int8["calibration_batch_size"] == 3 and sidecar.int8["calibration_batches"] == 4
    assert (tmp_path / "cal.cache").read_text().startswith("TRT-")
    with trt_backend.TensorRTRunner(kwargs["out"]) as runner:
        assert runner.infer(data[0]).shape == (3, 10)
