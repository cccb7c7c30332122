"""Running a TensorRT engine: :class:`TensorRTRunner`, with pycuda buffers and one stream.

TensorRT itself comes from :func:`edgeres.backends.tensorrt._lib._trt` (the only module importing it); what an
engine is bound to is checked by :func:`edgeres.backends.tensorrt.fingerprint.check_fingerprint`.

::

    with TensorRTRunner(Path("m.engine")) as runner:
        logits = runner.infer(batch)
        print(runner.last_stage_times)
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from edgeres.backends import cuda as cu
from edgeres.backends.base import BatchProfile, Sidecar, StageTimes, read_sidecar_for
from edgeres.backends.tensorrt._lib import _Logger, _trt, is_available
from edgeres.backends.tensorrt.fingerprint import check_fingerprint, machine_fingerprint
from edgeres.errors import BackendError, BackendUnavailable, InputError, ModelError


class TensorRTRunner:
    """A TensorRT engine ready to run batches (a context manager); see :class:`edgeres.backends.base.Runner`.

    The device's primary CUDA context (the one TensorRT uses) is retained on open and pushed/popped around each
    call, so the runner may be used from a thread other than the one that opened it (one call at a time), and
    closed from any thread. There are no CUDA graphs: pycuda (2022.2-2026.1) has no stream-capture API.
    """

    backend = "tensorrt"

    def __init__(self, artifact: Path) -> None:
        self.artifact = Path(artifact)
        sidecar = read_sidecar_for(self.artifact)
        self.card = sidecar.card
        self.precision = sidecar.precision
        self.profile = BatchProfile(**sidecar.profile)
        self.last_stage_times: StageTimes | None = None
        self.dla_core: int | None = sidecar.options.get("dla_core")
        trt = _trt()
        ok, why = is_available()
        if not ok:
            raise BackendUnavailable(f"cannot run TensorRT engine {self.artifact}: {why}")
        check_fingerprint(sidecar.fingerprint, machine_fingerprint(trt), artifact=self.artifact)
        self._trt = trt
        self._logger = _Logger(trt)
        self._ctx = cu.CudaContext(0)
        self._lock = threading.Lock()
        self._buffers: dict[str, cu.Buffer] = {}
        try:
            with self._ctx.active() as cuda:
                self._open(cuda, sidecar)
        except BaseException:
            self.close()  # buffers, engine and runtime die inside the context, before it is released
            raise

    def _open(self, cuda: ModuleType, sidecar: Sidecar) -> None:
        trt = self._trt
        self._runtime = trt.Runtime(self._logger.trt_logger)
        if sidecar.fingerprint.get("version_compatible"):
            self._runtime.engine_host_code_allowed = True  # version-compatible engines embed a lean runtime
        if self.dla_core is not None:  # the runtime, not the engine, picks the DLA core it runs on
            self._runtime.DLA_core = int(self.dla_core)
        self._engine = self._runtime.deserialize_cuda_engine(self.artifact.read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT cannot load {self.artifact}: {self._logger.last_errors('unknown error')}; "
                               f"rebuild it here with `edgeres build MODEL.onnx --backend tensorrt`")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise ModelError(f"{self.artifact} has inputs {inputs} and outputs {outputs}; edgeres runs one-input "
                             f"classifiers")
        self._input = inputs[0]
        self._output = self.card.output_name if self.card.output_name in outputs else outputs[0]
        max_batch = self.profile.max
        profile_max = self._engine.get_tensor_profile_shape(self._input, 0)
        if profile_max:
            max_batch = int(tuple(profile_max[2])[0])
        self._max_batch = max_batch
        for name in (self._input, *outputs):
            shape = tuple(self._engine.get_tensor_shape(name))
            shape = (max_batch, *shape[1:]) if shape[0] < 0 else shape
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            self._buffers[name] = cu.Buffer(cuda, shape, dtype)
            self._context.set_tensor_address(name, self._buffers[name].ptr)
        self._stream = cuda.Stream()
        self._events = cu.StageEvents(cuda)

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run ``batch`` (N, *input shape) through the engine; N above the profile's max is split into chunks."""
        batch = np.asarray(batch)
        expected = tuple(self._buffers[self._input].host.shape[1:])
        if batch.ndim != len(expected) + 1 or tuple(batch.shape[1:]) != expected:
            raise InputError(f"batch shape {batch.shape} does not match the engine input (N, {', '.join(map(str, expected))})")
        if batch.shape[0] == 0:
            raise InputError("empty batch: give at least one image")
        if batch.shape[0] < self.profile.min:
            raise InputError(f"batch of {batch.shape[0]} is below the engine's minimum {self.profile.min}; rebuild "
                             f"with --batch 1:{self.profile.opt}:{self.profile.max}")
        results, times = [], []
        for start in range(0, batch.shape[0], self._max_batch):
            out, stage = self._run_chunk(batch[start:start + self._max_batch])
            results.append(out)
            times.append(stage)
        self.last_stage_times = StageTimes(
            compute_ms=sum(t.compute_ms for t in times), h2d_ms=sum(t.h2d_ms or 0.0 for t in times),
            d2h_ms=sum(t.d2h_ms or 0.0 for t in times), total_ms=sum(t.total_ms for t in times))
        return results[0] if len(results) == 1 else np.concatenate(results)

    def _run_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray, StageTimes]:
        n = chunk.shape[0]
        t0 = time.perf_counter()
        with self._lock, self._ctx.active() as cuda:
            inp, out = self._buffers[self._input], self._buffers[self._output]
            if not self._context.set_input_shape(self._input, (n, *inp.host.shape[1:])):
                raise BackendError(f"TensorRT refused batch {n} for {self._input} (profile {self.profile}): "
                                   f"{self._logger.last_errors('shape outside the profile')}")
            ev = self._events
            ev.record(0, self._stream)
            cu.copy_batch_in(cuda, inp, chunk.astype(inp.host.dtype, copy=False), self._stream)
            ev.record(1, self._stream)
            if not self._context.execute_async_v3(self._stream.handle):
                raise BackendError(f"TensorRT could not enqueue {self.artifact.name}: "
                                   f"{self._logger.last_errors('execute_async_v3 returned False')}")
            ev.record(2, self._stream)
            cu.copy_batch_out(cuda, out, n, self._stream)
            ev.record(3, self._stream)
            self._stream.synchronize()
            h2d, compute, d2h = ev.millis()
            result = out.host[:n].astype(np.float32, copy=True)
        total = (time.perf_counter() - t0) * 1000.0
        return result, StageTimes(compute_ms=compute, h2d_ms=h2d, d2h_ms=d2h, total_ms=total)

    def close(self) -> None:
        """Free device memory and release the CUDA context (idempotent)."""
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return
        self._ctx = None
        # pushed, freed and released in one block, whichever thread closes (see CudaContext.closing)
        with self._lock, ctx.closing():
            for buf in self._buffers.values():
                buf.free()
            self._buffers.clear()
            for attr in ("_context", "_engine", "_runtime", "_stream", "_events"):
                self.__dict__.pop(attr, None)  # TensorRT objects die while the context is current

