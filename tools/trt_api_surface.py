"""Record the Python API surface of real TensorRT bindings, without TensorRT's libraries or a GPU.

The bindings wheels (``tensorrt-bindings`` and friends) are small and on PyPI; what they load (``libnvinfer``,
``libnvonnxparser``, ``libnvinfer_plugin``) is not. This script downloads each wheel, lists the C symbols its
extension needs (``readelf``), compiles stub libraries that export those names as functions returning NULL
(``gcc``), imports the bindings in a subprocess with the stubs on ``LD_LIBRARY_PATH`` and writes what the
module holds — classes, methods and their pybind11 signatures (argument names, types, overloads), properties,
enum members, module functions and constants — to ``tests/trt_api/<version>.json``. The test double of
``tensorrt`` (``tests/trt_double``) is held to those files.

Usage::

    python tools/trt_api_surface.py                  # all versions, wheels cached in .trt_wheels/
    python tools/trt_api_surface.py --only 10.13.3   # one version
    # a version with no bindings wheel (8.5.x), from NVIDIA/TensorRT's pybind11 sources (trt_api_from_source.py):
    python tools/trt_api_surface.py --derive 8.5.2 --from 8.6.1 --git GIT --tag 8.5.2 --from-tag v8.6.1

Needs: pip, readelf (binutils), gcc, network access to PyPI (--derive: git, g++ and a clone of NVIDIA/TensorRT).
Writes deterministic, sorted JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from api_surface_common import ADDRESS, ROOT, undefined_symbols, write_surface  # a sibling: tools/ runs as scripts

OUT_DIR = ROOT / "tests" / "trt_api"
WHEEL_CACHE = ROOT / ".trt_wheels"

# (file stem in tests/trt_api, pip requirement)
VERSIONS = [
    ("8.6.1", "tensorrt-bindings==8.6.1"),
    ("10.3.0", "tensorrt-cu12-bindings==10.3.0"),
    ("10.13.3", "tensorrt-cu12-bindings==10.13.3.9.post1"),
    ("10.16.1", "tensorrt-cu12-bindings==10.16.1.11"),
    ("11.4.0", "tensorrt-cu13-bindings==11.4.0.106"),
]

# Libraries a Linux system always has: never stubbed.
SYSTEM_LIBS = re.compile(r"^(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux[-\w]*)\.so")
KEEP_DUNDERS = {"__init__", "__call__", "__enter__", "__exit__", "__len__", "__getitem__", "__setitem__",
                "__iter__", "__int__", "__index__"}


def download(requirement: str, dest: Path) -> Path:
    """Download the cp311 manylinux wheel of ``requirement`` into ``dest`` (no dependencies) and return it."""
    name = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1]
    for wheel in dest.glob(f"{name}-{version}-*.whl"):
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
           "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
           "--platform", "manylinux2014_x86_64", "-d", str(dest), requirement]
    subprocess.run(cmd, check=True)
    wheels = list(dest.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip did not leave a wheel for {requirement} in {dest}")
    return wheels[0]


def needed_libs(extension: Path) -> list[str]:
    """DT_NEEDED entries of ``extension`` that are not system libraries."""
    out = subprocess.run(["readelf", "-d", str(extension)], check=True, capture_output=True, text=True).stdout
    names = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    return sorted(n for n in names if not SYSTEM_LIBS.match(n))


def build_stubs(libs: list[str], symbols: list[str], dest: Path) -> None:
    """Compile each of ``libs`` as a shared library exporting every name in ``symbols`` (returning NULL)."""
    dest.mkdir(parents=True, exist_ok=True)
    source = dest / "stub.c"
    # Mangled C++ names are valid C identifiers, so one C file serves both.
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
    for lib in libs:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(dest / lib), str(source)], check=True)


def surface_of(version: str, requirement: str, wheels: Path) -> dict:
    """Unpack, stub, import in a subprocess and return the surface of one bindings wheel."""
    wheel = download(requirement, wheels)
    with tempfile.TemporaryDirectory(prefix=f"trt-{version}-") as tmp:
        tmp_path = Path(tmp)
        site = tmp_path / "site"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
        extension = site / "tensorrt_bindings" / "tensorrt.so"
        libs = needed_libs(extension)
        symbols = undefined_symbols(extension)
        build_stubs(libs, symbols, tmp_path / "stubs")
        env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path / "stubs"), PYTHONPATH=str(site))
        out = subprocess.run([sys.executable, __file__, "--dump"], check=True, capture_output=True, text=True,
                             env=env, cwd=tmp).stdout
    surface = json.loads(out)
    surface["source"] = {"requirement": requirement, "wheel": wheel.name, "stubbed_libraries": libs,
                         "stubbed_symbols": symbols}
    return surface


# ---- runs inside the subprocess, with the stubbed bindings importable ----

def _signatures(doc: str | None, name: str) -> list[str]:
    """pybind11 signature lines of ``name`` in a docstring (one per overload), without the ``N. `` prefix."""
    if not doc:
        return []
    sigs = []
    for line in doc.splitlines():
        line = re.sub(r"^\d+\. ", "", line.strip())
        if line.startswith(f"{name}(") and line != f"{name}(*args, **kwargs)":
            sigs.append(_clean(line))
    return sigs


def _clean(text: str) -> str:
    return ADDRESS.sub("", text.replace("tensorrt_bindings.tensorrt.", "tensorrt.").replace(
        "tensorrt_bindings.", "tensorrt."))


def _python_signature(func: object, name: str) -> list[str]:
    import inspect

    try:
        return [_clean(f"{name}{inspect.signature(func)}")]
    except (TypeError, ValueError):
        return []


def _describe_class(cls: type, qualname: str, classes: dict) -> None:
    import inspect

    entry: dict = {"bases": [_clean(f"{b.__module__}.{b.__qualname__}") for b in cls.__bases__],
                   "methods": {}, "static_methods": {}, "properties": {}, "attributes": {}, "nested": []}
    members = getattr(cls, "__members__", None)
    if isinstance(members, dict):
        entry["enum_members"] = {k: int(v) for k, v in members.items()}
    for name in sorted(dir(cls)):
        if name.startswith("__") and name not in KEEP_DUNDERS:
            continue
        if members and name in members:
            continue
        try:
            raw = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        if isinstance(raw, property) or type(raw).__name__ == "property":
            fget_doc = getattr(raw.fget, "__doc__", None) or ""
            m = re.search(r"\) -> (.+)$", fget_doc.splitlines()[0] if fget_doc else "")
            entry["properties"][name] = {"writable": raw.fset is not None,
                                         "type": _clean(m.group(1)) if m else ""}
        elif isinstance(raw, staticmethod):
            func = raw.__func__
            entry["static_methods"][name] = _signatures(func.__doc__, name) or _python_signature(func, name)
        elif inspect.isclass(raw):
            nested = f"{qualname}.{name}"
            entry["nested"].append(name)
            if nested not in classes:
                _describe_class(raw, nested, classes)
        elif callable(raw) or type(raw).__name__ in ("instancemethod", "wrapper_descriptor", "method_descriptor"):
            value = getattr(cls, name)
            sigs = _signatures(getattr(value, "__doc__", None), name)
            if not sigs and inspect.isfunction(raw):
                sigs = _python_signature(raw, name)
            entry["methods"][name] = sigs
        else:
            entry["attributes"][name] = type(raw).__name__
    classes[qualname] = entry


def dump() -> dict:
    """Describe the importable ``tensorrt_bindings`` module."""
    import inspect

    import tensorrt_bindings as trt

    classes: dict = {}
    functions: dict = {}
    constants: dict = {}
    for name, value in sorted(vars(trt).items()):
        if name.startswith("__") and name != "__version__":
            continue
        if inspect.ismodule(value):
            continue
        if inspect.isclass(value):
            if value.__name__ != name:  # an alias such as Logger.Severity re-exported under another name
                constants[name] = {"type": "class", "repr": _clean(value.__qualname__)}
            else:
                _describe_class(value, name, classes)
        elif callable(value):
            functions[name] = _signatures(value.__doc__, name) or _python_signature(value, name)
        else:
            constants[name] = {"type": type(value).__name__, "repr": _clean(repr(value))}
    return {"version": trt.__version__, "classes": classes, "functions": functions, "constants": constants}


def _derive(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trt_api_from_source import derive

    if not (args.from_version and args.git and args.tag and args.from_tag):
        raise SystemExit("--derive needs --from, --git, --tag and --from-tag")
    recorded = json.loads((args.out / f"{args.from_version}.json").read_text())
    surface, log = derive(recorded, git=args.git, tag=args.tag, from_tag=args.from_tag, version=args.derive)
    path = args.out / f"{args.derive}.json"
    path.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n")
    print(f"{path}: TensorRT {args.derive} derived from {args.from_version}: "
          + ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in log.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", action="store_true", help="(internal) print the surface of the importable bindings")
    parser.add_argument("--only", action="append", help="version stem to refresh, e.g. 10.13.3 (repeatable)")
    parser.add_argument("--wheels", type=Path, default=WHEEL_CACHE, help="wheel download cache")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where the JSON files go")
    parser.add_argument("--derive", metavar="VERSION", help="derive VERSION's surface from sources (see --git)")
    parser.add_argument("--from", dest="from_version", metavar="VERSION", help="the recorded surface to derive from")
    parser.add_argument("--git", type=Path, help="git dir of a clone or mirror of NVIDIA/TensorRT")
    parser.add_argument("--tag", help="NVIDIA/TensorRT tag of --derive's version, e.g. 8.5.2")
    parser.add_argument("--from-tag", help="NVIDIA/TensorRT tag of --from's version, e.g. v8.6.1")
    args = parser.parse_args(argv)
    if args.derive:
        return _derive(args)
    if args.dump:
        json.dump(dump(), sys.stdout, sort_keys=True)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, requirement in VERSIONS:
        if args.only and stem not in args.only:
            continue
        surface = surface_of(stem, requirement, args.wheels)
        summary = write_surface(args.out / f"{stem}.json", surface, "TensorRT")
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
