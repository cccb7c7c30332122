"""A fake ``pycuda.driver`` whose device memory is numpy buffers keyed by integer pointers.

What it enforces, like CUDA and pycuda do:
- ``init()`` before anything else;
- a context stack per thread: allocating, copying, making streams/events or synchronizing without a context
  pushed on *this* thread raises ``LogicError('explicit_context_dependent failed: ...')`` (the famous pycuda error
  when a context made on one thread is used from another); memory belongs to the context that allocated it;
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
    contexts: list[Any] = field(default_factory=list)
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

    # -- device memory --
    def alloc(self, nbytes: int, ctx: Any) -> int:
        with self.lock:
            ptr = self.next_ptr
            self.next_ptr += (max(int(nbytes), 1) + 511) // 256 * 256
            self.memory[ptr] = (np.zeros(int(nbytes), dtype=np.uint8), ctx)
            return ptr

    def view(self, ptr: int, nbytes: int, what: str) -> np.ndarray:
        """The ``nbytes`` bytes at device pointer ``ptr``, checked against allocations and the current context."""
        ctx = self.current(what)
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
            ctx = Context(self)
            gpu.contexts.append(ctx)
            gpu.stack().append(ctx)
            return ctx

    class Context:
        def __init__(self, device: Device) -> None:
            self.device = device
            self.alive = True
            self.refcount = 1

        def push(self) -> None:
            if not self.alive:
                raise LogicError("cuCtxPushCurrent failed: context is destroyed")
            gpu.stack().append(self)

        @staticmethod
        def pop() -> None:
            stack = gpu.stack()
            if not stack:
                raise LogicError("cuCtxPopCurrent failed: invalid device context - context stack is empty")
            stack.pop()

        @staticmethod
        def get_current() -> Context | None:
            stack = gpu.stack()
            return stack[-1] if stack else None

        @staticmethod
        def synchronize() -> None:
            ctx = gpu.current("cuCtxSynchronize")
            for stream in list(gpu.streams.values()):
                if stream.ctx is ctx:
                    stream.synchronize()

        def get_device(self) -> Device:
            return self.device

        def detach(self) -> None:
            self.refcount -= 1
            if self.refcount == 0:
                stack = gpu.stack()
                if stack and stack[-1] is self:
                    stack.pop()
                self.alive = False
                with gpu.lock:
                    for ptr in [p for p, (_, owner) in gpu.memory.items() if owner is self]:
                        del gpu.memory[ptr]

    class DeviceAllocation:
        def __init__(self, ptr: int, nbytes: int) -> None:
            self.ptr = ptr
            self.nbytes = nbytes

        def __int__(self) -> int:
            return self.ptr

        def __index__(self) -> int:
            return self.ptr

        def free(self) -> None:
            ctx = gpu.current("cuMemFree")
            with gpu.lock:
                entry = gpu.memory.get(self.ptr)
                if entry is not None:
                    if entry[1] is not ctx:
                        raise LogicError("cuMemFree failed: invalid argument (memory of another context)")
                    del gpu.memory[self.ptr]

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        ctx = gpu.current("cuMemAlloc")
        return DeviceAllocation(gpu.alloc(nbytes, ctx), int(nbytes))

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
            self.captured: list[Callable[[], None]] | None = None

        def enqueue(self, op: Callable[[], None]) -> None:
            if gpu.stack() and gpu.stack()[-1] is not self.ctx:
                raise LogicError("stream of another context used (cuStream*: invalid handle)")
            (self.queue if self.captured is None else self.captured).append(op)

        # CUDA graphs (pycuda 2022.2+): work enqueued while capturing is recorded, not run
        def begin_capture(self, capture_mode: int = 0) -> None:
            gpu.current("cuStreamBeginCapture")
            if self.captured is not None:
                raise LogicError("cuStreamBeginCapture failed: stream is already capturing")
            self.captured = []

        def end_capture(self) -> Graph:
            if self.captured is None:
                raise LogicError("cuStreamEndCapture failed: stream is not capturing")
            ops, self.captured = self.captured, None
            return Graph(ops)

        def synchronize(self) -> None:
            if self.captured is not None:
                raise LogicError("cuStreamSynchronize failed: operation not permitted when stream is capturing")
            ctx = gpu.current("cuStreamSynchronize")
            if ctx is not self.ctx:
                raise LogicError("cuStreamSynchronize failed: invalid resource handle (stream of another context)")
            while self.queue:
                self.queue.pop(0)()

        def is_done(self) -> bool:
            return not self.queue

    class Graph:
        def __init__(self, ops: list[Callable[[], None]]) -> None:
            self.ops = list(ops)

        def instantiate(self) -> GraphExec:
            gpu.current("cuGraphInstantiate")
            return GraphExec(self.ops)

    class GraphExec:
        def __init__(self, ops: list[Callable[[], None]]) -> None:
            self.ops = ops

        def launch(self, stream: Stream | None = None) -> None:
            if stream is None:
                raise LogicError("the double requires an explicit stream for GraphExec.launch")
            stream.enqueue(lambda: gpu.log.append(("graph_launch", len(self.ops))))
            for op in self.ops:
                stream.enqueue(op)

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
            if self.time is None or end.time is None:
                raise LogicError("cuEventElapsedTime failed: device not ready")
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
                            Stream=Stream, Event=Event, Graph=Graph, GraphExec=GraphExec, memcpy_htod_async=memcpy_htod_async,
                            memcpy_dtoh_async=memcpy_dtoh_async, memcpy_htod=memcpy_htod, memcpy_dtoh=memcpy_dtoh,
                            get_version=get_version, get_driver_version=get_driver_version,
                            device_attribute=device_attribute, ctx_flags=ctx_flags, Error=Error,
                            LogicError=LogicError, RuntimeError=CudaRuntimeError,
                            MemoryError=CudaMemoryError).items():
        setattr(drv, name, value)
    drv._d_gpu = gpu  # type: ignore[attr-defined]
    return drv
