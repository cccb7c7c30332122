"""The TensorRT build options as one validated object, recorded in the engine's sidecar from its own ``to_dict``.

``edgeres build``'s TensorRT flags become one :class:`TensorRTOptions`, handed unchanged from the CLI through
:func:`edgeres.building.build_artifact` and :func:`edgeres.backends.build` to the TensorRT builder::

    options = TensorRTOptions(workspace_mb=2048, timing_cache=Path("trt.cache"), opt_level=5)
    build_artifact("m.onnx", precision="int8", backend="tensorrt", tensorrt=options)

No TensorRT is needed to make or check one: what depends on the installed version or the device (an optimisation
level before 8.6, a DLA core the device lacks) is refused by the builder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeres.errors import InputError

INT8_MODES = ("explicit", "implicit")  # Q/DQ ONNX, or a calibration cache (TensorRT 8.5-10.x)
HIGH_PRECISIONS = ("fp16", "fp32")  # what INT8 engines run their unquantized layers in
OPT_LEVELS = range(0, 6)  # TensorRT's builder optimisation levels (its default is 3)


@dataclass(frozen=True)
class TensorRTOptions:
    """How TensorRT builds an engine; every field's default is TensorRT's (or edgeres's) own choice."""

    int8_mode: str = "explicit"  # int8: "explicit" (Q/DQ ONNX) or "implicit" (calibration cache, 8.5-10.x)
    workspace_mb: int | None = None  # builder workspace limit; None: TensorRT's, or half the memory on a Jetson
    timing_cache: Path | None = None  # read when present, written back after the build
    opt_level: int | None = None  # builder optimisation level 0-5; None: TensorRT's default (3)
    dla_core: int | None = None  # build for this DLA core, GPU fallback for the rest (Jetson AGX Orin: 0 or 1)
    version_compatible: bool = False  # an engine later TensorRT versions can run (8.6+)
    high_precision: str = "fp16"  # int8: the precision of the layers left unquantized, "fp16" or "fp32"
    tf32: bool = True  # FP32 layers may use TF32 tensor cores; False for strict FP32

    def __post_init__(self) -> None:
        if self.int8_mode not in INT8_MODES:
            raise InputError(f"--int8-mode must be one of {', '.join(INT8_MODES)}, got {self.int8_mode!r}")
        if self.high_precision not in HIGH_PRECISIONS:
            raise InputError(f"--high-precision must be one of {', '.join(HIGH_PRECISIONS)}, "
                             f"got {self.high_precision!r}")
        if self.workspace_mb is not None and not self.workspace_mb > 0:  # NaN too
            raise InputError(f"--workspace must be a positive number of MiB, got {self.workspace_mb}")
        if self.opt_level is not None and self.opt_level not in OPT_LEVELS:
            raise InputError(f"--opt-level must be 0..5, got {self.opt_level}")
        if self.dla_core is not None and not self.dla_core >= 0:
            raise InputError(f"--dla-core must be a DLA core number (0, 1, ...), got {self.dla_core}")
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the timing cache as a string), as the sidecar's ``options`` records them."""
        data = dataclasses.asdict(self)
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorRTOptions:
        """The options a sidecar's ``options`` records; keys it lacks (older sidecars) or holds as null take the
        defaults, keys that are not options (``layer_precisions``...) are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields and v is not None})

    def flags_set(self) -> list[str]:
        """The ``edgeres build`` flags that differ from the defaults (what a backend other than TensorRT ignores)."""
        default = TensorRTOptions()
        flags = {"workspace_mb": "--workspace", "timing_cache": "--timing-cache", "opt_level": "--opt-level",
                 "dla_core": "--dla-core", "version_compatible": "--version-compatible", "tf32": "--no-tf32",
                 "int8_mode": f"--int8-mode {self.int8_mode}"}
        return [flag for name, flag in flags.items() if getattr(self, name) != getattr(default, name)]
