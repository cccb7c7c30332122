"""The environment a measurement was taken in, recorded beside every benchmark result and baseline.

Latency means nothing without the machine: backend and its version, the device (GPU name, or CPU model and
threads), on a Jetson its power mode and clock state (``nvpmodel -q``, ``jetson_clocks --show``), the edgeres
version and the hash of the artifact measured. External tools are asked with a short timeout; a tool that is
absent, fails or hangs leaves its field None.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgeres.version import __version__

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 5.0  # nvpmodel / jetson_clocks / nvidia-smi normally answer in well under a second
_JETSON_MODEL_FILE = Path("/proc/device-tree/model")


@dataclass
class Environment:
    """Where and with what a measurement was taken."""

    backend: str
    backend_version: str
    device: str  # the GPU name when a GPU runs the artifact, else the CPU model
    cpu_model: str
    cpu_count: int  # logical CPUs this process may use
    threads: int | None = None  # the backend's worker threads, when it says
    gpu_name: str | None = None
    jetson_model: str | None = None  # /proc/device-tree/model on a Jetson
    power_mode: str | None = None  # `nvpmodel -q` output, Jetson only
    clocks: str | None = None  # `jetson_clocks --show` output, Jetson only
    edgeres_version: str = __version__
    artifact_sha256: str | None = None
    python: str = field(default_factory=platform.python_version)
    os: str = field(default_factory=lambda: f"{platform.system()} {platform.release()} {platform.machine()}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Environment:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def differences(self, other: Environment, *, keys: tuple[str, ...] | None = None) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ, as ``{name: (self's, other's)}`` (all fields when ``keys`` is None)."""
        names = keys or tuple(f.name for f in dataclasses.fields(self))
        return {k: (getattr(self, k), getattr(other, k)) for k in names if getattr(self, k) != getattr(other, k)}


def run_tool(argv: list[str], *, timeout_s: float = TOOL_TIMEOUT_S) -> str | None:
    """Stripped stdout of an external tool, or None when it is absent, fails, or outlives ``timeout_s``.

    The tool runs in its own process group, so a hung tool is killed with whatever it started (a shell script's
    children would otherwise keep the output pipe open).
    """
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        proc = subprocess.Popen([exe, *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except OSError as exc:
        log.debug("cannot run %s: %s", argv[0], exc)
        return None
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        log.warning("%s did not answer within %.1f s; leaving it out of the environment record", argv[0], timeout_s)
        return None
    if proc.returncode != 0:
        log.debug("%s exited with %d: %s", " ".join(argv), proc.returncode, err.strip()[:200])
        return None
    return out.strip() or None


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``'s model name, or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_count() -> int:
    """Logical CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def nvidia_smi_gpu(*, timeout_s: float = TOOL_TIMEOUT_S) -> str | None:
    """The first GPU's name from ``nvidia-smi``; None without one (Jetsons have no nvidia-smi: see
    :func:`jetson_model`)."""
    out = run_tool(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], timeout_s=timeout_s)
    return out.splitlines()[0].strip() if out else None


def jetson_model(*, model_file: Path | None = None) -> str | None:
    """The board name on a Jetson (``NVIDIA Jetson AGX Orin ...``) from the device tree, else None."""
    try:
        text = (model_file or _JETSON_MODEL_FILE).read_bytes().decode("utf-8", "replace").strip("\x00 \n")
    except OSError:
        return None
    return text if "jetson" in text.lower() or "nvidia" in text.lower() else None


def jetson_power_mode(*, timeout_s: float = TOOL_TIMEOUT_S) -> str | None:
    """``nvpmodel -q`` condensed to one line (e.g. ``"NV Power Mode: MAXN / 0"``); None off a Jetson."""
    out = run_tool(["nvpmodel", "-q"], timeout_s=timeout_s)
    return " / ".join(line.strip() for line in out.splitlines() if line.strip()) if out else None


def jetson_clocks(*, timeout_s: float = TOOL_TIMEOUT_S) -> str | None:
    """``jetson_clocks --show`` output (clock state of CPU, GPU and EMC); None off a Jetson or without root."""
    return run_tool(["jetson_clocks", "--show"], timeout_s=timeout_s)


def _backend_version(backend: str) -> str:
    from importlib import metadata

    candidates = {
        "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
        "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-libs"),
    }.get(backend, (backend,))
    for dist in candidates:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


def collect(*, backend: str, backend_version: str | None = None, threads: int | None = None,
            gpu: bool | None = None, gpu_name: str | None = None, artifact_sha256: str | None = None,
            timeout_s: float = TOOL_TIMEOUT_S) -> Environment:
    """Record the environment of a measurement.

    Args:
        backend: the backend running the artifact (``onnxruntime``, ``tensorrt``).
        backend_version: its version; None = the installed package's.
        threads: the backend's worker threads, when known.
        gpu: whether the artifact runs on a GPU; None = TensorRT does, other backends do not.
        gpu_name: the GPU's name when the caller knows it (from the CUDA driver); None = ask ``nvidia-smi``.
        artifact_sha256: hash of the artifact measured.
        timeout_s: how long each external tool may take.

    Returns:
        The record; fields that cannot be known here are None.
    """
    version = backend_version if backend_version is not None else _backend_version(backend)
    on_gpu = gpu if gpu is not None else backend == "tensorrt"
    jetson = jetson_model()
    gpu_label = gpu_name or nvidia_smi_gpu(timeout_s=timeout_s)
    cpu = cpu_model()
    device = (gpu_label or jetson or "unknown GPU") if on_gpu else cpu
    return Environment(
        backend=backend, backend_version=version, device=device, cpu_model=cpu, cpu_count=cpu_count(),
        threads=threads, gpu_name=gpu_label, jetson_model=jetson,
        power_mode=jetson_power_mode(timeout_s=timeout_s), clocks=jetson_clocks(timeout_s=timeout_s),
        artifact_sha256=artifact_sha256,
    )


# --- the software edgeres runs on here ------------------------------------------------------------------------

_PACKAGES = (  # import name, distribution names to ask for the version (the first installed one wins)
    ("edgeres", ("edgeres",)), ("numpy", ("numpy",)), ("PIL", ("Pillow", "pillow")), ("click", ("click",)),
    ("onnx", ("onnx",)), ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")), ("torch", ("torch",)),
    ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs")), ("pycuda", ("pycuda",)),
)


def _site_kind(location: str) -> str:
    """Where a package lives: this venv, the system (e.g. JetPack's /usr/lib/python3/dist-packages) or elsewhere."""
    import sys

    path = Path(location).resolve()
    if Path(sys.prefix).resolve() in path.parents:
        return "venv" if sys.prefix != sys.base_prefix else "python"
    if any(part in ("dist-packages", "site-packages") for part in path.parts):
        return "system"
    return "path"


def software_report() -> dict[str, Any]:
    """Which packages this Python would import for edgeres, their versions and where they are installed.

    TensorRT and pycuda are located without importing them (``importlib.util.find_spec``); on a Jetson they should
    be JetPack's (``system``), reached from a venv made with ``--system-site-packages``, not wheels from the index.
    The TensorRT version is read from the package metadata, else from the module itself.
    """
    import importlib.metadata
    import importlib.util
    import sys

    packages: dict[str, dict[str, Any]] = {}
    for module, dists in _PACKAGES:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        location = None
        if spec is not None:
            origin = spec.origin if spec.origin not in (None, "namespace") else \
                next(iter(spec.submodule_search_locations or []), None)
            location = str(Path(origin).parent) if origin and origin.endswith("__init__.py") else origin
        version = None
        for dist in dists:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                version = importlib.metadata.version(dist)
                break
        packages[module] = {"version": version, "location": location,
                            "from": _site_kind(location) if location else None}
    if packages["tensorrt"]["location"] and packages["tensorrt"]["version"] is None:
        with contextlib.suppress(Exception):  # JetPack's apt package has no metadata: ask the module
            from edgeres.backends.tensorrt import trt_version

            packages["tensorrt"]["version"] = trt_version()
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    system_site = None
    if cfg.is_file():
        for line in cfg.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "include-system-site-packages":
                system_site = value.strip().lower() == "true"
    return {"python": platform.python_version(), "executable": sys.executable,
            "venv": sys.prefix != sys.base_prefix, "system_site_packages": system_site,
            "jetson": _read(_JETSON_MODEL_FILE), "packages": packages}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None
