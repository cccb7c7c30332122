"""Where Q/DQ pairs go in a ResNet-like ONNX graph, and hence which tensors calibration must observe.

Two placements share one set of ranges:

* ``s8`` (the TensorRT form): Q/DQ on the data inputs of Conv/Gemm/MatMul, on the skip input of each residual
  Add (never on the convolution branch feeding it), and on pool inputs. TensorRT fuses Conv+ReLU and the residual
  Add into the convolution and keeps the fused output INT8.
* ``u8`` (the fast ONNX Runtime CPU form): every tensor entering or leaving a quantizable op is quantized, so ORT
  turns DQ→op→Q into QLinearConv / QLinearAdd / QGemm / QLinearGlobalAveragePool and drops Q/DQ around MaxPool
  and Flatten. A ReLU right after a quantized op is absorbed by quantizing the ReLU's output with zero point 0.

The graph is expected BatchNorm-folded (:func:`edgeres.quantization.fold_batchnorm`), so tensor names are those of
the model that receives Q/DQ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable

WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul"})
POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool"})
# Ops whose output has exactly the input's values (or a subset of them): ORT drops Q/DQ around them when both
# sides share scale and zero point.
TRANSPARENT_OPS = frozenset({"MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose"})
# Ops whose output is non-negative when the input is.
SIGN_KEEPING_OPS = TRANSPARENT_OPS | {"GlobalAveragePool", "AveragePool"}


class Activations(str, Enum):
    """How activations are stored in the Q/DQ model."""

    S8 = "s8"  # int8, zero point 0: the TensorRT form, whose accuracy predicts the engine
    U8 = "u8"  # uint8, zero point 128 (0 after ReLU), same grid: the fast ONNX Runtime CPU form


@dataclass
class GraphIndex:
    """Producers, consumers and constants of one ``onnx.GraphProto``."""

    graph: Any
    producer: dict[str, int] = field(default_factory=dict)  # tensor -> index of the node writing it
    consumers: dict[str, list[int]] = field(default_factory=dict)  # tensor -> indices of nodes reading it
    constants: set[str] = field(default_factory=set)  # initializers and Constant outputs
    outputs: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, graph: Any) -> GraphIndex:
        index = cls(graph)
        index.constants = {init.name for init in graph.initializer}
        index.outputs = {out.name for out in graph.output}
        for i, node in enumerate(graph.node):
            if node.op_type == "Constant":
                index.constants.update(node.output)
            for name in node.output:
                index.producer[name] = i
            for name in node.input:
                if name:
                    index.consumers.setdefault(name, []).append(i)
        return index

    def node(self, i: int) -> Any:
        return self.graph.node[i]

    def producer_op(self, tensor: str) -> str | None:
        i = self.producer.get(tensor)
        return None if i is None else self.graph.node[i].op_type

    def is_dynamic(self, tensor: str) -> bool:
        return bool(tensor) and tensor not in self.constants

    def graph_inputs(self) -> list[str]:
        return [v.name for v in self.graph.input if v.name not in self.constants]


def data_inputs(node: Any, index: GraphIndex) -> list[str]:
    """The activation (non-constant) inputs a quantized ``node`` reads."""
    if node.op_type in ("Conv", "Gemm"):
        return [node.input[0]] if index.is_dynamic(node.input[0]) else []
    if node.op_type == "MatMul":
        return [name for name in node.input if index.is_dynamic(name)]
    return [name for name in node.input[:1] if index.is_dynamic(name)]


def residual_adds(index: GraphIndex) -> dict[int, tuple[str | None, list[str]]]:
    """Residual Adds: node index -> (convolution-branch input or None, skip inputs).

    An Add with two activation inputs is residual. The branch is the input produced by a Conv; when both are
    Conv outputs (a projection shortcut), the branch is the Conv whose own input is computed later in the graph.
    """
    result: dict[int, tuple[str | None, list[str]]] = {}
    for i, node in enumerate(index.graph.node):
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        a, b = node.input
        if not (index.is_dynamic(a) and index.is_dynamic(b)):
            continue
        convs = [t for t in (a, b) if index.producer_op(t) == "Conv"]
        if len(convs) == 1:
            branch = convs[0]
        elif len(convs) == 2:
            branch = max(convs, key=lambda t: _input_position(index, t))
        else:
            result[i] = (None, [a, b])
            continue
        result[i] = (branch, [t for t in (a, b) if t != branch])
    return result


def _input_position(index: GraphIndex, conv_output: str) -> int:
    conv = index.node(index.producer[conv_output])
    return index.producer.get(conv.input[0], -1)


def keep_matcher(graph: Any, keep_fp32: Iterable[str]) -> set[int]:
    """Indices of nodes named (or of an op type named) in ``keep_fp32``; unknown entries raise InputError."""
    from edgeres.errors import InputError

    wanted = list(keep_fp32)
    names = {node.name for node in graph.node}
    ops = {node.op_type for node in graph.node}
    unknown = [w for w in wanted if w not in names and w not in ops]
    if unknown:
        raise InputError(
            f"--keep-fp32 {', '.join(unknown)} matches no node name or op type in the model; "
            f"op types present: {', '.join(sorted(ops))}"
        )
    keep = set(wanted)
    return {i for i, node in enumerate(graph.node) if node.name in keep or node.op_type in keep}


@dataclass
class Placement:
    """Which tensors get Q/DQ, and for which consuming nodes."""

    edges: dict[str, set[int]] = field(default_factory=dict)  # tensor -> consumer node indices to rewire
    weighted: list[int] = field(default_factory=list)  # Conv/Gemm/MatMul nodes whose weights get quantized
    nonnegative: set[str] = field(default_factory=set)  # tensors known >= 0 (ReLU outputs and what keeps sign)
    same_as: dict[str, str] = field(default_factory=dict)  # tensor -> tensor whose range it must share

    def add(self, tensor: str, consumers: Iterable[int]) -> None:
        self.edges.setdefault(tensor, set()).update(consumers)


def placement(model: Any, activations: Activations | str, *, keep_fp32: Iterable[str] = ()) -> Placement:
    """Where the ``activations`` form of :func:`edgeres.quantization.quantize_qdq` puts Q/DQ pairs."""
    activations = Activations(activations)
    index = GraphIndex.of(model.graph)
    kept = keep_matcher(model.graph, keep_fp32)
    place = Placement(nonnegative=_nonnegative(index))
    place.weighted = [i for i, n in enumerate(index.graph.node)
                      if n.op_type in WEIGHTED_OPS and i not in kept and _has_constant_weight(n, index)]
    adds = {i: v for i, v in residual_adds(index).items() if i not in kept}
    pools = [i for i, n in enumerate(index.graph.node) if n.op_type in POOL_OPS and i not in kept]
    if activations is Activations.S8:
        _place_s8(index, place, adds, pools)
    else:
        _place_u8(index, place, adds, pools, kept)
    return place


def _has_constant_weight(node: Any, index: GraphIndex) -> bool:
    if node.op_type == "MatMul":
        return len(node.input) == 2 and not index.is_dynamic(node.input[1])
    return len(node.input) >= 2 and not index.is_dynamic(node.input[1])


def _place_s8(index: GraphIndex, place: Placement, adds: dict[int, tuple[str | None, list[str]]],
              pools: list[int]) -> None:
    for i in place.weighted + pools:
        for tensor in data_inputs(index.node(i), index):
            place.add(tensor, [i])
    for i, (_branch, skips) in adds.items():
        for tensor in skips:
            place.add(tensor, [i])


def _place_u8(index: GraphIndex, place: Placement, adds: dict[int, tuple[str | None, list[str]]],
              pools: list[int], kept: set[int]) -> None:
    quantized = set(place.weighted) | set(adds) | set(pools)
    for i in quantized:
        node = index.node(i)
        inputs = list(node.input[:2]) if i in adds else data_inputs(node, index)
        for tensor in inputs:
            _quantize_all(index, place, tensor, kept)
        for tensor in node.output:
            # a node kept in float reads its input unquantized, even where the producer's output is quantized
            # for its other readers (an accuracy budget's float layer must not see the INT8 grid of its input)
            _quantize_all(index, place, _after_relu(index, tensor), kept)
    # Q/DQ on both sides of a value-preserving op lets ORT drop the pair, provided both share scale and zp.
    for i, node in enumerate(index.graph.node):
        if node.op_type in TRANSPARENT_OPS and node.input[0] in place.edges:
            out = node.output[0]
            if out in place.edges or any(c in quantized for c in index.consumers.get(out, [])):
                place.same_as[out] = place.same_as.get(node.input[0], node.input[0])
                _quantize_all(index, place, out, kept)


def _after_relu(index: GraphIndex, tensor: str) -> str:
    """The ReLU output a single-consumer ReLU makes of ``tensor`` (ORT folds ReLU into a Q with zero point 0)."""
    consumers = index.consumers.get(tensor, [])
    if len(consumers) == 1 and tensor not in index.outputs and index.node(consumers[0]).op_type == "Relu":
        return index.node(consumers[0]).output[0]
    return tensor


def _quantize_all(index: GraphIndex, place: Placement, tensor: str, kept: set[int]) -> None:
    consumers = [c for c in index.consumers.get(tensor, []) if c not in kept]
    if consumers:
        place.add(tensor, consumers)


def _nonnegative(index: GraphIndex) -> set[str]:
    result: set[str] = set()
    for node in index.graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if node.op_type == "Relu":
            result.update(node.output)
        elif node.op_type in SIGN_KEEPING_OPS and node.input and node.input[0] in result:
            result.update(node.output)
    return result


def tensors_to_observe(model: Any) -> list[str]:
    """Every tensor either placement may quantize, in graph order: what calibration must range."""
    names: set[str] = set()
    for form in Activations:
        place = placement(model, form)
        names.update(place.edges)
    index = GraphIndex.of(model.graph)
    order = index.graph_inputs() + [out for node in model.graph.node for out in node.output]
    return [name for name in order if name in names]
