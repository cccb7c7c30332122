"""Baselines of the regression gate: the JSON file, reading and writing it, and matching it with a new measurement.

A baseline holds the artifact's identity (hashes, backend), its environment (device, versions) and the raw
measurements (accuracy on a named dataset, every per-trial latency sample). Format 2 adds, beside the latency
trials, the machine-speed probe timed in the same rounds (its recipe per batch size and its samples) and the
machine's state during the trials (load average, busy and steal fractions, CPU); format 1 files still load, and
their latency is judged without load normalisation. :mod:`edgeres.checking` compares with one
only when it was recorded for the same artifact, model, device and dataset::

    base = load_baseline("baseline.json")
    notes = match_identity(base, now, allow_mismatch=False, path="baseline.json")
    save_baseline(now, "baseline.json")
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeres.benchmarking import ArtifactInfo
from edgeres.environment import Environment
from edgeres.errors import GateInputError
from edgeres.io import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

BASELINE_FORMAT = 2
_IDENTITY = (("artifact sha256", "sha256"), ("model sha256", "model_sha256"), ("backend", "backend"))
_NOTED_ENV = ("backend_version", "threads", "power_mode", "clocks", "edgeres_version", "gpu_name")


class BaselineMismatch(GateInputError):
    """The baseline was recorded for another artifact, model, device or dataset."""


@dataclass
class Baseline:
    """What a baseline JSON holds: the artifact's identity, its environment and the raw measurements."""

    artifact: ArtifactInfo
    environment: Environment
    accuracy: dict[str, Any] | None = None  # {"data": {...}, "top1", "top5", "reference": {...}, "agreement"}
    # {"trials": {"1": [[ms, ...], ...]}, "settings": {...}, "probe": {"specs": {"1": {...}}, "trials": {"1": [[ms,
    # ...], ...]}}, "machine": {"before": {...}, "after": {...}, "fractions": {...}}}
    latency: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def device(self) -> str:
        return self.environment.device

    def latency_trials(self) -> dict[int, list[list[float]]]:
        if not self.latency:
            return {}
        return {int(b): [list(map(float, t)) for t in trials] for b, trials in self.latency["trials"].items()}

    def probe_trials(self) -> dict[int, list[list[float]]] | None:
        """The probe's samples per batch size, or None when the baseline has no probe (format 1)."""
        probe = (self.latency or {}).get("probe")
        if not probe:
            return None
        return {int(b): [list(map(float, t)) for t in trials] for b, trials in probe["trials"].items()}

    def probe_specs(self) -> dict[int, dict[str, Any]]:
        """The probe's recipe per batch size (see :class:`edgeres.probe.ProbeSpec`); empty without a probe."""
        probe = (self.latency or {}).get("probe") or {}
        return {int(b): dict(spec) for b, spec in probe.get("specs", {}).items()}

    def to_dict(self) -> dict[str, Any]:
        return {"format": BASELINE_FORMAT, "kind": "edgeres.baseline", "created": self.created,
                "artifact": self.artifact.to_dict(), "device": self.device,
                "environment": self.environment.to_dict(), "accuracy": self.accuracy, "latency": self.latency}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        if data.get("kind") != "edgeres.baseline":
            raise GateInputError("not an edgeres baseline (no kind 'edgeres.baseline'); write one with "
                                 "`edgeres check ARTIFACT --baseline FILE --update-baseline`")
        try:
            return cls(artifact=ArtifactInfo(**data["artifact"]),
                       environment=Environment.from_dict(data["environment"]), accuracy=data.get("accuracy"),
                       latency=data.get("latency"), created=data.get("created", ""))
        except (KeyError, TypeError) as exc:
            raise GateInputError(f"baseline is incomplete ({exc}); rewrite it with --update-baseline") from exc


def load_baseline(path: str | Path) -> Baseline:
    """Read a baseline JSON.

    Raises:
        GateInputError: when the file is missing or is not a baseline.
    """
    path = Path(path)
    if not path.is_file():
        raise GateInputError(f"baseline {path} not found; write it with `edgeres check ARTIFACT --baseline {path} "
                             "--update-baseline`")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GateInputError(f"cannot read baseline {path} ({exc})") from exc
    if not isinstance(data, dict):
        raise GateInputError(f"baseline {path} is not a JSON object")
    if data.get("kind") != "edgeres.baseline":
        raise GateInputError(f"{path} is not an edgeres baseline (no kind 'edgeres.baseline'); write one with "
                             f"`edgeres check ARTIFACT --baseline {path} --update-baseline`")
    from edgeres.schema import BASELINE, SchemaError, validate

    try:  # every key the gate reads, checked once: a malformed baseline is exit 2, never a "regression"
        validate(data, BASELINE)
    except SchemaError as exc:
        raise GateInputError(f"baseline {path}: {exc}; rewrite it with --update-baseline") from exc
    return Baseline.from_dict(data)


def save_baseline(baseline: Baseline, path: str | Path) -> None:
    """Write ``baseline`` to ``path`` as JSON, atomically."""
    write_json_atomic(path, baseline.to_dict())


def _identity_differences(base: Baseline, now: Baseline) -> list[str]:
    def short(key: str, value: str) -> str:
        return value[:16] if key.endswith("sha256") else value  # hashes shortened, names in full

    diffs = [f"{label} {short(key, getattr(base.artifact, key))} -> {short(key, getattr(now.artifact, key))}"
             for label, key in _IDENTITY if getattr(base.artifact, key) != getattr(now.artifact, key)]
    if base.device != now.device:
        diffs.append(f"device {base.device!r} -> {now.device!r}")
    return diffs


def match_identity(base: Baseline, now: Baseline, *, allow_mismatch: bool, path: str | Path) -> list[str]:
    """Refuse a baseline of another artifact, model or device (or, allowed, note it); note environment changes.

    Args:
        base: the stored baseline, read from ``path``.
        now: what is measured now (its artifact and environment).
        allow_mismatch: note a different artifact, model or device instead of refusing it.
        path: the baseline file, for the message.

    Returns:
        Notes for the verdict table.

    Raises:
        BaselineMismatch: the identities differ and ``allow_mismatch`` is False.
    """
    diffs = _identity_differences(base, now)
    if diffs and not allow_mismatch:
        raise BaselineMismatch(f"baseline {path} was recorded for something else ({'; '.join(diffs)}); pass "
                               "--allow-mismatch to compare anyway, or --update-baseline to replace it")
    notes = []
    if diffs:
        notes.append(f"baseline mismatch allowed: {'; '.join(diffs)}")
        log.warning("comparing with a baseline of another artifact/model/device: %s", "; ".join(diffs))
    changed = base.environment.differences(now.environment, keys=_NOTED_ENV)
    for key, (old, new) in changed.items():
        notes.append(f"environment {key} changed: {old!r} -> {new!r}")
    return notes


def baseline_artifact(base: Baseline | None) -> Path:
    """The baseline's artifact file, for timing it side by side.

    Raises:
        GateInputError: no baseline, or its artifact is gone or has changed since the baseline was written.
    """
    if base is None:
        raise GateInputError("--side-by-side needs an existing baseline")
    path = Path(base.artifact.path)
    if not path.is_file():
        raise GateInputError(f"--side-by-side needs the baseline's artifact {path}, which is gone; keep it beside "
                             "the baseline or compare with the stored samples")
    if sha256_file(path) != base.artifact.sha256:
        raise GateInputError(f"--side-by-side: {path} changed since the baseline was written (sha256 differs); "
                             "restore it or compare with the stored samples")
    return path


def find_baseline_artifact(base: Baseline) -> tuple[Path | None, str]:
    """The baseline's artifact when it is on disk and unchanged, else None; and a sentence saying which."""
    path = Path(base.artifact.path)
    if not path.is_file():
        return None, f"the baseline's artifact {path} is not on disk"
    if sha256_file(path) != base.artifact.sha256:
        return None, f"the baseline's artifact {path} changed since the baseline was written"
    return path, f"the baseline's artifact {path} is on disk"


def match_accuracy_inputs(base: Baseline, now: Baseline, *, allow_mismatch: bool) -> list[str]:
    """Refuse (or, allowed, note) a dataset that differs from the baseline's; note a different reference.

    Returns:
        Notes for the verdict table.

    Raises:
        BaselineMismatch: the datasets differ and ``allow_mismatch`` is False.
    """
    notes = []
    old, new = base.accuracy or {}, now.accuracy or {}
    if old["data"]["digest"] != new["data"]["digest"]:
        msg = (f"dataset differs from the baseline's ({old['data']['images']} images in {old['data']['root']} -> "
               f"{new['data']['images']} in {new['data']['root']})")
        if not allow_mismatch:
            raise BaselineMismatch(f"{msg}; check on the same folder, pass --allow-mismatch, or --update-baseline")
        log.warning("%s", msg)
        notes.append(msg)
    old_ref, new_ref = old.get("reference") or {}, new.get("reference") or {}
    if old_ref.get("sha256") and new_ref.get("sha256") and old_ref["sha256"] != new_ref["sha256"]:
        notes.append(f"the reference model differs from the baseline's (sha256 {old_ref['sha256'][:12]} -> "
                     f"{new_ref['sha256'][:12]}): agreement compares different references")
    return notes
