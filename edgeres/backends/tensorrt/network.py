"""The network TensorRT parses: which ONNX (as given, or FP16-typed), checked for what the parser rejects, and
parsed with every parser error named."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgeres.backends.base import Precision
from edgeres.backends.tensorrt._lib import Features, _Logger, _trt
from edgeres.errors import InputError, ModelError

def _load_onnx(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX file ({exc})") from exc


def _check_symmetric_int8(model: Any, path: Path) -> None:
    """TensorRT's ONNX parser takes only INT8 Q/DQ with zero point 0 (onnx-tensorrt, QuantDequantLinearHelper:
    "TensorRT only supports symmetric quantization"); refuse the u8 ONNX Runtime form before TensorRT does."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            continue
        if zp.data_type == TensorProto.UINT8 or np.any(numpy_helper.to_array(zp) != 0):
            raise ModelError(f"{path} holds asymmetric or UINT8 Q/DQ ({node.op_type} {node.name!r}, zero point "
                             f"{zp.name!r}): that is the ONNX Runtime form (`edgeres quantize --activations u8`), "
                             f"which TensorRT's parser rejects; build from the FP32 ONNX (edgeres makes the "
                             f"signed Q/DQ itself) or quantize with --activations s8")


def qdq_builds_strongly_typed(feat: Features | None = None) -> bool:
    """Whether a Q/DQ network is built strongly typed (10.x, 11.x): its types, not flags, set precision.
    ``feat`` defaults to the installed TensorRT's."""
    feat = feat if feat is not None else Features.detect(_trt())
    return feat.always_strongly_typed or feat.strongly_typed is not None


def _float16_qdq(model: Any) -> bool:
    """Whether a Q/DQ model's scales are FP16 (its float part already FP16)."""
    from onnx import TensorProto

    inits = {i.name: i.data_type for i in model.graph.initializer}
    return any(node.op_type == "QuantizeLinear" and inits.get(node.input[1]) == TensorProto.FLOAT16
               for node in model.graph.node)


def _network_source(onnx_path: Path, precision: Precision, int8_mode: str, feat: Features, tmp: Path, *,
                    high_precision: str = "fp16") -> tuple[Path, bool]:
    """The ONNX TensorRT parses: the given one, or an FP16-typed copy (fp16 on 11.x; the float part of a Q/DQ
    network built strongly typed with ``high_precision="fp16"``); and whether it holds Q/DQ (read once here)."""
    model = _load_onnx(onnx_path)
    has_qdq = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    if has_qdq:
        _check_symmetric_int8(model, onnx_path)
    fp16_qdq = has_qdq and _float16_qdq(model)
    del model
    if (precision is Precision.INT8 and has_qdq and high_precision == "fp16" and qdq_builds_strongly_typed(feat)
            and not fp16_qdq):
        from edgeres.quantization import to_fp16

        return to_fp16(onnx_path, tmp / (onnx_path.stem + ".fp16.onnx")), has_qdq
    if precision is Precision.INT8 and int8_mode == "explicit" and not has_qdq:
        raise ModelError(f"{onnx_path} has no QuantizeLinear/DequantizeLinear nodes, so it cannot make an explicit "
                         f"INT8 engine; quantize it first (`edgeres quantize`) or use --int8-mode implicit")
    if precision is Precision.INT8 and int8_mode == "implicit":
        if not feat.implicit_int8:
            raise InputError(f"--int8-mode implicit (calibration cache) was removed in TensorRT 11; TensorRT "
                             f"{feat.era} builds INT8 from a Q/DQ ONNX only: use --int8-mode explicit")
        if has_qdq:
            raise ModelError(f"{onnx_path} is already a Q/DQ ONNX; --int8-mode implicit needs the FP32 ONNX")
    if precision is Precision.FP16 and feat.always_strongly_typed:
        # 11.x: no FP16 flag; the network's types decide, so feed an FP16-typed ONNX (FP32 I/O)
        from edgeres.quantization import to_fp16

        return to_fp16(onnx_path, tmp / (onnx_path.stem + ".fp16.onnx")), has_qdq
    return onnx_path, has_qdq


def _parse(trt: ModuleType, builder: Any, src: Path, feat: Features, logger: _Logger, *, qdq: bool) -> Any:
    flags = 0
    if feat.explicit_batch is not None:  # 8.x: ONNX needs an explicit-batch network
        flags |= 1 << int(feat.explicit_batch)
    if feat.strongly_typed is not None and qdq:  # 10.x: Q/DQ networks built strongly typed
        flags |= 1 << int(feat.strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger.trt_logger)
    if not parser.parse(src.read_bytes(), str(src)):
        raise ModelError(f"TensorRT cannot parse {src.name}: " + "; ".join(_parser_errors(parser, src, feat)))
    # keep the parser alive as long as the network: on older versions the parser owns the weights
    return _NetworkHolder(network, parser, flags)


@dataclass
class _NetworkHolder:
    network: Any
    parser: Any
    flags: int



def _parser_errors(parser: Any, src: Path, feat: Features) -> list[str]:
    """One line per parser error: node, operator and message."""
    import onnx

    nodes = onnx.load(str(src), load_external_data=False).graph.node
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        index = err.node()
        if feat.named_parser_errors:  # 10.x+: the parser names the node and operator itself
            name, op = err.node_name(), err.node_operator()
        else:  # 8.x: only the node index; look it up in the ONNX
            node = nodes[index] if 0 <= index < len(nodes) else None
            name, op = (node.name, node.op_type) if node is not None else ("", "")
        where = f"node {index} {name!r} ({op})" if index >= 0 else "model"
        lines.append(f"{where}: {err.desc()}")
    return lines or ["no error reported by the parser"]
