"""FP32 ONNX (or a Q/DQ INT8 ONNX) → FP16 ONNX with FP32 inputs and outputs.

TensorRT 11 builds every network strongly typed, and so does TensorRT 10 for Q/DQ networks: FP16 precision means
an ONNX whose tensors are FP16. Inputs and outputs stay FP32 (a Cast at each boundary) so callers feed and read
the same arrays as the FP32 model, and numerically sensitive ops (Softmax, reductions, normalisations) run in FP32
between Casts. Only floating-point tensors change type: integer inputs (e.g. a ReduceSum's int64 axes) and INT8
weights stay as they are. A Q/DQ model keeps its INT8 grid; its scales become FP16 (which needs opset 19), so the
layers left unquantized run in FP16 — what NVIDIA's quantizer does by default.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.errors import ModelError

log = logging.getLogger(__name__)

KEEP_FP32_OPS = frozenset({
    "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
    "LayerNormalization", "InstanceNormalization", "Exp", "Log", "Pow",
})
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16


def to_fp16(src: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = True) -> Path:
    """Write an FP16 copy of the FP32 ONNX ``src`` to ``out`` (atomically), keeping FP32 inputs and outputs.

    Args:
        src: the FP32 model.
        out: where to write the FP16 model.
        force: replace an existing ``out``.

    Returns:
        ``out`` as a Path.

    Raises:
        ModelError: the converted model fails ``onnx.checker``.
    """
    import onnx

    from edgeres.card import rebase_onnx_card
    from edgeres.io import save_onnx_checked

    model = convert_fp16(onnx.load(str(src)))
    rebase_onnx_card(model, source=src, out=out)  # its dataset paths stay right wherever out lies
    return save_onnx_checked(model, out, what=f"the FP16 model converted from {src}", force=force)


QDQ_FP16_OPSET = 19  # QuantizeLinear/DequantizeLinear take FP16 scales from opset 19


def convert_fp16(model: Any) -> Any:
    """The FP16 twin of an ``onnx.ModelProto`` (left unchanged), FP32 at the graph's boundaries.

    Raises:
        ModelError: a Q/DQ model that cannot be moved to opset 19 (FP16 scales need it).
    """
    import onnx
    from onnx import helper, numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in result.graph.node):
        result = _to_qdq_fp16_opset(result)
    graph = result.graph
    floats = _float_tensors(result)
    converted_inputs = {name for n in graph.node if n.op_type not in KEEP_FP32_OPS for name in n.input}
    fp32_initializers = set()
    for i, init in enumerate(graph.initializer):
        if init.data_type != _FLOAT:
            continue
        if init.name in converted_inputs:  # also when a kept op reads it: that op casts it back to FP32
            arr = numpy_helper.to_array(init).astype(np.float16)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
        else:
            fp32_initializers.add(init.name)
    init_names = {i.name for i in graph.initializer}
    nodes: list[Any] = []
    renames: dict[str, str] = {}
    for v in graph.input:
        if v.name not in init_names and v.type.tensor_type.elem_type == _FLOAT:
            renames[v.name] = f"{v.name}_fp16"
            nodes.append(helper.make_node("Cast", [v.name], [renames[v.name]], to=_FLOAT16,
                                          name=f"{v.name}_to_fp16"))
    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == _FLOAT}
    to_cast = (floats - fp32_initializers) | set(renames.values())  # the FP16 tensors a kept op reads or writes
    for node in graph.node:
        _convert_attributes(node)
        for k, name in enumerate(node.input):
            if name in renames:
                node.input[k] = renames[name]
        if node.op_type in KEEP_FP32_OPS:
            nodes.extend(_wrap_fp32(node, to_cast=to_cast))
            continue
        nodes.append(node)
    # Each FP32 output is now written in FP16 as "<name>_fp16"; a final Cast writes the FP32 "<name>".
    final: list[Any] = []
    for node in nodes:
        final.append(node)
        for j, name in enumerate(node.output):
            if name in outputs:
                node.output[j] = f"{name}_fp16"
                final.append(helper.make_node("Cast", [node.output[j]], [name], to=_FLOAT,
                                              name=f"{name}_to_fp32"))
    del graph.node[:]
    graph.node.extend(final)
    del graph.value_info[:]
    return result


def _float_tensors(model: Any) -> set[str]:
    """Names of the FP32 tensors of ``model`` (inputs, initializers, intermediate values, outputs)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - inference is best effort; fall back to what the graph declares
        log.debug("shape inference failed (%s); using the declared types only", exc)
        inferred = model
    g = inferred.graph
    names = {v.name for v in (*g.input, *g.value_info, *g.output) if v.type.tensor_type.elem_type == _FLOAT}
    return names | {i.name for i in g.initializer if i.data_type == _FLOAT}


def _to_qdq_fp16_opset(model: Any) -> Any:
    """A Q/DQ model at opset >= 19, where Q/DQ accept FP16 scales."""
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= QDQ_FP16_OPSET:
        return model
    try:
        return version_converter.convert_version(model, QDQ_FP16_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        raise ModelError(f"a Q/DQ model of opset {opset} cannot be moved to opset {QDQ_FP16_OPSET}, which FP16 "
                         f"Q/DQ scales need ({exc}); build with --high-precision fp32") from exc


def _wrap_fp32(node: Any, *, to_cast: set[str]) -> list[Any]:
    """Casts around an op kept in FP32: its FP16 inputs → FP32, its float outputs → FP16. Integer inputs (axes,
    shapes) and FP32 initializers pass untouched."""
    from onnx import helper

    before, after = [], []
    for k, name in enumerate(node.input):
        if name and name in to_cast:
            cast = f"{name}_fp32_for_{node.name or node.output[0]}"
            before.append(helper.make_node("Cast", [name], [cast], to=_FLOAT, name=f"{cast}_cast"))
            node.input[k] = cast
    for k, name in enumerate(node.output):
        if name not in to_cast:
            continue
        raw = f"{name}_fp32"
        node.output[k] = raw
        after.append(helper.make_node("Cast", [raw], [name], to=_FLOAT16, name=f"{raw}_cast"))
    return before + [node] + after


def _convert_attributes(node: Any) -> None:
    """Float constants inside nodes (Constant values, ConstantOfShape fills, Cast targets) become FP16."""
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "to" and node.op_type == "Cast" and attr.i == _FLOAT:
            attr.i = _FLOAT16
        elif attr.type == 4 and attr.t.data_type == _FLOAT:  # AttributeProto.TENSOR
            arr = numpy_helper.to_array(attr.t).astype(np.float16)
            attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
