"""A fake ``pycuda.driver`` whose device memory is numpy buffers keyed by integer pointers.

What it enforces, like CUDA and pycuda do:
- ``init()`` before anything else;
- a context stack per thread: allocating, copying, queueing stream work, making streams/events or synchronizing
  without a context pushed on *this* thread raises ``LogicError('explicit_context_dependent failed: ...')`` (the
  famous pycuda error when a context made on one thread is used from another); memory belongs to the context that
  allocated it;
- ``Context.detach`` follows pycuda's ``context::detach`` (src/cpp/cuda.hpp): the current context is detached and
  popped; a non-current one is pushed and detached on the thread that created it; from any other thread pycuda
  silently *leaks* it, which the double refuses with ``LogicError`` so the leak fails a test;
- ``Device.retain_primary_context()`` (cuDevicePrimaryCtxRetain) hands out the device's one primary context,
  reference counted; TensorRT objects created with no context current use it too (the CUDA runtime falls back to
  the primary context), so a second, ``make_context`` context beside it shows up in ``FakeGpu.contexts_used``;
- pycuda has no stream capture or CUDA graph API in any release (2022.2-2026.1, ``src/wrapper/wrap_cudadrv.cpp``),
  so the double offers none;
- stream work is deferred: ``memcpy_*_async``, TensorRT's ``execute_async_v3`` and ``Event.record`` are queued on
  the stream and run, in order, at ``Stream.synchronize()``/``Event.synchronize()``: reading a host buffer before
  synchronizing gives stale data, as on a GPU;
- ``Event.time_till`` on an event that has not completed raises, like ``cuEventElapsedTime``;
- device pointers are checked: out of bounds, freed or foreign memory raises at execution time.
"""
from __future__ import annotations

import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


class Error(Exception):
    pass


class LogicError(Error):
    pass


class CudaRuntimeError(Error):
    pass


class CudaMemoryError(Error):
    pass


NO_CONTEXT = "explicit_context_dependent failed: invalid device context - no currently active context?"


@dataclass
class FakeDevice:
    name: str = "NVIDIA Jetson AGX Orin (fake)"
    compute_capability: tuple[int, int] = (8, 7)
    total_memory: int = 32 << 30
    integrated: bool = True


@dataclass(eq=False)
class _CuContext:
    """A driver context (CUcontext): what memory and streams belong to. Several pycuda ``Context`` objects may
    stand for one (each ``retain_primary_context()`` call returns a new wrapper of the same primary context)."""

    ordinal: int
    primary: bool = False
    retains: int = 1
    alive: bool = True


@dataclass
class FakeGpu:
    """State shared by the fake ``pycuda.driver`` and the fake ``tensorrt`` of one test."""

    devices: list[FakeDevice] = field(default_factory=lambda: [FakeDevice()])
    cuda_version: tuple[int, int, int] = (12, 2, 0)
    driver_version: int = 12020
    initialized: bool = False
    memory: dict[int, tuple[np.ndarray, Any]] = field(default_factory=dict)  # ptr -> (bytes, owning context)
    pinned: list[np.ndarray] = field(default_factory=list)
    streams: dict[int, Any] = field(default_factory=dict)
    contexts: list[Any] = field(default_factory=list)  # every Context object handed out
    primaries: dict[int, Any] = field(default_factory=dict)  # device ordinal -> its primary _CuContext
    contexts_used: list[Any] = field(default_factory=list)  # _CuContext of every allocation and TensorRT object
    log: list[tuple] = field(default_factory=list)  # (op, details...) in execution order
    next_ptr: int = 0x7F00_0000_0000
    lock: threading.RLock = field(default_factory=threading.RLock)
    tls: threading.local = field(default_factory=threading.local)

    # -- context stack of the calling thread --
    def stack(self) -> list:
        if not hasattr(self.tls, "stack"):
            self.tls.stack = []
        return self.tls.stack

    def current(self, what: str = "") -> Any:
        if not self.initialized:
            raise LogicError(f"{what}: cuInit has not been called (call pycuda.driver.init() first)")
        stack = self.stack()
        if not stack:
            raise LogicError(f"{what} failed: {NO_CONTEXT}" if what else NO_CONTEXT)
        ctx = stack[-1]
        if not ctx.alive:
            raise LogicError(f"{what} failed: context is destroyed")
        return ctx

    def primary(self, ordinal: int) -> _CuContext:
        """The device's primary context (created on first retain, like cuDevicePrimaryCtxRetain)."""
        with self.lock:
            cu = self.primaries.get(ordinal)
            if cu is None or not cu.alive:
                cu = self.primaries[ordinal] = _CuContext(ordinal, primary=True, retains=0)
            return cu

    def context_for_tensorrt(self) -> _CuContext:
        """The context a TensorRT object binds to: the current one, else the primary context of device 0 (the
        CUDA runtime's implicit initialisation, which TensorRT relies on: CUDA Runtime API guide, "Primary
        Contexts")."""
        stack = self.stack()
        cu = stack[-1].cu if stack and stack[-1].alive else self.primary(0)
        if cu.primary and cu.retains == 0:
            cu.retains = 1  # the runtime's own retain, never released while the process lives
        self.note_used(cu)
        return cu

    def note_used(self, cu: _CuContext) -> None:
        if all(c is not cu for c in self.contexts_used):
            self.contexts_used.append(cu)

    # -- device memory --
    def alloc(self, nbytes: int, ctx: Any) -> int:
        ctx = ctx.cu
        self.note_used(ctx)
        with self.lock:
            ptr = self.next_ptr
            self.next_ptr += (max(int(nbytes), 1) + 511) // 256 * 256
            self.memory[ptr] = (np.zeros(int(nbytes), dtype=np.uint8), ctx)
            return ptr

    def view(self, ptr: int, nbytes: int, what: str, ctx: _CuContext | None = None) -> np.ndarray:
        """The ``nbytes`` bytes at device pointer ``ptr``, checked against allocations and the current context (or
        ``ctx``, the context a TensorRT object works in)."""
        ctx = ctx if ctx is not None else self.current(what).cu
        with self.lock:
            for base, (buf, owner) in self.memory.items():
                if base <= ptr < base + max(buf.size, 1):
                    if owner is not ctx:
                        raise LogicError(f"{what} failed: invalid argument (memory of another context)")
                    off = ptr - base
                    if off + nbytes > buf.size:
                        raise CudaRuntimeError(f"{what} failed: an illegal memory access was encountered "
                                               f"({nbytes} bytes at offset {off} of a {buf.size}-byte allocation)")
                    return buf[off: off + nbytes]
        raise CudaRuntimeError(f"{what} failed: an illegal memory access was encountered (pointer {ptr:#x})")

    def is_pinned(self, array: np.ndarray) -> bool:
        addr = array.__array_interface__["data"][0]
        for p in self.pinned:
            base = p.__array_interface__["data"][0]
            if base <= addr and addr + array.nbytes <= base + p.nbytes:
                return True
        return False


def make_driver(gpu: FakeGpu) -> types.ModuleType:
    """A fake ``pycuda.driver`` module bound to ``gpu``."""
    drv = types.ModuleType("pycuda.driver", "test double of pycuda.driver")

    def init(flags: int = 0) -> None:
        gpu.initialized = True

    def _need_init() -> None:
        if not gpu.initialized:
            raise LogicError("cuDeviceGet failed: initialization error (call pycuda.driver.init() first)")

    class device_attribute:  # noqa: N801 - pycuda's name
        INTEGRATED = "INTEGRATED"
        MULTIPROCESSOR_COUNT = "MULTIPROCESSOR_COUNT"

    class Device:
        def __init__(self, ordinal: int) -> None:
            _need_init()
            if not 0 <= ordinal < len(gpu.devices):
                raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")
            self.ordinal = ordinal
            self._dev = gpu.devices[ordinal]

        @staticmethod
        def count() -> int:
            _need_init()
            return len(gpu.devices)

        def name(self) -> str:
            return self._dev.name

        def compute_capability(self) -> tuple[int, int]:
            return self._dev.compute_capability

        def total_memory(self) -> int:
            return self._dev.total_memory

        def get_attribute(self, attr: str) -> int:
            if attr == device_attribute.INTEGRATED:
                return int(self._dev.integrated)
            return 16

        def make_context(self, flags: int = 0) -> Context:
            """cuCtxCreate: a new context, pushed on this thread (pycuda ``device::make_context``)."""
            ctx = Context(self, _CuContext(self.ordinal))
            gpu.contexts.append(ctx)
            gpu.stack().append(ctx)
            return ctx

        def retain_primary_context(self) -> Context:
            """cuDevicePrimaryCtxRetain: the device's primary context, retained, *not* pushed (pycuda
            ``device::retain_primary_context``)."""
            cu = gpu.primary(self.ordinal)
            cu.retains += 1
            ctx = Context(self, cu)
            gpu.contexts.append(ctx)
            return ctx

    class Context:
        def __init__(self, device: Device, cu: _CuContext) -> None:
            self.device = device
            self.cu = cu
            self.valid = True  # pycuda's m_valid: False once this wrapper has detached
            self.thread = threading.get_ident()  # pycuda's m_thread: the creating thread

        @property
        def alive(self) -> bool:
            return self.valid and self.cu.alive

        def push(self) -> None:
            if not self.alive:
                raise LogicError("cuCtxPushCurrent failed: context is destroyed")
            gpu.stack().append(self)

        @staticmethod
        def pop() -> None:
            stack = gpu.stack()
            if not stack:
                raise LogicError("context::pop failed: cannot pop non-current context")
            stack.pop()

        @staticmethod
        def get_current() -> Context | None:
            stack = gpu.stack()
            return stack[-1] if stack else None

        @staticmethod
        def synchronize() -> None:
            ctx = gpu.current("cuCtxSynchronize")
            for stream in list(gpu.streams.values()):
                if stream.ctx.cu is ctx.cu:
                    stream.synchronize()

        def get_device(self) -> Device:
            return self.device

        def detach(self) -> None:
            """pycuda ``context::detach`` (src/cpp/cuda.hpp): current -> detach and pop; not current but on the
            creating thread -> push, detach, pop; not current on another thread -> pycuda leaks the context
            silently ("leaked out-of-thread context"), which the double refuses."""
            if not self.valid:
                raise LogicError("context::detach failed: cannot detach from invalid context")
            stack = gpu.stack()
            current = bool(stack) and stack[-1] is self
            if not current and threading.get_ident() != self.thread:
                raise LogicError("context::detach: this context is not current and was made on another thread; "
                                 "pycuda leaks it (its memory stays allocated). Push it, then detach.")
            if current:
                stack.pop()
            self.valid = False
            cu = self.cu
            cu.retains -= 1  # cuCtxDetach, or for a primary context cuDevicePrimaryCtxRelease
            if cu.retains <= 0:
                cu.alive = False
                with gpu.lock:
                    for ptr in [p for p, (_, owner) in gpu.memory.items() if owner is cu]:
                        del gpu.memory[ptr]

    class DeviceAllocation:
        def __init__(self, ptr: int, nbytes: int, owner: Context) -> None:
            self.ptr = ptr
            self.nbytes = nbytes
            self._d_owner = owner  # pycuda's explicit_context_dependent: the context current at allocation
            self._d_freed = False

        def __int__(self) -> int:
            return self.ptr

        def __index__(self) -> int:
            return self.ptr

        def free(self) -> None:
            """pycuda ``device_allocation::free`` (src/cpp/cuda.hpp): activates its own context for the call
            (``scoped_context_activation``) when that context is not current, which works only on the thread
            that made the context (elsewhere pycuda warns and frees nothing: the double refuses); a second free
            is CUDA_ERROR_INVALID_HANDLE; memory of a dead context is silently gone."""
            if self._d_freed:
                raise LogicError("cuMemFree failed: invalid resource handle (freed twice)")
            owner = self._d_owner
            stack = gpu.stack()
            current = stack[-1] if stack else None
            if not owner.cu.alive:
                self._d_freed = True
                return
            if (current is None or current.cu is not owner.cu) and threading.get_ident() != owner.thread:
                raise LogicError("cannot activate out-of-thread context: this allocation's context is not current "
                                 "and was made on another thread; pycuda leaks the memory. Push the context first.")
            with gpu.lock:
                gpu.memory.pop(self.ptr, None)
            self._d_freed = True

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        ctx = gpu.current("cuMemAlloc")
        return DeviceAllocation(gpu.alloc(nbytes, ctx), int(nbytes), ctx)

    def mem_get_info() -> tuple[int, int]:
        ctx = gpu.current("cuMemGetInfo")
        used = sum(buf.size for buf, _ in gpu.memory.values())
        total = ctx.device.total_memory()
        return total - used, total

    def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        gpu.current("cuMemHostAlloc")
        array = np.empty(shape, dtype=dtype, order=order)
        gpu.pinned.append(array)
        return array

    def _ptr(dest: Any) -> int:
        return int(dest)

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            self.ctx = gpu.current("cuStreamCreate")
            with gpu.lock:
                self.handle = 0x5000 + len(gpu.streams) + 1
                gpu.streams[self.handle] = self
            self.queue: list[Callable[[], None]] = []

        def enqueue(self, op: Callable[[], None], what: str = "stream work") -> None:
            """Queue ``op``; CUDA needs this stream's context current on the calling thread."""
            ctx = gpu.current(what)
            if ctx.cu is not self.ctx.cu:
                raise LogicError(f"{what} failed: invalid resource handle (stream of another context)")
            self.queue.append(op)

        def synchronize(self) -> None:
            ctx = gpu.current("cuStreamSynchronize")
            if ctx.cu is not self.ctx.cu:
                raise LogicError("cuStreamSynchronize failed: invalid resource handle (stream of another context)")
            while self.queue:
                self.queue.pop(0)()

        def is_done(self) -> bool:
            return not self.queue

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Stream | None = None) -> None:
        gpu.current("cuMemcpyHtoDAsync")
        if stream is None:
            raise LogicError("the double requires an explicit stream for async copies")
        pinned = gpu.is_pinned(src)

        def op() -> None:
            data = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
            gpu.view(_ptr(dest), data.size, "cuMemcpyHtoDAsync")[:] = data
            gpu.log.append(("htod", data.size, pinned))
        stream.enqueue(op)

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Stream | None = None) -> None:
        gpu.current("cuMemcpyDtoHAsync")
        if stream is None:
            raise LogicError("the double requires an explicit stream for async copies")
        if not dest.flags.c_contiguous:
            raise LogicError("memcpy_dtoh_async: destination must be contiguous")
        pinned = gpu.is_pinned(dest)

        def op() -> None:
            out = dest.view(np.uint8).reshape(-1)
            out[:] = gpu.view(_ptr(src), out.size, "cuMemcpyDtoHAsync")
            gpu.log.append(("dtoh", out.size, pinned))
        stream.enqueue(op)

    def memcpy_htod(dest: Any, src: np.ndarray) -> None:
        data = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        gpu.view(_ptr(dest), data.size, "cuMemcpyHtoD")[:] = data

    def memcpy_dtoh(dest: np.ndarray, src: Any) -> None:
        out = dest.view(np.uint8).reshape(-1)
        out[:] = gpu.view(_ptr(src), out.size, "cuMemcpyDtoH")

    class Event:
        def __init__(self, flags: int = 0) -> None:
            self.ctx = gpu.current("cuEventCreate")
            self.time: float | None = None
            self.stream: Stream | None = None

        def record(self, stream: Stream | None = None) -> Event:
            if stream is None:
                raise LogicError("the double requires an explicit stream for Event.record")
            self.time = None
            self.stream = stream

            def op() -> None:
                self.time = time.perf_counter()
            stream.enqueue(op)
            return self

        def synchronize(self) -> Event:
            if self.stream is not None:
                self.stream.synchronize()
            return self

        def query(self) -> bool:
            return self.time is not None

        def time_till(self, end: Event) -> float:
            if self.time is None or end.time is None:  # pycuda maps CUDA_ERROR_NOT_READY to its RuntimeError
                raise CudaRuntimeError("cuEventElapsedTime failed: device not ready")
            return (end.time - self.time) * 1000.0

        def time_since(self, start: Event) -> float:
            return start.time_till(self)

    def get_version() -> tuple[int, int, int]:
        return gpu.cuda_version

    def get_driver_version() -> int:
        _need_init()
        return gpu.driver_version

    class ctx_flags:  # noqa: N801 - pycuda's name
        SCHED_AUTO = 0
        SCHED_SPIN = 1
        SCHED_YIELD = 2
        SCHED_BLOCKING_SYNC = 4

    for name, value in dict(init=init, Device=Device, Context=Context, DeviceAllocation=DeviceAllocation,
                            mem_alloc=mem_alloc, mem_get_info=mem_get_info, pagelocked_empty=pagelocked_empty,
                            Stream=Stream, Event=Event, memcpy_htod_async=memcpy_htod_async,
                            memcpy_dtoh_async=memcpy_dtoh_async, memcpy_htod=memcpy_htod, memcpy_dtoh=memcpy_dtoh,
                            get_version=get_version, get_driver_version=get_driver_version,
                            device_attribute=device_attribute, ctx_flags=ctx_flags, Error=Error,
                            LogicError=LogicError, RuntimeError=CudaRuntimeError,
                            MemoryError=CudaMemoryError).items():
        setattr(drv, name, value)
    drv._d_gpu = gpu  # type: ignore[attr-defined]
    return drv
