"""What an engine is bound to (TensorRT version, GPU, CUDA, L4T) and NVIDIA's rules for loading it elsewhere."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeres.backends import cuda as cu
from edgeres.backends.tensorrt._lib import _numeric_version
from edgeres.errors import BackendError

log = logging.getLogger(__name__)
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # present on Jetson (L4T)

def l4t_release(path: Path | None = None) -> str | None:
    """The L4T release of a Jetson ("R36.4.0") from ``/etc/nv_tegra_release``, or None elsewhere."""
    path = path or NV_TEGRA_RELEASE
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    return f"R{m.group(1)}.{m.group(2)}" if m else first.strip("# ").strip()


def machine_fingerprint(trt: ModuleType) -> dict[str, Any]:
    """TensorRT version (and where it was imported from: JetPack's or a wheel), GPU, CUDA and L4T of this machine
    (what an engine is bound to)."""
    info = cu.device_info(0)
    location = vars(trt).get("__file__")  # a module attribute, not part of the TensorRT API surface
    return {"tensorrt": _numeric_version(trt.__version__), "gpu": info.name, "compute_capability": info.compute_capability,
            "cuda": info.cuda_version, "driver": info.driver_version, "l4t": l4t_release(),
            "tensorrt_location": str(Path(location).parent) if location else None}


def runtime_can_load(built: str, runtime: str, *, version_compatible: bool) -> bool:
    """Whether TensorRT ``runtime`` can deserialize an engine that TensorRT ``built`` made.

    NVIDIA's rules (developer guide, "Version Compatibility"; TensorRT 11.4 support matrix): an ordinary engine
    runs only on the version that built it; a version-compatible one (built by 8.6 or later) on the same or a
    *later* runtime of its major, and across majors only 8.6+ -> 10.x and 10.x -> 11.x. Never on an older runtime.
    """
    b, r = _version_tuple(built), _version_tuple(runtime)
    if b == r:
        return True
    if not version_compatible or r < b or b < (8, 6):
        return False
    return b[0] == r[0] or (b[0], r[0]) in {(8, 10), (10, 11)}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in _numeric_version(version).split(".")[:3])


def check_fingerprint(recorded: dict[str, Any], here: dict[str, Any], *, artifact: Path) -> None:
    """Explain why an engine cannot run here, before TensorRT's bare version-tag assertion would."""
    rebuild = f"rebuild it on this machine with `edgeres build MODEL.onnx --backend tensorrt` ({artifact})"
    built, now = recorded.get("tensorrt"), here["tensorrt"]
    if built and not runtime_can_load(str(built), str(now), version_compatible=bool(recorded.get("version_compatible"))):
        why = ("a version-compatible engine runs only on the same or a later TensorRT (same major, or 8.6+ -> 10, "
               "10 -> 11)" if recorded.get("version_compatible") else "engines are bound to their TensorRT version")
        raise BackendError(f"engine {artifact.name} was built by TensorRT {built} but {now} is installed ({why}); "
                           f"{rebuild}")
    if recorded.get("compute_capability") and recorded["compute_capability"] != here["compute_capability"]:
        raise BackendError(f"engine {artifact.name} was built for a GPU of compute capability "
                           f"{recorded['compute_capability']} ({recorded.get('gpu')}) but this GPU is "
                           f"{here['gpu']} ({here['compute_capability']}); {rebuild}")
    if recorded.get("gpu") and recorded["gpu"] != here["gpu"]:
        log.warning("engine %s was built on %s and runs on %s (same compute capability): it works, but its "
                    "tactics were timed on the other GPU", artifact.name, recorded["gpu"], here["gpu"])
    if recorded.get("l4t") != here.get("l4t") and recorded.get("l4t") and here.get("l4t"):
        log.warning("engine %s was built on L4T %s, this Jetson runs %s", artifact.name, recorded["l4t"], here["l4t"])
