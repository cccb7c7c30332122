"""Implicit INT8 (TensorRT 8.5-10.x): a calibrator serving a cache computed elsewhere, or calibrating on the device
from batches fed through pycuda at a pinned calibration profile."""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import numpy as np

from edgeres.backends import cuda as cu
from edgeres.backends.tensorrt._lib import _numeric_version
from edgeres.errors import BackendError, InputError
from edgeres.io import write_bytes_atomic

log = logging.getLogger(__name__)


def _attach_calibrator(trt: ModuleType, config: Any, calibration_cache: Path | None) -> Any:
    """8.5-10.x implicit INT8: a calibrator that serves a cache computed elsewhere (no data on the device)."""
    from calibration import trt_cache

    if calibration_cache is None:
        raise InputError("--int8-mode implicit needs a calibration cache (from `edgeres calibrate`)")
    header, _ = trt_cache.read(calibration_cache)
    data = Path(calibration_cache).read_bytes()
    base = trt.IInt8MinMaxCalibrator if "MinMax" in header else trt.IInt8EntropyCalibrator2

    class CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.header = header

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            return None  # no data here: everything comes from the cache

        def read_calibration_cache(self) -> bytes:
            return data

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    expected = trt_cache.version_number(_numeric_version(trt.__version__))
    if trt_cache.parse_header(header).number != expected:
        raise InputError(f"calibration cache {calibration_cache} is for {header}, but TensorRT {trt.__version__} "
                         f"reads only TRT-{expected}-...: it would silently ignore it; rewrite the cache with "
                         f"--trt-version {trt.__version__}")
    calibrator = CacheCalibrator()
    config.int8_calibrator = calibrator
    return calibrator


class _DeviceCalibration:
    """8.5-10.x implicit INT8 calibrated on the device: batches go through pycuda to TensorRT's calibrator.

    TensorRT reads each calibration batch at the *opt* shape of the calibration profile (profile 0 when none is
    set) and ignores ``get_batch_size`` (NvInfer.h ``IBuilderConfig::setCalibrationProfile``: "MIN and MAX values
    will be overwritten by kOPT"). So the images are re-cut into batches of one size B, the calibration profile is
    pinned to min = opt = max = B, and the short last batch is completed with images from its own start (repeating
    real images rather than padding with zeros, which would skew the histograms).
    """

    def __init__(self, trt: ModuleType, ctx: cu.CudaContext, data: Iterable[np.ndarray]) -> None:
        batches = iter(data)
        first = next(batches, None)
        if first is None or len(first) == 0:
            raise InputError("calibration on the device got no batches; give at least one calibration batch")
        first = np.asarray(first, dtype=np.float32)
        self.batch_size = int(first.shape[0])
        self._rows = itertools.chain(first, (row for batch in batches for row in np.asarray(batch, dtype=np.float32)))
        outer = self

        class DeviceCalibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)
                self.header: str | None = None
                self.batches = 0
                self.cache: bytes | None = None
                self.buffer: cu.Buffer | None = None

            def get_batch_size(self) -> int:
                return outer.batch_size  # ignored by TensorRT for explicit-batch networks; kept truthful

            def get_batch(self, names: list[str]) -> list[int] | None:
                batch = outer._next_batch()
                if batch is None:
                    return None
                if self.buffer is None:  # called inside build_engine's context
                    self.buffer = cu.Buffer(ctx.cuda, batch.shape, np.float32)
                self.buffer.host[:] = batch
                ctx.cuda.memcpy_htod(self.buffer.device, self.buffer.host)
                self.batches += 1
                return [self.buffer.ptr]

            def read_calibration_cache(self) -> bytes | None:
                return None  # calibrate from the data

            def write_calibration_cache(self, cache: Any) -> None:
                self.cache = bytes(cache)
                self.header = self.cache.split(b"\n", 1)[0].decode(errors="replace")

        self.calibrator = DeviceCalibrator()

    def _next_batch(self) -> np.ndarray | None:
        rows = [row for _, row in zip(range(self.batch_size), self._rows)]
        if not rows:
            return None
        real = len(rows)
        while len(rows) < self.batch_size:  # a short last batch: repeat its own images
            rows.append(rows[(len(rows) - real) % real])
        return np.stack(rows)

    def pin_profile(self, builder: Any, network: Any, config: Any) -> None:
        """Calibrate at exactly the calibration batch: a calibration profile with min = opt = max = B."""
        calib_profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = (self.batch_size, *tuple(tensor.shape)[1:])
            calib_profile.set_shape(tensor.name, shape, shape, shape)
        if not config.set_calibration_profile(calib_profile):
            raise BackendError(f"TensorRT rejected the calibration profile of batch {self.batch_size}")

    def free(self) -> None:
        if self.calibrator.buffer is not None:
            self.calibrator.buffer.free()
            self.calibrator.buffer = None

    def save(self, path: Path | None) -> None:
        """Keep TensorRT's calibration cache so later builds need no data."""
        if path is not None and self.calibrator.cache is not None:
            write_bytes_atomic(path, self.calibrator.cache)
