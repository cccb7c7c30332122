"""Triton ``config.pbtxt`` files for edgeres artifacts, written as text and checked against Triton's own schema.

The schema is Triton's ``model_config.proto`` as compiled into ``tritonclient`` (``model_config_pb2``): a config
that does not parse with protobuf's ``text_format`` into ``inference.ModelConfig`` is never written. On top of the
schema, :func:`validate_config` checks what Triton would refuse at load time (preferred batch sizes above
``max_batch_size``, a batching model without a batch range).
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from edgeres.errors import BackendUnavailable, ModelError

_SCHEMA: ModuleType | None = None


def schema() -> ModuleType:
    """Triton's ``model_config_pb2``, loaded from tritonclient without importing its gRPC client (no grpcio)."""
    global _SCHEMA
    if _SCHEMA is None:
        from edgeres.serve.triton import INSTALL_HINT

        spec = importlib.util.find_spec("tritonclient")
        if spec is None or not spec.submodule_search_locations:
            raise BackendUnavailable(f"checking Triton configs needs tritonclient; {INSTALL_HINT}")
        path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
        loader_spec = importlib.util.spec_from_file_location("_edgeres_triton_model_config_pb2", path)
        if loader_spec is None or loader_spec.loader is None or not path.exists():
            raise BackendUnavailable(f"tritonclient has no model_config_pb2 ({path}); {INSTALL_HINT}")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        _SCHEMA = module
    return _SCHEMA


def parse_config(text: str, *, where: str = "config.pbtxt") -> Any:
    """Parse config text into Triton's ``inference.ModelConfig``; a schema violation is a ModelError."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, schema().ModelConfig())
    except text_format.ParseError as exc:
        raise ModelError(f"{where} does not match Triton's model config schema: {exc}") from None


def validate_config(text: str, *, where: str = "config.pbtxt") -> Any:
    """Parse and check a config as Triton's model loader would; returns the parsed ``ModelConfig``.

    Raises:
        ModelError: a schema violation, or batching settings Triton refuses at load time.
    """
    config = parse_config(text, where=where)
    if not config.name:
        raise ModelError(f"{where}: the model has no name")
    if not (config.platform or config.backend):
        raise ModelError(f"{where}: model {config.name!r} names neither a platform nor a backend")
    if config.max_batch_size < 0:
        raise ModelError(f"{where}: max_batch_size must be >= 0, got {config.max_batch_size}")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            raise ModelError(f"{where}: dynamic batching needs max_batch_size > 0")
        too_big = [b for b in config.dynamic_batching.preferred_batch_size if not 0 < b <= config.max_batch_size]
        if too_big:
            raise ModelError(f"{where}: preferred batch sizes {too_big} are outside 1..{config.max_batch_size}")
    for tensor in (*config.input, *config.output):
        if not tensor.name or not tensor.dims or any(d == 0 or d < -1 for d in tensor.dims):
            raise ModelError(f"{where}: tensor {tensor.name!r} has dims {list(tensor.dims)}; each must be > 0 or -1")
    for group in config.instance_group:
        if group.count < 1:
            raise ModelError(f"{where}: instance group count must be >= 1, got {group.count}")
    return config


def _q(text: str) -> str:
    return json.dumps(text)  # a protobuf text-format string literal (double quotes, backslash escapes)


@dataclass
class Tensor:
    name: str
    dtype: str  # Triton's TYPE_* name without the prefix: FP32, UINT8, INT32
    dims: Sequence[int]
    label_filename: str | None = None
    ragged: bool = False

    def render(self) -> str:
        parts = [f"name: {_q(self.name)}", f"data_type: TYPE_{self.dtype}",
                 f"dims: [ {', '.join(str(d) for d in self.dims)} ]"]
        if self.label_filename:
            parts.append(f"label_filename: {_q(self.label_filename)}")
        if self.ragged:
            parts.append("allow_ragged_batch: true")
        return "  {\n    " + "\n    ".join(parts) + "\n  }"


@dataclass
class ModelConfig:
    """The parts of a Triton model config edgeres writes."""

    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch_size: int
    platform: str | None = None  # tensorrt_plan, onnxruntime_onnx
    backend: str | None = None  # python
    preferred_batch_sizes: list[int] = field(default_factory=list)
    max_queue_delay_us: int = 100
    instances: int = 1
    kind: str = "KIND_GPU"  # or KIND_CPU
    default_model_filename: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    accelerator: dict[str, str] | None = None  # ONNX Runtime's TensorRT execution provider parameters
    notes: list[str] = field(default_factory=list)  # leading comments

    def render(self) -> str:
        lines = [f"# {n}" for n in self.notes]
        lines.append(f"name: {_q(self.name)}")
        if self.platform:
            lines.append(f"platform: {_q(self.platform)}")
        if self.backend:
            lines.append(f"backend: {_q(self.backend)}")
        if self.default_model_filename:
            lines.append(f"default_model_filename: {_q(self.default_model_filename)}")
        lines.append(f"max_batch_size: {self.max_batch_size}")
        lines.append("input [\n" + ",\n".join(t.render() for t in self.inputs) + "\n]")
        lines.append("output [\n" + ",\n".join(t.render() for t in self.outputs) + "\n]")
        if self.max_batch_size > 0:
            batching = []
            if self.preferred_batch_sizes:
                batching.append(f"preferred_batch_size: [ {', '.join(map(str, self.preferred_batch_sizes))} ]")
            batching.append(f"max_queue_delay_microseconds: {self.max_queue_delay_us}")
            lines.append("dynamic_batching {\n  " + "\n  ".join(batching) + "\n}")
        lines.append(f"instance_group [\n  {{\n    kind: {self.kind}\n    count: {self.instances}\n  }}\n]")
        if self.accelerator is not None:
            params = "\n".join(f"          parameters {{ key: {_q(k)} value: {_q(v)} }}"
                               for k, v in self.accelerator.items())
            lines.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n"
                         "      {\n        name: \"tensorrt\"\n" + params + "\n      }\n    ]\n  }\n}")
        for key, value in self.parameters.items():
            lines.append(f"parameters {{\n  key: {_q(key)}\n  value: {{ string_value: {_q(value)} }}\n}}")
        return "\n".join(lines) + "\n"


def preferred_batch_sizes(profile: Any) -> list[int]:
    """The batch sizes the dynamic batcher should aim for: the profile's optimum and maximum."""
    return sorted({int(profile.opt), int(profile.max)})
