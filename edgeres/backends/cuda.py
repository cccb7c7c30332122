"""The CUDA side of the TensorRT backend, through pycuda: the one module of edgeres that imports ``pycuda``.

``pycuda`` is imported lazily (on first use), never ``pycuda.autoinit``: a :class:`CudaContext` retains the
device's primary context (the one TensorRT itself falls back to) and pushes/pops it around every piece of work,
so a runner opened on one thread can be used from another (the "explicit_context_dependent failed" trap of
autoinit), and builder, calibration and runner share one context.
Device memory for the hot path lives in :class:`Buffer` pairs (page-locked host array + device allocation)
sized once for the largest batch; stage timing uses CUDA events on the one stream.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator

import numpy as np

from edgeres.errors import BackendError, BackendUnavailable

log = logging.getLogger(__name__)

_PYCUDA_HINT = ("install pycuda against this machine's CUDA (pip install 'edgeres[tensorrt]'; on a Jetson use "
                "JetPack's CUDA and `pip install pycuda` with CUDA's bin on PATH)")


def driver() -> ModuleType:
    """``pycuda.driver``, imported on first use and initialised.

    Raises:
        BackendUnavailable: pycuda is missing or cannot load ``libcuda`` (no NVIDIA driver).
    """
    try:
        import pycuda.driver as cuda
    except ImportError as exc:  # also OSError-as-ImportError: libcuda.so.1 missing
        raise BackendUnavailable(f"pycuda cannot be imported ({exc}); {_PYCUDA_HINT}") from exc
    try:
        cuda.init()
    except Exception as exc:  # pycuda._driver.Error subclasses; no common base importable without pycuda
        raise BackendUnavailable(f"CUDA cannot be initialised ({exc}); check the NVIDIA driver (nvidia-smi)") from exc
    return cuda


@dataclass(frozen=True)
class DeviceInfo:
    """What the engine fingerprint records about a CUDA device."""

    name: str
    compute_capability: str  # "8.7"
    total_memory: int  # bytes
    integrated: bool  # Jetson: GPU shares the CPU's memory
    cuda_version: str  # CUDA pycuda was built against, "12.2"
    driver_version: int  # e.g. 12020


def device_count() -> tuple[int, str]:
    """Number of CUDA devices and, when there is none, why (no pycuda, no driver, no device); never raises."""
    try:
        count = int(driver().Device.count())
    except BackendUnavailable as exc:
        return 0, str(exc)
    except Exception as exc:  # noqa: BLE001 - any driver error means "no usable device"
        return 0, f"CUDA device query failed ({exc})"
    return count, "" if count else "no CUDA device (the driver sees none)"


def device_info(ordinal: int = 0) -> DeviceInfo:
    """Describe CUDA device ``ordinal`` without creating a context.

    Raises:
        BackendUnavailable: no pycuda, no driver, or no such device.
    """
    cuda = driver()
    count = int(cuda.Device.count())
    if ordinal >= count:
        raise BackendUnavailable(f"no CUDA device {ordinal} (this machine has {count})")
    dev = cuda.Device(ordinal)
    major, minor = dev.compute_capability()
    try:
        integrated = bool(dev.get_attribute(cuda.device_attribute.INTEGRATED))
    except Exception:  # noqa: BLE001 - an attribute a driver does not report is not an error
        integrated = False
    version = ".".join(str(v) for v in cuda.get_version()[:2])
    return DeviceInfo(name=str(dev.name()), compute_capability=f"{major}.{minor}", total_memory=int(dev.total_memory()),
                      integrated=integrated, cuda_version=version, driver_version=int(cuda.get_driver_version()))


class CudaContext:
    """The device's primary CUDA context, owned explicitly: retained on open, pushed around work (from any thread),
    released on close.

    One context for all TensorRT work: TensorRT's builder and runtime use the CUDA runtime, which falls back to
    the device's *primary* context; a second context made with ``make_context`` beside it would hold its own copy
    of the CUDA/cuDNN state, memory a Jetson does not have. So every edgeres object (builder, calibration buffers,
    runtime, runner) works in the retained primary context.
    """

    def __init__(self, ordinal: int = 0) -> None:
        self._cuda = driver()
        self._lock = threading.RLock()
        # cuDevicePrimaryCtxRetain: pycuda returns it *not* pushed, so no thread is left holding it
        self._ctx = self._cuda.Device(ordinal).retain_primary_context()
        self._closed = False

    @property
    def cuda(self) -> ModuleType:
        return self._cuda

    @contextlib.contextmanager
    def active(self) -> Iterator[ModuleType]:
        """Push the context on the calling thread for the block (one thread at a time) and pop it after."""
        with self._lock:
            if self._closed:
                raise BackendError("the CUDA context was closed; open the artifact again")
            self._ctx.push()
            try:
                yield self._cuda
            finally:
                self._cuda.Context.pop()

    @contextlib.contextmanager
    def closing(self) -> Iterator[ModuleType]:
        """Push the context for a last block, then release it while it is current.

        pycuda's ``Context.detach`` leaks a context that is not current when called from a thread other than the
        one that created it (``context::detach`` in pycuda's ``src/cpp/cuda.hpp``), so release happens here, with
        the context pushed, whichever thread closes. Idempotent: a closed context yields nothing to free.
        """
        with self._lock:
            if self._closed:
                yield self._cuda
                return
            self._ctx.push()
            try:
                yield self._cuda
            finally:
                self._closed = True
                self._ctx.detach()  # current: released and popped

    def close(self) -> None:
        """Release the context (idempotent); free what lives in it inside :meth:`closing` instead when there is any."""
        with self.closing():
            pass


class Buffer:
    """A page-locked host array and a device allocation of the same size (call inside ``CudaContext.active``)."""

    def __init__(self, cuda: ModuleType, shape: tuple[int, ...], dtype: Any) -> None:
        self.host = cuda.pagelocked_empty(shape, dtype)
        self.device = cuda.mem_alloc(max(self.host.nbytes, 1))

    @property
    def ptr(self) -> int:
        return int(self.device)

    def free(self) -> None:
        self.device.free()


class StageEvents:
    """Four CUDA events on one stream: before H2D, after H2D, after compute, after D2H."""

    def __init__(self, cuda: ModuleType) -> None:
        self.marks = [cuda.Event() for _ in range(4)]

    def record(self, index: int, stream: Any) -> None:
        self.marks[index].record(stream)

    def millis(self) -> tuple[float, float, float]:
        """(h2d, compute, d2h) in ms; call after the stream is synchronised."""
        a, b, c, d = self.marks
        return a.time_till(b), b.time_till(c), c.time_till(d)

    def span(self, first: int, last: int) -> float:
        """Milliseconds between two recorded marks (after the stream is synchronised)."""
        start, end = self.marks[first], self.marks[last]
        return start.time_till(end)


def copy_batch_in(cuda: ModuleType, buf: Buffer, batch: np.ndarray, stream: Any) -> None:
    """Stage ``batch`` in the pinned array and queue its copy to the device."""
    n = batch.shape[0]
    buf.host[:n] = batch
    cuda.memcpy_htod_async(buf.device, buf.host[:n], stream)


def copy_batch_out(cuda: ModuleType, buf: Buffer, n: int, stream: Any) -> None:
    """Queue the copy of the first ``n`` rows of a device buffer into its pinned array."""
    cuda.memcpy_dtoh_async(buf.host[:n], buf.device, stream)
