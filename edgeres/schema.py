"""One schema per JSON file edgeres reads (model card, sidecar, baseline, infer results), and a small validator.

A file that does not fit its schema fails with one line naming the key and what was wrong, e.g.
``key 'artifact.sha256' must be a string, got 3 (int)``, never a ``KeyError`` traceback deep in the code that
uses it. A schema is plain data: Python types (``str``, ``int``, ``float`` = any number, ``bool``, ``dict``,
``list``), a tuple of them (any one fits) and the helpers below. Ranges files are validated by ``calibration.ranges`` (which may not import
edgeres) in the same terms. A dependency (jsonschema, pydantic) would add ~1-5 MB and a second error style for
what these 100 lines do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class SchemaError(ValueError):
    """A JSON document does not fit its schema; the message names the key."""


@dataclass(frozen=True)
class Obj:
    """A JSON object with ``required`` and ``optional`` keys (other keys are allowed and ignored)."""

    required: dict[str, Any] = field(default_factory=dict)
    optional: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListOf:
    """A JSON array whose items all fit ``item``; ``min_len`` items at least."""

    item: Any
    min_len: int = 0


@dataclass(frozen=True)
class MapOf:
    """A JSON object of any keys whose values fit ``value``; ``int_keys``: each key must read as an integer."""

    value: Any
    int_keys: bool = False


@dataclass(frozen=True)
class Null:
    """``spec`` or null."""

    spec: Any


@dataclass(frozen=True)
class OneOf:
    """One of the given literal values."""

    values: tuple[Any, ...]


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
          list: "an array"}


def _got(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    kind = {dict: "object", list: "array", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{text} ({kind})"


def _fits_type(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def validate(data: Any, spec: Any, where: str = "") -> None:
    """Check ``data`` against ``spec``.

    Raises:
        SchemaError: ``key 'a.b[2]' must be ..., got ...`` or ``missing key 'a.b'`` (``the document`` at top level).
    """
    name = f"key '{where}'" if where else "the document"
    if spec is Any or spec is object:
        return
    if isinstance(spec, Null):
        if data is not None:
            validate(data, spec.spec, where)
        return
    if isinstance(spec, OneOf):
        if data not in spec.values:
            raise SchemaError(f"{name} must be one of {', '.join(map(repr, spec.values))}, got {_got(data)}")
        return
    if isinstance(spec, type):
        spec = (spec,)
    if isinstance(spec, tuple):  # one of several types
        if not any(_fits_type(data, kind) for kind in spec):
            wanted = " or ".join(_NAMES.get(kind, kind.__name__) for kind in spec)
            raise SchemaError(f"{name} must be {wanted}, got {_got(data)}")
        return
    if isinstance(spec, ListOf):
        if not isinstance(data, (list, tuple)):  # tuples: dicts that never went through JSON (checkpoints)
            raise SchemaError(f"{name} must be an array, got {_got(data)}")
        if len(data) < spec.min_len:
            raise SchemaError(f"{name} must hold at least {spec.min_len} item(s), got {len(data)}")
        for i, item in enumerate(data):
            validate(item, spec.item, f"{where}[{i}]")
        return
    if not isinstance(data, dict):
        raise SchemaError(f"{name} must be an object, got {_got(data)}")
    if isinstance(spec, MapOf):
        for key, value in data.items():
            if spec.int_keys and not str(key).lstrip("-").isdigit():
                raise SchemaError(f"{name} must have integer keys, got {key!r}")
            validate(value, spec.value, f"{where}.{key}" if where else str(key))
        return
    for key, sub in spec.required.items():
        if key not in data:
            raise SchemaError(f"missing key '{where + '.' if where else ''}{key}'")
        validate(data[key], sub, f"{where}.{key}" if where else key)
    for key, sub in spec.optional.items():
        if key in data:
            validate(data[key], sub, f"{where}.{key}" if where else key)


PREPROCESS = Obj(optional={
    "resize": Null(int), "crop": int, "mean": ListOf(float, 1), "std": ListOf(float, 1), "channels": int,
    "channel_order": str, "layout": str, "interpolation": str,
})

CARD = Obj(required={"arch": str, "class_names": ListOf((str, int), 1)}, optional={
    "preprocess": PREPROCESS, "input_name": str, "output_name": str, "model_options": dict, "dataset": dict,
    "metrics": dict, "seed": Null(int), "versions": dict,
})

SIDECAR = Obj(
    required={"backend": str, "precision": str, "card": CARD, "artifact_file": str, "artifact_sha256": str,
              "source_onnx_sha256": str},
    optional={"backend_version": str, "profile": Obj(required={"min": int, "opt": int, "max": int}),
              "int8": dict, "fingerprint": dict, "options": Obj(optional={"threads": Null(int)}), "created": str,
              "edgeres_version": str,
              "format": int, "card_sha256": str},
)

_ARTIFACT_INFO = Obj(required={"path": str, "sha256": str, "model_sha256": str, "backend": str, "precision": str,
                               "arch": str})
_ENVIRONMENT = Obj(required={"backend": str, "backend_version": str, "device": str, "cpu_model": str,
                             "cpu_count": int},
                   optional={"threads": Null(int), "gpu_name": Null(str), "jetson_model": Null(str),
                             "power_mode": Null(str), "clocks": Null(str), "edgeres_version": str,
                             "artifact_sha256": Null(str), "python": str, "os": str})
_ACCURACY = Obj(
    required={"data": Obj(required={"root": str, "images": int, "digest": str}, optional={"labelled": int}),
              "top1": float, "top5": float, "top_k": int},
    optional={"reference": Null(Obj(required={"top1": float}, optional={"path": str, "sha256": str})),
              "agreement": Null(float)},
)
_LATENCY = Obj(required={"trials": MapOf(ListOf(ListOf(float, 1), 1), int_keys=True)},
               optional={"settings": dict})

BASELINE = Obj(
    required={"kind": OneOf(("edgeres.baseline",)), "artifact": _ARTIFACT_INFO, "environment": _ENVIRONMENT},
    optional={"format": int, "created": str, "device": str, "accuracy": Null(_ACCURACY),
              "latency": Null(_LATENCY)},
)

_STATS = MapOf(Null(float))
RESULTS = Obj(required={"summary": Obj(
    required={"backend": str, "precision": str, "images": int},
    optional={"artifact": str, "skipped": int, "batch": int, "batches": int, "wall_s": float, "load_s": float,
              "images_per_s": float, "latency_ms": MapOf(_STATS),
              "accuracy": Null(Obj(required={"top1": float, "top5": float}, optional={"labelled": int}))},
)}, optional={"results": list, "skipped": list})
