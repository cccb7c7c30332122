"""What TensorRT made of a network: layers counted by output precision, from the engine inspector's JSON (8.x-10.x
and the 11.x schema)."""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from types import ModuleType
from typing import Any

from edgeres.backends.tensorrt._lib import _Logger

log = logging.getLogger(__name__)


def _layer_summary(trt: ModuleType, serialized: Any, logger: _Logger, *, version_compatible: bool) -> dict[str, int]:
    """Count the engine's layers by output precision (Int8/Half/Float) from the engine inspector."""
    try:
        runtime = trt.Runtime(logger.trt_logger)
        if version_compatible:  # a version-compatible engine embeds host code and loads only when allowed
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(bytes(serialized))
        if engine is None:
            log.warning("no layer information: TensorRT cannot load the engine it built (%s)",
                        logger.last_errors("unknown error"))
            return {}
        info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    except (TypeError, ValueError, RuntimeError) as exc:
        log.debug("no layer information: %s", exc)
        return {}
    counts: Counter[str] = Counter()
    for layer in info.get("Layers", []):
        if isinstance(layer, dict):
            counts[_output_datatype(layer)] += 1
    return dict(sorted(counts.items()))


def _output_datatype(layer: dict[str, Any]) -> str:
    """The data type of a layer's first output. 8.x-10.x: one "Format/Datatype" string; 11.x splits it into
    "Format" and "DataType" (TensorRT 11 migration guide, IEngineInspector JSON output)."""
    outputs = layer.get("Outputs") or [{}]
    first = outputs[0] if isinstance(outputs[0], dict) else {}
    if "DataType" in first:
        return _datatype(str(first["DataType"]))
    return _datatype(str(first.get("Format/Datatype", "")))


_DATATYPES = {"int8": "Int8", "fp16": "Half", "half": "Half", "fp32": "Float", "float": "Float", "int32": "Int32",
              "int64": "Int64", "bf16": "BF16", "fp8": "FP8", "bool": "Bool", "uint8": "UInt8", "int4": "Int4",
              "fp4": "FP4"}


def _datatype(format_datatype: str) -> str:
    """The data type in an inspector "Format/Datatype", e.g. "Thirty-two wide channel vectorized row major Int8
    format" -> "Int8", "Row major linear FP32" -> "Float"."""
    for word in re.findall(r"[A-Za-z0-9]+", format_datatype):
        if word.lower() in _DATATYPES:
            return _DATATYPES[word.lower()]
    return "other"
