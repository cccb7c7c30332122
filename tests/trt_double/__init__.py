"""Test double of TensorRT (per recorded API version) and of ``pycuda.driver``, for CPU-only tests.

``install(monkeypatch, "10.13.3")`` puts a fake ``tensorrt`` (held to ``tests/trt_api/10.13.3.json``) and a fake
``pycuda``/``pycuda.driver`` (held to ``tests/pycuda_api/*.json``) into ``sys.modules`` and returns a
:class:`Double` with both modules and the shared fake GPU state (device memory, operation log, contexts) for
assertions. See ``_surface``, ``_pycuda_surface``, ``_trt`` and ``_cuda`` for what each part enforces.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any


from ._cuda import FakeDevice, FakeGpu, make_driver
from ._pycuda_surface import PYCUDA_VERSIONS, hold_driver, load_pycuda_surface, supported_names
from ._surface import VERSIONS, build_module, load_surface
from ._trt import IMPLS, version_int

__all__ = ["PYCUDA_VERSIONS", "VERSIONS", "Double", "FakeDevice", "FakeGpu", "hold_driver", "install",
           "load_pycuda_surface", "load_surface", "make_tensorrt", "supported_names", "version_int"]


@dataclass
class Double:
    trt: types.ModuleType
    cuda: types.ModuleType
    gpu: FakeGpu
    version: str

    @property
    def messages(self) -> list[tuple[str, str]]:
        """(severity, message) of everything the fake TensorRT reported through a logger."""
        return self.trt._d_messages


def make_tensorrt(version: str, gpu: FakeGpu, *, dla_cores: int = 0) -> types.ModuleType:
    """The fake ``tensorrt`` module of ``version`` ("8.6.1", "10.13.3" or "11.4.0")."""
    functions = load_surface(version)["functions"]

    def extra(mod: types.ModuleType) -> None:
        mod._d_gpu = gpu
        mod.__file__ = f"/double/tensorrt-{version}/tensorrt/__init__.py"  # where edgeres says it came from
        mod._d_dla_cores = dla_cores
        mod._d_messages = []
        mod._d_logged = []

        def volume(iterable: Any) -> int:
            vol = 1
            for elem in iterable:
                vol *= elem
            return vol

        def nptype(trt_type: Any) -> Any:
            from ._trt import TRT_TO_NP

            if trt_type.name in TRT_TO_NP:
                return TRT_TO_NP[trt_type.name]
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

        for name, func in (("volume", volume), ("nptype", nptype)):
            if name in functions:
                setattr(mod, name, func)

    return build_module(version, IMPLS, extra)


def install(monkeypatch: Any, version: str, *, gpu: FakeGpu | None = None, dla_cores: int = 0,
            with_tensorrt: bool = True, with_pycuda: bool = True) -> Double:
    """Put the fake ``tensorrt`` / ``pycuda.driver`` into ``sys.modules`` for one test."""
    gpu = gpu if gpu is not None else FakeGpu()
    trt = make_tensorrt(version, gpu, dla_cores=dla_cores)
    drv = hold_driver(make_driver(gpu))  # refuses to edgeres what the real pycuda.driver lacks
    pkg = types.ModuleType("pycuda", "test double of pycuda")
    pkg.__path__ = []  # a package
    pkg.driver = drv
    for name, module in (("tensorrt", trt if with_tensorrt else None), ("pycuda", pkg if with_pycuda else None),
                         ("pycuda.driver", drv if with_pycuda else None)):
        # None in sys.modules makes ``import name`` raise ImportError, as when the package is not installed
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "pycuda.autoinit", raising=False)
    return Double(trt=trt, cuda=drv, gpu=gpu, version=version)
