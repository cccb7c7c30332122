"""edgeres.quantize: BatchNorm folding, Q/DQ placement (s8 TensorRT form, u8 ORT form), FP16 conversion."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edgeres.card import ModelCard, Preprocess, card_from_onnx
from edgeres.errors import InputError
from edgeres.quantization import (
    QUANT_METADATA_KEY, fold_batchnorm, quantize_model, quantize_qdq, tensors_to_observe, to_fp16,
)
from edgeres.quantization.graph import GraphIndex, residual_adds
from helpers.models import export_tiny, tiny_resnet20

SIZE = 16


def _tiny_resnet(shortcut: str) -> torch.nn.Module:
    return tiny_resnet20(classes=3, size=SIZE, shortcut=shortcut, warmup=4)


def _export(model: torch.nn.Module, path: Path, **options) -> Path:
    card = ModelCard(arch="resnet20", class_names=["a", "b", "c"], preprocess=Preprocess.small(size=SIZE, channels=1))
    return export_tiny(model, path, card, size=SIZE, **options)


@pytest.fixture(scope="module", params=["A", "B"], ids=["shortcutA", "shortcutB"])
def fp32(request, tmp_path_factory) -> Path:
    return _export(_tiny_resnet(request.param), tmp_path_factory.mktemp("q") / "model.onnx")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 1, (48, 1, SIZE, SIZE)).astype(np.float32)


def _run(model, x: np.ndarray, *, outputs: list[str] | None = None,
         level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(outputs, {"input": x})


def _minmax(model: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    folded = fold_batchnorm(model)
    names = tensors_to_observe(folded)
    for name in names:
        folded.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return {n: float(np.abs(v).max()) for n, v in zip(names, _run(folded, x, outputs=names))}


def _consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if tensor in n.input]


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


# --- BatchNorm folding -------------------------------------------------------------------------------------------

def test_fold_batchnorm_preserves_outputs_and_gives_every_conv_a_bias(tmp_path, images):
    path = _export(_tiny_resnet("B"), tmp_path / "bn.onnx", training=torch.onnx.TrainingMode.PRESERVE,
                   do_constant_folding=False)
    model = onnx.load(str(path))
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 21
    folded = fold_batchnorm(model)
    onnx.checker.check_model(folded)
    ops = [n.op_type for n in folded.graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops
    inits = {i.name for i in folded.graph.initializer}
    convs = [n for n in folded.graph.node if n.op_type == "Conv"]
    assert all(len(c.input) == 3 and c.input[1] in inits and c.input[2] in inits for c in convs)
    np.testing.assert_allclose(_run(folded, images)[0], _run(model, images)[0], atol=1e-4, rtol=1e-4)
    assert len(model.graph.node) > len(folded.graph.node)  # the input model is left unchanged


# --- placement ---------------------------------------------------------------------------------------------------

def test_s8_placement_follows_tensorrt_rules(fp32, images):
    model = onnx.load(str(fp32))
    q = quantize_model(model, _minmax(model, images), activations="s8")
    onnx.checker.check_model(q)
    folded = fold_batchnorm(model)
    index = GraphIndex.of(folded.graph)
    adds = residual_adds(index)
    assert len(adds) == 9
    all_skips = {t for _, skips in adds.values() for t in skips}
    qnodes = {n.output[0]: n for n in q.graph.node}
    for i, (branch, skips) in adds.items():
        add = next(n for n in q.graph.node if n.name == folded.graph.node[i].name)
        producers = [qnodes[t].op_type for t in add.input]
        assert producers.count("DequantizeLinear") == 1, producers  # skip quantized, branch not
        assert not any(c.op_type == "QuantizeLinear" for c in _consumers(q, branch))
        assert len(skips) == 1 and skips[0] != branch
    for node in q.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            x, w = (qnodes[t] for t in node.input[:2])
            assert x.op_type == "DequantizeLinear" and w.op_type == "DequantizeLinear"
            scale = _init(q, w.input[1])
            channels = _init(q, w.input[0]).shape[0]
            assert scale.shape == (channels,) and next(a.i for a in w.attribute if a.name == "axis") == 0
            assert _init(q, w.input[0]).dtype == np.int8 and not _init(q, w.input[2]).any()
            assert _init(q, node.input[2]).dtype == np.float32  # TensorRT takes the bias in float
            quantized_output = any(c.op_type == "QuantizeLinear" for c in _consumers(q, node.output[0]))
            assert quantized_output == (node.output[0] in all_skips)  # only a projection shortcut's output
    for node in q.graph.node:
        if node.op_type == "QuantizeLinear":
            zp = _init(q, node.input[2])
            assert zp.dtype == np.int8 and zp == 0
    relu_inputs = {n.input[0] for n in q.graph.node if n.op_type == "Relu"}
    assert not any(qnodes[t].op_type == "DequantizeLinear" for t in relu_inputs)  # Conv→ReLU stays fused


def test_projection_shortcut_is_the_skip(tmp_path):
    model = onnx.load(str(_export(_tiny_resnet("B"), tmp_path / "b.onnx")))
    index = GraphIndex.of(fold_batchnorm(model).graph)
    branches = [b for b, _ in residual_adds(index).values()]
    assert all(b and "conv2" in b for b in branches)  # the block's second conv, never the 1x1 projection


def test_u8_form_runs_as_qlinear_kernels_and_agrees(fp32, images, tmp_path):
    model = onnx.load(str(fp32))
    q = quantize_model(model, _minmax(model, images), activations="u8")
    onnx.checker.check_model(q)
    zps = {int(_init(q, n.input[2])) for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert zps == {0, 128}
    assert all(_init(q, n.input[2]).dtype == np.uint8 for n in q.graph.node if n.op_type == "QuantizeLinear")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(q.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == sum(n.op_type == "Conv" for n in model.graph.node)
    assert ops.count("QLinearAdd") == 9 and "Conv" not in ops and "FusedConv" not in ops
    ref = _run(model, images)[0].argmax(1)
    assert (_run(q, images)[0].argmax(1) == ref).mean() >= 0.8


def test_s8_model_agrees_with_fp32_when_run_without_fusions(fp32, images):
    model = onnx.load(str(fp32))
    q = quantize_model(model, _minmax(model, images), activations="s8")
    ref = _run(model, images)[0]
    out = _run(q, images, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)[0]
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.8
    assert np.abs(out - ref).max() < 0.2 * np.abs(ref).max()


def test_keep_fp32_leaves_named_nodes_and_op_types_unquantized(fp32, images):
    model = onnx.load(str(fp32))
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    q = quantize_model(model, _minmax(model, images), activations="s8", keep_fp32=[first_conv, "Gemm"])
    producers = {o: n for n in q.graph.node for o in n.output}
    inits = {i.name for i in q.graph.initializer}
    for node in q.graph.node:
        if node.name == first_conv or node.op_type == "Gemm":
            assert node.input[1] in inits and _init(q, node.input[1]).dtype == np.float32
            assert node.input[0] not in producers or producers[node.input[0]].op_type != "DequantizeLinear"
    assert sum(n.op_type == "Conv" and n.input[1] in inits for n in q.graph.node) == 1
    with pytest.raises(InputError, match="NoSuchLayer"):
        quantize_model(model, _minmax(model, images), keep_fp32=["NoSuchLayer"])


def test_missing_ranges_are_refused(fp32, images):
    model = onnx.load(str(fp32))
    amax = _minmax(model, images)
    amax.pop(next(iter(amax)))
    with pytest.raises(InputError, match="calibrate"):
        quantize_model(model, amax)


def test_quantize_qdq_writes_a_checked_model_that_keeps_the_card(fp32, images, tmp_path):
    from calibration import Ranges
    from edgeres.io import sha256_file

    model = onnx.load(str(fp32))
    ranges = Ranges(amax=_minmax(model, images), method="minmax", num_images=len(images),
                    model_sha256=sha256_file(fp32), manifest_sha256="0" * 64, preprocess={})
    out = quantize_qdq(fp32, ranges, out=tmp_path / "m.int8.onnx")
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    assert card_from_onnx(q) == card_from_onnx(model)
    assert any(p.key == QUANT_METADATA_KEY and '"s8"' in p.value for p in q.metadata_props)
    assert out.stat().st_size < 0.5 * fp32.stat().st_size
    with pytest.raises(InputError, match="exists"):
        quantize_qdq(fp32, ranges, out=out, force=False)
    with pytest.raises(InputError, match="FP32 model itself"):
        quantize_qdq(fp32, ranges, out=fp32)


# --- FP16 --------------------------------------------------------------------------------------------------------

def test_to_fp16_keeps_fp32_io_and_outputs(fp32, images, tmp_path):
    out = to_fp16(fp32, tmp_path / "m.fp16.onnx")
    half = onnx.load(str(out))
    onnx.checker.check_model(half)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [i for i in half.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    ref = _run(onnx.load(str(fp32)), images)[0]
    got = _run(half, images)[0]
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max() + 1e-3


def _conv_softmax(opset: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
         helper.make_node("Softmax", ["f"], ["logits"], name="softmax", axis=1)],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_to_fp16_runs_softmax_in_fp32(images):
    from edgeres.quantization import convert_fp16

    model = _conv_softmax(17)
    half = convert_fp16(model)
    onnx.checker.check_model(half)
    producers = {o: n for n in half.graph.node for o in n.output}
    softmax = next(n for n in half.graph.node if n.op_type == "Softmax")
    cast_in = producers[softmax.input[0]]
    assert cast_in.op_type == "Cast" and next(a.i for a in cast_in.attribute if a.name == "to") == 1
    np.testing.assert_allclose(_run(half, images)[0], _run(model, images)[0], atol=2e-3)


def test_models_below_opset_13_are_refused():
    from edgeres.errors import ModelError

    with pytest.raises(ModelError, match="opset 11"):
        quantize_model(_conv_softmax(11), {"input": 1.0, "c": 1.0, "p": 1.0, "f": 1.0})


def test_inplace_quantization_rewrites_the_model_itself_with_the_same_result(fp32, images):
    model = onnx.load(str(fp32))
    amax = _minmax(model, images)
    before = model.SerializeToString()
    copied = quantize_model(model, amax, activations="u8")
    assert model.SerializeToString() == before  # not inplace: the caller's model is untouched
    rewritten = quantize_model(model, amax, activations="u8", inplace=True)
    assert rewritten is model
    assert rewritten.SerializeToString() == copied.SerializeToString()
    onnx.checker.check_model(rewritten)
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert not any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4 for i in model.graph.initializer)


def test_to_fp16_leaves_integer_inputs_alone_and_shares_initializers(images):
    """A kept ReduceSum reads int64 axes (opset 13+), and one FP32 initializer feeds both a kept op and a
    converted one: the axes stay int64, the shared weight is FP16 for the converted op and cast for the kept one."""
    from onnx import TensorProto, helper

    from edgeres.quantization import convert_fp16

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w")
    shift = numpy_helper.from_array(np.full((1, 4), 0.25, np.float32), "shift")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("ReduceSum", ["c", "axes"], ["r"], name="sum", keepdims=0),
         helper.make_node("Add", ["r", "shift"], ["a"], name="add"),
         helper.make_node("Softmax", ["a"], ["s"], name="softmax", axis=1),
         helper.make_node("Mul", ["s", "shift"], ["logits"], name="mul")],
        "shared", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w, shift, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half = convert_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    inits = {i.name: i for i in half.graph.initializer}
    assert inits["axes"].data_type == TensorProto.INT64 and inits["shift"].data_type == TensorProto.FLOAT16
    reduce = next(n for n in half.graph.node if n.op_type == "ReduceSum")
    assert reduce.input[1] == "axes", "integer inputs are never cast"
    np.testing.assert_allclose(_run(half, images)[0], _run(model, images)[0], rtol=2e-2, atol=2e-2)


def test_qdq_model_to_fp16_keeps_the_int8_grid(fp32, images):
    """The non-INT8 part of a Q/DQ model in FP16 (what strongly typed TensorRT gets): opset 19, FP16 scales,
    INT8 weights untouched; on ONNX Runtime it predicts the same classes as the FP32-rest Q/DQ model."""
    from edgeres.quantization import convert_fp16

    model = onnx.load(str(fp32))
    qdq = quantize_model(model, _minmax(model, images))
    half = convert_fp16(qdq)
    onnx.checker.check_model(half, full_check=True)
    assert next(o.version for o in half.opset_import if o.domain in ("", "ai.onnx")) >= 19
    inits = {i.name: i for i in half.graph.initializer}
    scales = [inits[n.input[1]] for n in half.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales and all(s.data_type == onnx.TensorProto.FLOAT16 for s in scales)
    int8 = [i for i in half.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert int8, "weights stay INT8"
    ref, got = _run(qdq, images)[0], _run(half, images)[0]
    assert got.dtype == np.float32
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    # FP16 rounding ahead of a quantizer may move a value across an INT8 step: allow a few steps, not more
    assert np.abs(got - ref).max() < 0.15 * np.abs(ref).max()
