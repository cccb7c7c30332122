"""edgeres.observe: which tensors are observed, and that streamed observation equals a one-shot computation."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibration import make_collector
from edgeres.errors import InputError, ModelError
from edgeres.observe import observe, observing_session
from edgeres.quantization import fold_batchnorm, tensors_to_observe
from helpers.models import export_tiny, tiny_resnet20

SIZE = 16


def _export(path, *, fixed_batch: int | None = None) -> onnx.ModelProto:
    export_tiny(tiny_resnet20(classes=3, size=SIZE, shortcut="B", warmup=4), path, size=SIZE, batch=fixed_batch)
    return fold_batchnorm(onnx.load(str(path)))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> onnx.ModelProto:
    return _export(tmp_path_factory.mktemp("obs") / "model.onnx")


def _node(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def test_observes_exactly_the_tensors_that_need_scales(model):
    observed = set(tensors_to_observe(model))
    convs, adds = _node(model, "Conv"), _node(model, "Add")
    expected_min = {"input"} | {c.input[0] for c in convs} | {t for a in adds for t in a.input}
    expected_min |= {n.input[0] for n in _node(model, "GlobalAveragePool") + _node(model, "Gemm")}
    assert expected_min <= observed
    # ORT's u8 form also needs the residual Adds' (ReLU) outputs; nothing else.
    extra = observed - expected_min
    add_relus = {r.output[0] for r in _node(model, "Relu") if any(r.input[0] == a.output[0] for a in adds)}
    assert extra <= add_relus | {n.output[0] for n in _node(model, "GlobalAveragePool")}
    # a Conv output that only feeds its ReLU is never observed (TensorRT fuses Conv+ReLU)
    relu_inputs = {r.input[0] for r in _node(model, "Relu")}
    assert not any(c.output[0] in observed for c in convs if c.output[0] in relu_inputs)
    assert "logits" not in observed


def test_streamed_minmax_equals_max_abs_of_every_intermediate(model):
    images = np.random.default_rng(1).normal(0, 1, (20, 1, SIZE, SIZE)).astype(np.float32)
    names = tensors_to_observe(model)
    # independent computation: every intermediate as an output, all images at once, max |x|
    everything = onnx.ModelProto()
    everything.CopyFrom(model)
    for node in everything.graph.node:
        for out in node.output:
            if out != "logits":
                everything.graph.output.append(onnx.helper.make_empty_tensor_value_info(out))
    session = ort.InferenceSession(everything.SerializeToString(), providers=["CPUExecutionProvider"])
    all_names = [o.name for o in session.get_outputs()]
    values = dict(zip(all_names, session.run(None, {"input": images})))
    values["input"] = images
    expected = {n: float(np.abs(values[n]).max()) for n in names}

    collector = make_collector("minmax")
    batches = ({"input": images[i:i + 6]} for i in range(0, len(images), 6))  # 6, 6, 6, 2
    assert observe(model, batches, collector, quiet=True) == len(images)
    got = collector.compute()
    assert set(got) == set(names)
    for name in names:
        assert got[name] == pytest.approx(expected[name], rel=1e-5), name


def test_fixed_batch_model_is_run_in_padded_slices(model, tmp_path):
    fixed = _export(tmp_path / "fixed.onnx", fixed_batch=2)
    images = np.random.default_rng(2).normal(0, 1, (7, 1, SIZE, SIZE)).astype(np.float32)
    expected, got = make_collector("minmax"), make_collector("minmax")
    observe(model, [{"input": images}], expected, quiet=True)
    assert observe(fixed, ({"input": images[i:i + 3]} for i in range(0, 7, 3)), got, quiet=True) == 7
    for name, amax in expected.compute().items():  # the zero padding of the last slice is not observed
        assert got.compute()[name] == pytest.approx(amax, rel=1e-5), name


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def observe(self, name: str, values: np.ndarray) -> None:
        self.calls.append((name, values.shape))


def _batches(images, size):
    return ({"input": images[i:i + size]} for i in range(0, len(images), size))


def test_explicit_run_batch_sets_the_slices(model, capsys):
    images = np.zeros((10, 1, SIZE, SIZE), np.float32)
    names = tensors_to_observe(model)
    whole = _Recorder()
    observe(model, _batches(images, 4), whole, total=10, quiet=False, run_batch=4)
    assert [shape[0] for _, shape in whole.calls[::len(names)]] == [4, 4, 2]  # one run per batch
    assert "img/s" in capsys.readouterr().err  # the progress bar reports images per second
    sliced = _Recorder()
    observe(model, _batches(images, 4), sliced, quiet=True, run_batch=2)
    assert [shape[0] for _, shape in sliced.calls[::len(names)]] == [2, 2, 2, 2, 2]  # peak memory set by run_batch


def test_automatic_run_size_follows_the_observed_bytes_per_image(model, monkeypatch):
    import edgeres.observe as observe_module

    images = np.zeros((10, 1, SIZE, SIZE), np.float32)
    names = tensors_to_observe(model)
    one = _Recorder()
    observe(model, [{"input": images[:1]}], one, quiet=True, run_batch=1)
    per_image = sum(4 * int(np.prod(shape)) for _, shape in one.calls)  # float32 outputs of one image
    monkeypatch.setattr(observe_module, "OBSERVED_BYTES_PER_RUN", 3 * per_image)
    auto = _Recorder()
    assert observe(model, _batches(images, 4), auto, quiet=True) == 10
    # the first run measures one image; then runs of 3 images' worth of observed data, cut at batch ends
    assert [shape[0] for _, shape in auto.calls[::len(names)]] == [1, 3, 3, 1, 2]


def test_observing_leaves_the_model_as_it_was_and_a_path_gives_the_same_ranges(model, tmp_path):
    before = model.SerializeToString()
    images = np.random.default_rng(3).normal(0, 1, (5, 1, SIZE, SIZE)).astype(np.float32)
    from_proto, from_path = make_collector("minmax"), make_collector("minmax")
    observe(model, [{"input": images}], from_proto, quiet=True)
    assert model.SerializeToString() == before  # the observed outputs were added for the session only
    path = tmp_path / "same.onnx"
    _export(path)  # the same network, as a file: observe loads and folds it itself
    observe(path, [{"input": images}], from_path, quiet=True)
    expected, got = from_proto.compute(), from_path.compute()
    assert set(got) == set(expected)
    for name, amax in expected.items():
        assert got[name] == pytest.approx(amax, rel=1e-5), name


class _FailsOnFifthTensor:
    def __init__(self) -> None:
        self.calls = 0

    def observe(self, name: str, values: np.ndarray) -> None:
        self.calls += 1
        if self.calls == 5:
            raise ValueError(f"cannot reduce {name}")


def test_a_collector_error_reaches_the_caller_and_no_thread_is_left(model):
    import threading

    images = np.zeros((6, 1, SIZE, SIZE), np.float32)
    before = threading.active_count()
    collector = _FailsOnFifthTensor()
    with pytest.raises(ValueError, match="cannot reduce"):
        observe(model, _batches(images, 2), collector, quiet=True, run_batch=1)
    assert threading.active_count() == before  # the reader and collector threads were joined
    assert collector.calls == 5  # nothing was observed after the failure


def test_bad_batches_and_tensors_are_refused(model):
    with pytest.raises(InputError, match="lacks model input"):
        observe(model, [{"image": np.zeros((1, 1, SIZE, SIZE), np.float32)}], _Recorder(), quiet=True)
    with pytest.raises(InputError, match="rejects a calibration batch"):
        observe(model, [{"input": np.zeros((1, 3, SIZE, SIZE), np.float32)}], _Recorder(), quiet=True)
    with pytest.raises(ModelError, match="no_such_tensor"):
        observing_session(model, ["no_such_tensor"])


def test_an_unreadable_model_file_is_named(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("not a model")
    with pytest.raises(ModelError, match="notes.onnx is not a readable ONNX model"):
        observe(bad, [{"input": np.zeros((1, 1, SIZE, SIZE), np.float32)}], _Recorder(), quiet=True)


def _conv_model(side: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("side, heavy, shared", [(32, True, True), (32, False, False), (224, True, False)])
def test_small_inputs_leave_cores_to_a_histogram_collector_and_no_thread_spins(side, heavy, shared):
    from edgeres.environment import cpu_count

    session, names = observing_session(_conv_model(side), ["input"], heavy_collector=heavy)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == (max(1, cpu_count() // 2) if shared else 0)  # 0: ORT's default
    assert names == ["input"]
