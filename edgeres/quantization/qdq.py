"""FP32 ONNX + ranges → explicit INT8 (Q/DQ) ONNX.

Weights become INT8 initializers behind a DequantizeLinear (per output channel, symmetric, zero point 0);
activations get QuantizeLinear → DequantizeLinear pairs where :mod:`edgeres.quantization.graph` places them, with
scale ``amax / 127``. The ``s8`` form is what TensorRT builds; the ``u8`` form holds the same grid in uint8
(zero point 128, or 0 on ReLU outputs) and runs fast on ONNX Runtime's CPU kernels.

Two differences make the ``u8`` form's accuracy its own number, not TensorRT's: a ReLU output with zero point 0
has the s8 grid's points on ``[0, amax]`` but saturates at ``255/127 * amax`` instead of ``amax`` (zero point 0
is what lets ONNX Runtime fold the ReLU into the quantization), and ONNX Runtime's u8×s8 kernels on CPUs without
VNNI can saturate 16-bit intermediate sums. The ``s8`` model run with graph optimisations off (Q/DQ executed as
written, in float) is the saturation-free execution whose accuracy predicts a TensorRT engine.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from edgeres.errors import InputError, ModelError
from edgeres.io import dumps_json
from edgeres.quantization.fold import fold_batchnorm
from edgeres.quantization.graph import Activations, GraphIndex, Placement, placement

log = logging.getLogger(__name__)

QUANT_METADATA_KEY = "edgeres.quantization"
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
_TINY = 1e-12


def quantize_qdq(onnx_path: str | os.PathLike[str], ranges: Any, *, out: str | os.PathLike[str],
                 activations: Activations | str = Activations.S8, keep_fp32: Iterable[str] = (),
                 per_channel: bool = True, force: bool = True) -> Path:
    """Write the INT8 Q/DQ twin of an FP32 ONNX model.

    Args:
        onnx_path: the FP32 model the ranges were calibrated on.
        ranges: a ``calibration.ranges.Ranges`` or the path of its JSON file; refused when it was calibrated on
            another model (sha256 mismatch).
        out: where to write the INT8 model (atomically).
        activations: ``"s8"`` (TensorRT form) or ``"u8"`` (fast ONNX Runtime CPU form).
        keep_fp32: node names or op types left in floating point (e.g. the first Conv's name, ``"Gemm"``).
        per_channel: per-output-channel weight scales (TensorRT's choice); False uses one scale per tensor.
        force: replace an existing ``out``.

    Ranges calibrated with cross-layer range equalisation (``ranges.options["equalize"]``) are applied to the
    equalised graph (:func:`edgeres.quantization.equalize.equalize`, deterministic), which is what they describe.

    Returns:
        ``out`` as a Path.

    Raises:
        InputError: mismatched or incomplete ranges, an unknown ``keep_fp32`` entry, ``out`` exists without force.
        ModelError: the model cannot hold Q/DQ (opset below 13) or the result fails ``onnx.checker``.
    """
    import onnx

    from edgeres.card import rebase_onnx_card
    from edgeres.io import save_onnx_checked
    from edgeres.ranges import load_ranges_for

    onnx_path, out = Path(onnx_path), Path(out)
    if out.resolve() == onnx_path.resolve():
        raise InputError(f"--out {out} is the FP32 model itself; choose another file name")
    ranges = load_ranges_for(onnx_path, ranges)
    # ranges observed on the range-equalised graph hold for that graph only: quantize the same one
    equalize = bool(ranges.options.get("equalize", False))
    qmodel = quantize_model(onnx.load(str(onnx_path)), ranges.amax, activations=activations, keep_fp32=keep_fp32,
                            per_channel=per_channel, inplace=True, equalize=equalize)
    _record(qmodel, ranges, activations=Activations(activations), keep_fp32=list(keep_fp32))
    rebase_onnx_card(qmodel, source=onnx_path, out=out)  # its dataset paths stay right wherever out lies
    save_onnx_checked(qmodel, out, what=f"the Q/DQ model written from {onnx_path}", force=force)
    log.info("wrote %s (%s activations)", out, Activations(activations).value)
    return out


def quantize_model(model: Any, amax: Mapping[str, float], *, activations: Activations | str = Activations.S8,
                   keep_fp32: Iterable[str] = (), per_channel: bool = True, inplace: bool = False,
                   equalize: bool = False) -> Any:
    """The Q/DQ twin of ``model`` (an ``onnx.ModelProto``) for per-tensor ``amax`` values.

    ``model`` is left unchanged unless ``inplace``, which rewrites and returns ``model`` itself instead of holding
    a second copy of its weights. ``equalize`` applies cross-layer range equalisation after BatchNorm folding
    (the ``amax`` values must then have been observed on the equalised graph).
    """
    import onnx

    activations = Activations(activations)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelError(f"the model uses ONNX opset {opset}; per-channel Q/DQ needs opset >= {MIN_OPSET}: "
                         "re-export it (edgeres export uses 17)")
    folded = fold_batchnorm(model, inplace=inplace)
    if equalize:
        from edgeres.quantization.equalize import equalize as equalize_graph

        equalize_graph(folded)
    place = placement(folded, activations, keep_fp32=keep_fp32)
    missing = sorted({place.same_as.get(t, t) for t in place.edges} - set(amax))
    if missing:
        raise InputError(f"the ranges lack {len(missing)} tensor(s) this model needs, e.g. {missing[0]!r}; "
                         "re-run `edgeres calibrate` on this very model")
    writer = _Writer(folded.graph, place, amax, activations, per_channel)
    writer.run()
    # the folded model is ours (a copy, or the caller's own when inplace): rewrite it rather than copy it again
    out = folded
    before = {i.name for i in out.graph.initializer}
    nodes = [onnx.NodeProto() for _ in writer.nodes]  # detached copies: the originals live in out.graph.node
    for copy, node in zip(nodes, writer.nodes):
        copy.CopyFrom(node)
    initializers = writer.initializers()
    del writer
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(initializers)
    del initializers
    dropped = before - {i.name for i in out.graph.initializer}
    inputs = [v for v in out.graph.input if v.name not in dropped]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    return out


class _Writer:
    """Rebuilds the node list with Q/DQ nodes, in topological order."""

    def __init__(self, graph: Any, place: Placement, amax: Mapping[str, float], activations: Activations,
                 per_channel: bool) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.place = place
        self.amax = amax
        self.activations = activations
        self.per_channel = per_channel
        self.index = GraphIndex.of(graph)
        self.inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.new_inits: dict[str, np.ndarray] = {}
        self.nodes: list[Any] = []
        self.quantized: dict[str, str] = {}  # activation tensor -> its QuantizeLinear output
        self.dequantized_weights: dict[str, str] = {}

    def run(self) -> None:
        for name in self.index.graph_inputs():
            if name in self.place.edges:
                self._quantize(name)
        weighted = set(self.place.weighted)
        for i, node in enumerate(self.graph.node):
            consumer = node.name or node.output[0]
            x_source = None
            for k, name in enumerate(node.input):
                if name in self.place.edges and i in self.place.edges[name]:
                    node.input[k] = self._dequantize(name, consumer)
                    x_source = x_source or name
            if i in weighted:
                self._quantize_weights(node, x_source)
            self.nodes.append(node)
            for name in node.output:
                if name in self.place.edges:
                    self._quantize(name)

    # activations ---------------------------------------------------------------------------------------
    def _params(self, tensor: str) -> tuple[float, int]:
        amax = float(self.amax[self.place.same_as.get(tensor, tensor)])
        scale = amax / 127.0 if amax > _TINY else 1.0 / 127.0
        if self.activations is Activations.S8:
            return scale, 0
        source = self.place.same_as.get(tensor, tensor)
        return scale, 0 if source in self.place.nonnegative else 128

    def _quantize(self, tensor: str) -> None:
        from onnx import helper

        scale, zp = self._params(tensor)
        dtype = np.int8 if self.activations is Activations.S8 else np.uint8
        s_name, z_name = f"{tensor}_scale", f"{tensor}_zero_point"
        self.new_inits[s_name] = np.array(scale, np.float32)
        self.new_inits[z_name] = np.array(zp, dtype)
        q_out = f"{tensor}_quantized"
        self.nodes.append(helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q_out],
                                           name=f"{tensor}_QuantizeLinear"))
        self.quantized[tensor] = q_out

    def _dequantize(self, tensor: str, consumer: str) -> str:
        from onnx import helper

        if tensor not in self.quantized:
            raise ModelError(f"internal: {tensor} is read before it is quantized; is the graph topologically sorted?")
        out = f"{tensor}_dequantized_for_{consumer}"
        self.nodes.append(helper.make_node(
            "DequantizeLinear", [self.quantized[tensor], f"{tensor}_scale", f"{tensor}_zero_point"], [out],
            name=f"{tensor}_DequantizeLinear_for_{consumer}"))
        return out

    # weights -------------------------------------------------------------------------------------------
    def _quantize_weights(self, node: Any, x_source: str | None) -> None:
        w_out, w_scale = self._weight(node.input[1], self._weight_axis(node))
        node.input[1] = w_out
        has_bias = len(node.input) > 2 and node.input[2] in self.inits
        if self.activations is Activations.U8 and has_bias and x_source is not None:
            node.input[2] = self._bias(node.input[2], self._params(x_source)[0] * w_scale)

    def _weight_axis(self, node: Any) -> int | None:
        if not self.per_channel or node.op_type == "MatMul":
            return None
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            return 0 if trans_b else 1
        return 0

    def _weight(self, name: str, axis: int | None) -> tuple[str, np.ndarray]:
        from onnx import helper

        w = self.inits[name].astype(np.float32)
        if axis is None:
            amax = np.array(np.abs(w).max(), np.float64)
        else:
            other = tuple(d for d in range(w.ndim) if d != axis)
            amax = np.abs(w).max(axis=other).astype(np.float64)
        scale = np.where(amax > _TINY, amax / 127.0, 1.0).astype(np.float32)
        out = f"{name}_dequantized"
        if name not in self.dequantized_weights:
            shape = [1] * w.ndim
            if axis is not None:
                shape[axis] = -1
            q = np.clip(np.round(w / scale.reshape(shape) if axis is not None else w / scale), -127, 127)
            self.new_inits[f"{name}_quantized"] = q.astype(np.int8)
            self.new_inits[f"{name}_scale"] = scale
            self.new_inits[f"{name}_zero_point"] = np.zeros(scale.shape, np.int8)
            attrs = {"axis": axis} if axis is not None else {}
            self.nodes.append(helper.make_node(
                "DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"], [out],
                name=f"{name}_DequantizeLinear", **attrs))
            self.dequantized_weights[name] = out
        return out, scale

    def _bias(self, name: str, scale: np.ndarray) -> str:
        """INT32 bias with scale x_scale * w_scale: ORT fuses QLinearConv / QGemm only with such a bias."""
        from onnx import helper

        b = self.inits[name].astype(np.float64)
        scale = np.broadcast_to(np.asarray(scale, np.float64), b.shape)
        scale = np.where(scale > _TINY, scale, 1.0)
        q = np.clip(np.round(b / scale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
        stem = f"{name}_for_{len(self.new_inits)}"
        self.new_inits[f"{stem}_quantized"] = q
        self.new_inits[f"{stem}_scale"] = scale.astype(np.float32)
        self.new_inits[f"{stem}_zero_point"] = np.zeros(q.shape, np.int32)
        out = f"{stem}_dequantized"
        self.nodes.append(helper.make_node(
            "DequantizeLinear", [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"], [out],
            name=f"{stem}_DequantizeLinear", axis=0))
        return out

    def initializers(self) -> list[Any]:
        from onnx import numpy_helper

        used = {name for node in self.nodes for name in node.input} | {o.name for o in self.graph.output}
        merged = {**{k: v for k, v in self.inits.items()}, **self.new_inits}
        return [numpy_helper.from_array(np.asarray(v), k) for k, v in merged.items() if k in used]


def _record(model: Any, ranges: Any, *, activations: Activations, keep_fp32: list[str]) -> None:
    info = {
        "activations": activations.value,
        "method": str(getattr(getattr(ranges, "method", None), "value", getattr(ranges, "method", ""))),
        "num_images": getattr(ranges, "num_images", None),
        "fp32_sha256": getattr(ranges, "model_sha256", None),
        "keep_fp32": keep_fp32,
    }
    for prop in list(model.metadata_props):
        if prop.key == QUANT_METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = QUANT_METADATA_KEY
    entry.value = dumps_json(info, what="the quantization record", indent=None, sort_keys=True)
