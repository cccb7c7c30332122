"""What every backend shares: the precision and backend choices, the artifact sidecar, and the runner contract.

An *artifact* is one runnable file (a TensorRT engine, or an ONNX file for ONNX Runtime) plus a sidecar JSON
(``<file>.json``) that says what it is, what it was built from and for what. A *runner* is a context manager
that runs batches through an artifact and reports per-stage times.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeres.card import ModelCard
from edgeres.errors import BackendError, InputError, ModelError

SIDECAR_FORMAT = 1


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class BackendName(str, enum.Enum):
    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an artifact accepts: ``min <= opt <= max``."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise InputError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """Parse ``"N"`` (fixed) or ``"min:opt:max"``."""
        try:
            parts = [int(p) for p in str(text).split(":")]
        except ValueError:
            raise InputError(f"--batch must be N or min:opt:max with integers, got {text!r}") from None
        if len(parts) == 1:
            return cls(parts[0], parts[0], parts[0])
        if len(parts) == 3:
            return cls(*parts)
        raise InputError(f"--batch must be N or min:opt:max, got {text!r}")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass
class StageTimes:
    """Milliseconds one ``infer`` call spent in each stage; None where a backend cannot measure a stage."""

    compute_ms: float
    h2d_ms: float | None = None
    d2h_ms: float | None = None
    total_ms: float = 0.0


@dataclass
class Sidecar:
    """Everything known about an artifact, saved as ``<artifact>.json`` beside it."""

    backend: str
    precision: str
    card: ModelCard
    artifact_file: str  # file name, relative to the sidecar
    artifact_sha256: str
    source_onnx_sha256: str
    backend_version: str = ""
    profile: dict[str, int] = field(default_factory=lambda: {"min": 1, "opt": 8, "max": 32})
    int8: dict[str, Any] = field(default_factory=dict)  # ranges/cache provenance, mode (explicit/implicit)
    fingerprint: dict[str, Any] = field(default_factory=dict)  # device, versions, flags the artifact is bound to
    options: dict[str, Any] = field(default_factory=dict)  # build options as given
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    edgeres_version: str = ""
    format: int = SIDECAR_FORMAT
    card_sha256: str = ""  # sha256 of the card as built: an edited card (class names, preprocessing) is refused

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["card"] = self.card.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sidecar:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["card"] = ModelCard.from_dict(data["card"])
        return cls(**kwargs)

    @classmethod
    def read(cls, path: str | Path) -> Sidecar:
        """Read and validate a sidecar file; any defect is one BackendError naming the file and the key."""
        from edgeres.schema import SIDECAR, SchemaError, validate

        path = Path(path)
        try:
            data = json.loads(path.read_text())
            validate(data, SIDECAR)
            sidecar = cls.from_dict(data)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BackendError(f"cannot read artifact sidecar {path} ({exc}); rebuild with `edgeres build`") from exc
        except (SchemaError, ModelError) as exc:
            raise BackendError(f"artifact sidecar {path}: {exc}; rebuild with `edgeres build`") from exc
        if sidecar.card_sha256 and sidecar.card_sha256 != card_sha256(sidecar.card):
            raise BackendError(f"artifact sidecar {path}: its model card (class names, preprocessing) was edited "
                               "after the build, so labels could be wrong; restore it or rebuild with "
                               "`edgeres build`")
        from edgeres.card import card_from_file

        sidecar.card = card_from_file(sidecar.card, path.parent)
        return sidecar


def sidecar_path(artifact: str | Path) -> Path:
    """The sidecar JSON path for an artifact file."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def artifact_inputs(artifact: str | Path) -> dict[str, Path]:
    """An artifact and its sidecar, both inputs of whatever runs it (for :func:`edgeres.io.outputs_safe`)."""
    return {"ARTIFACT": Path(artifact), "ARTIFACT's sidecar": sidecar_path(artifact)}


class Runner(Protocol):
    """A loaded artifact, ready to run batches. Use as a context manager."""

    card: ModelCard
    backend: str
    precision: str
    profile: BatchProfile
    last_stage_times: StageTimes | None

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (float32, the card's layout) and return the logits, shape (batch, classes)."""
        ...

    def close(self) -> None: ...


def card_sha256(card: ModelCard) -> str:
    """sha256 of a card's canonical JSON."""
    import hashlib

    return hashlib.sha256(card.to_json().encode("utf-8")).hexdigest()


def write_sidecar(artifact: str | Path, sidecar: Sidecar) -> Path:
    """Write ``sidecar`` beside ``artifact`` atomically (with the hash of its card); returns the sidecar path."""
    from edgeres.card import card_for_file
    from edgeres.io import write_json_atomic

    stored = card_for_file(sidecar.card, Path(artifact).parent)  # dataset paths relative to the artifact's folder
    sidecar.card_sha256 = card_sha256(stored)
    return write_json_atomic(sidecar_path(artifact), {**sidecar.to_dict(), "card": stored.to_dict()})


def read_sidecar_for(artifact: str | Path) -> Sidecar:
    """Read the sidecar of ``artifact``; a missing one is an error that says how to rebuild."""
    path = sidecar_path(artifact)
    if not path.exists():
        raise BackendError(f"{artifact} has no sidecar {path.name}; rebuild it with `edgeres build`")
    return Sidecar.read(path)
