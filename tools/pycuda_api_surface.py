"""Record the Python API surface of the real ``pycuda.driver``, without a CUDA driver or a GPU.

pycuda ships as an sdist only. This script downloads it, builds it against the CUDA headers of NVIDIA's
``nvidia-cuda-runtime-cu1X`` wheel (which carries ``cuda.h``) and stub ``libcuda.so``/``libcurand.so`` (empty,
just for linking), lists the C symbols the built ``_driver`` extension needs (``readelf``), compiles stubs that
export those names as functions returning 0 (``gcc``), imports ``pycuda.driver`` in a subprocess with the stubs on
``LD_LIBRARY_PATH`` (importing never calls ``cuInit``) and writes what the module holds — module functions with
their Boost.Python / Python signatures, classes with their methods, static methods and properties, enum classes
with their members, exceptions — to ``tests/pycuda_api/<version>.json``. The fake ``pycuda.driver`` of
``tests/trt_double`` is held to those files.

Usage::

    python tools/pycuda_api_surface.py                   # all versions; sdists, venv, builds cached in .pycuda_build/
    python tools/pycuda_api_surface.py --only 2026.1     # one version

Needs: python3.11 with venv, pip, gcc/g++, readelf (binutils), network access to PyPI. A build takes minutes (it
compiles pycuda's bundled Boost.Python). Writes deterministic, sorted JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from api_surface_common import ADDRESS, ROOT, undefined_symbols, write_surface  # a sibling: tools/ runs as scripts

OUT_DIR = ROOT / "tests" / "pycuda_api"
CACHE = ROOT / ".pycuda_build"

# (pycuda version, wheels whose include/ dirs give the CUDA headers pycuda's default build needs: cuda.h,
# cudaProfiler.h, curand.h and the crt/ headers that curand.h's cuda_runtime.h includes, numpy). 2022.2.x
# predates CUDA 12 (it wraps texture references, which CUDA 12's cuda.h removed), so it is built against
# CUDA 11.8's headers.
CU11 = ("nvidia-cuda-runtime-cu11==11.8.89", "nvidia-cuda-profiler-api-cu11==11.8.86", "nvidia-curand-cu11==10.3.0.86",
        "nvidia-cuda-nvcc-cu11==11.8.89")
CU12 = ("nvidia-cuda-runtime-cu12==12.9.79", "nvidia-cuda-profiler-api-cu12==12.9.79", "nvidia-curand-cu12==10.3.10.19",
        "nvidia-cuda-nvcc-cu12==12.9.86")
# 2022.2.x also predates numpy 2 (its setup looks for numpy/core/include), so its venv gets numpy 1.x.
VERSIONS = [
    ("2022.2.2", CU11, "numpy<2"),
    ("2026.1", CU12, "numpy"),
]
# what a scratch venv needs, besides numpy, to build pycuda and import pycuda.driver
BUILD_REQUIREMENTS = ["setuptools", "wheel", "pytools", "platformdirs", "mako"]

KEEP_DUNDERS = {"__init__", "__call__", "__enter__", "__exit__", "__len__", "__getitem__", "__setitem__",
                "__iter__", "__int__", "__index__", "__float__", "__eq__", "__hash__", "__del__"}


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)  # type: ignore[arg-type]


def scratch_venv(cache: Path, numpy: str) -> Path:
    """A venv (never the project's) with what building and importing pycuda needs; returns its python."""
    venv = cache / ("venv" if numpy == "numpy" else "venv-" + re.sub(r"\W+", "", numpy))
    python = venv / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(python), "-m", "pip", "install", "-q", numpy, *BUILD_REQUIREMENTS])
    return python


def download_sdist(python: Path, version: str, cache: Path) -> Path:
    dest = cache / "sdist"
    found = list(dest.glob(f"pycuda-{version}.tar.gz"))
    if found:
        return found[0]
    _run([str(python), "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "--no-build-isolation",
          "-d", str(dest), f"pycuda=={version}"])
    return next(dest.glob(f"pycuda-{version}.tar.gz"))


def cuda_headers(python: Path, requirements: tuple[str, ...], cache: Path) -> Path:
    """One include directory holding the headers of every wheel in ``requirements`` (unpacked once)."""
    include = cache / "cuda" / re.sub(r"[^\w.]+", "_", "+".join(requirements)) / "include"
    if (include / "cuda.h").exists():
        return include
    dest = cache / "wheels"
    for requirement in requirements:
        name, version = requirement.split("==")
        wheels = list(dest.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if not wheels:
            _run([str(python), "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                  "3.11", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                  "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux2010_x86_64", "-d", str(dest),
                  requirement])
            wheels = list(dest.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        with zipfile.ZipFile(wheels[0]) as zf:
            for member in zf.namelist():
                head, sep, rel = member.partition("/include/")
                if sep and head.startswith("nvidia/") and not member.endswith("/"):
                    target = include / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(member))
    return include


def cuda_version_of(include: Path) -> int:
    return int(re.search(r"#define CUDA_VERSION (\d+)", (include / "cuda.h").read_text()).group(1))


def build_wheel(python: Path, version: str, include: Path, cache: Path) -> Path:
    """Build pycuda ``version`` against ``include`` and empty link stubs; return the wheel (cached)."""
    wheels = cache / "built"
    found = list(wheels.glob(f"pycuda-{version}-*.whl"))
    if found:
        return found[0]
    sdist = download_sdist(python, version, cache)
    with tempfile.TemporaryDirectory(prefix=f"pycuda-{version}-") as tmp:
        tmp_path = Path(tmp)
        with tarfile.open(sdist) as tf:
            tf.extractall(tmp_path, filter="data")
        src = tmp_path / f"pycuda-{version}"
        cuda_root = tmp_path / "cuda"
        (cuda_root / "lib64").mkdir(parents=True)
        (cuda_root / "include").symlink_to(include)
        empty = tmp_path / "empty.c"
        empty.write_text("int edgeres_link_stub;\n")
        for lib in ("libcuda.so", "libcurand.so"):
            _run(["gcc", "-shared", "-fPIC", "-o", str(cuda_root / "lib64" / lib), str(empty)])
        _run([str(python), "configure.py", f"--cuda-root={cuda_root}"], cwd=src)
        _run([str(python), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
             cwd=src)
    return next(wheels.glob(f"pycuda-{version}-*.whl"))


def surface_of(version: str, headers: tuple[str, ...], numpy: str, cache: Path) -> dict:
    python = scratch_venv(cache, numpy)
    include = cuda_headers(python, headers, cache)
    wheel = build_wheel(python, version, include, cache)
    with tempfile.TemporaryDirectory(prefix=f"pycuda-{version}-site-") as tmp:
        tmp_path = Path(tmp)
        site = tmp_path / "site"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
        extension = next((site / "pycuda").glob("_driver*.so"))
        symbols = undefined_symbols(extension)
        stubs = tmp_path / "stubs"
        stubs.mkdir()
        source = stubs / "stub.c"
        source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
        stub = stubs / "libcuda_stub.so"
        _run(["gcc", "-shared", "-fPIC", "-o", str(stub), str(source)])
        # the empty link stubs were dropped by the linker (--as-needed), so the extension names no libcuda:
        # preload the stub that defines what it needs
        env = dict(os.environ, LD_PRELOAD=str(stub), PYTHONPATH=str(site))
        out = _run([str(python), __file__, "--dump"], capture_output=True, text=True, env=env, cwd=tmp).stdout
    surface = json.loads(out)
    surface["source"] = {"requirement": f"pycuda=={version}", "sdist": f"pycuda-{version}.tar.gz",
                         "wheel": wheel.name, "cuda_headers": list(headers), "numpy": numpy,
                         "cuda_version": cuda_version_of(include),
                         "stubbed_symbols": symbols,
                         "how": "built here with tools/pycuda_api_surface.py against stub libcuda/libcurand; "
                                "introspected with no CUDA driver (cuInit never called)"}
    return surface


# ---- runs inside the subprocess, with the stubbed pycuda importable ----

def _signatures(doc: str | None, name: str) -> list[str]:
    """Boost.Python signature lines of ``name`` in a docstring (one per overload)."""
    sigs = []
    for line in (doc or "").splitlines():
        line = line.strip()
        if line.startswith(f"{name}(") and line.endswith(" :"):
            sigs.append(ADDRESS.sub("", line[:-2].strip()))
    return sigs


def _python_signature(func: object, name: str) -> list[str]:
    import inspect

    try:
        return [ADDRESS.sub("", f"{name}{inspect.signature(func)}")]
    except (TypeError, ValueError):
        return []


def _callable_sigs(value: object, name: str) -> list[str]:
    return _signatures(getattr(value, "__doc__", None), name) or _python_signature(value, name)


def _is_enum(cls: type) -> bool:
    return issubclass(cls, int) and isinstance(getattr(cls, "names", None), dict)


def _describe_class(cls: type) -> dict:
    import inspect

    entry: dict = {"bases": [f"{b.__module__}.{b.__qualname__}" for b in cls.__bases__], "methods": {},
                   "static_methods": {}, "properties": {}, "attributes": {}}
    if issubclass(cls, BaseException):
        entry["exception"] = True
    if _is_enum(cls):
        entry["enum_members"] = {str(k): int(v) for k, v in cls.names.items()}
    for name in sorted(dir(cls)):
        if name.startswith("__") and name not in KEEP_DUNDERS:
            continue
        if "enum_members" in entry and (name in entry["enum_members"] or name in ("names", "values")):
            continue
        try:
            raw = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is not None and owner.__module__ == "builtins":
            continue  # inherited from object, int or Exception: not pycuda's
        kind = type(raw).__name__
        if isinstance(raw, property) or kind == "property" or kind.endswith(".property"):
            entry["properties"][name] = {"writable": getattr(raw, "fset", None) is not None}
        elif isinstance(raw, (staticmethod, classmethod)):
            entry["static_methods"][name] = _callable_sigs(raw.__func__, name)
        elif callable(raw):
            entry["methods"][name] = _callable_sigs(getattr(cls, name), name)
        else:
            entry["attributes"][name] = type(raw).__name__
    return entry


def dump() -> dict:
    """Describe the importable ``pycuda.driver`` module."""
    import inspect

    import pycuda
    import pycuda.driver as drv

    classes: dict = {}
    functions: dict = {}
    constants: dict = {}
    for name, value in sorted(vars(drv).items()):
        if name.startswith("__") or inspect.ismodule(value) or type(value).__name__ == "_Feature":
            continue  # dunders, modules and ``from __future__ import annotations``
        if inspect.isclass(value):
            entry = _describe_class(value)
            if value.__name__ != name:
                entry["alias_of"] = value.__name__
            classes[name] = entry
        elif callable(value):
            functions[name] = _callable_sigs(value, name)
        else:
            constants[name] = {"type": type(value).__name__,
                               "repr": ADDRESS.sub("", repr(value)) if isinstance(value, (int, str, tuple))
                               else ""}
    return {"version": pycuda.VERSION_TEXT, "module": "pycuda.driver", "classes": classes, "functions": functions,
            "constants": constants}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", action="store_true", help="(internal) print the surface of the importable pycuda")
    parser.add_argument("--only", action="append", help="pycuda version to refresh, e.g. 2026.1 (repeatable)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="sdists, headers, built wheels, scratch venv")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where the JSON files go")
    args = parser.parse_args(argv)
    if args.dump:
        json.dump(dump(), sys.stdout, sort_keys=True)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for version, headers, numpy in VERSIONS:
        if args.only and version not in args.only:
            continue
        surface = surface_of(version, headers, numpy, args.cache.resolve())
        summary = write_surface(args.out / f"{version}.json", surface, "pycuda")
        print(summary + f", {len(surface['functions'])} functions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
