"""Tests for edgeres.models: parameter counts, torchvision state-dict layout, shortcut options, plain twins,
stride placement, the name registry, and ONNX export parity in ONNX Runtime."""
from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import edgeres.models as models
from edgeres.errors import EdgeresError, ModelError
from edgeres.models.cifar import ShortcutA

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34"]
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
         "plain20", "plain32", "plain44", "plain56", "plain110"]

# torchvision's published parameter counts (num_classes=1000).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}
# torchvision's stage layouts: (block kind, blocks per stage).
TORCHVISION_LAYOUT = {
    "resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]), "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}
# He et al. 2015, Table 6 (CIFAR-10, option A): depth -> parameters as printed.
TABLE6 = {"resnet20": "0.27M", "resnet32": "0.46M", "resnet44": "0.66M", "resnet56": "0.85M", "resnet110": "1.7M"}
CIFAR_N = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


@functools.lru_cache(maxsize=None)
def _default(name: str) -> torch.nn.Module:
    """One default instance per architecture for the read-only tests (building resnet152 takes ~2 s)."""
    torch.manual_seed(0)
    return models.create(name).eval()


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torchvision_state_dict_shapes(kind: str, layers: list[int], num_classes: int = 1000) -> list[tuple[str, tuple]]:
    """torchvision's ``ResNet.state_dict()`` keys and shapes, in order, from its layout rules (resnet.py):
    conv1 7x7 + bn1; per block conv1/bn1, conv2/bn2[, conv3/bn3] then ``downsample.0`` (1x1 conv) and
    ``downsample.1`` (BN) on a stage's first block when stride or width changes; fc last."""
    out: list[tuple[str, tuple]] = []

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        out.append((f"{name}.weight", (cout, cin, k, k)))

    def bn(name: str, c: int) -> None:
        out.extend((f"{name}.{p}", (c,)) for p in ("weight", "bias", "running_mean", "running_var"))
        out.append((f"{name}.num_batches_tracked", ()))

    expansion = 1 if kind == "basic" else 4
    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip([64, 128, 256, 512], layers), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            if kind == "basic":
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            else:
                conv(f"{p}.conv1", planes, inplanes, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            stride = 2 if (stage > 1 and b == 0) else 1
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    out.append(("fc.weight", (num_classes, 512 * expansion)))
    out.append(("fc.bias", (num_classes,)))
    return out


def _learnable(shapes: list[tuple[str, tuple]]) -> int:
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(int(np.prod(s)) for k, s in shapes if not k.endswith(skip))


# --- ImageNet family: torchvision compatibility -------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_parameter_counts_equal_torchvision(name: str) -> None:
    assert _n_params(_default(name)) == TORCHVISION_PARAMS[name]


def test_layout_generator_agrees_with_torchvision_facts() -> None:
    # Guards the independent generator itself: torchvision's resnet18 / resnet50 state dicts have 122 / 320
    # entries, and the learnable sizes equal the published counts.
    assert len(torchvision_state_dict_shapes(*TORCHVISION_LAYOUT["resnet18"])) == 122
    assert len(torchvision_state_dict_shapes(*TORCHVISION_LAYOUT["resnet50"])) == 320
    for name, (kind, layers) in TORCHVISION_LAYOUT.items():
        assert _learnable(torchvision_state_dict_shapes(kind, layers)) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION_LAYOUT))
def test_state_dict_keys_and_shapes_equal_torchvision(name: str) -> None:
    ours = [(k, tuple(v.shape)) for k, v in _default(name).state_dict().items()]
    assert ours == torchvision_state_dict_shapes(*TORCHVISION_LAYOUT[name])


def test_torchvision_style_checkpoint_loads_strict_and_is_used() -> None:
    torch.manual_seed(1)
    expected = torchvision_state_dict_shapes("basic", [2, 2, 2, 2], num_classes=5)
    checkpoint = {k: (torch.tensor(7) if s == () else torch.randn(s)) for k, s in expected}
    for k in checkpoint:
        if k.endswith("running_var"):
            checkpoint[k] = checkpoint[k].abs() + 0.5
    model = models.resnet18(num_classes=5)
    model.load_state_dict(checkpoint, strict=True)
    assert torch.equal(model.layer3[0].downsample[0].weight, checkpoint["layer3.0.downsample.0.weight"])
    assert torch.equal(model.fc.bias, checkpoint["fc.bias"])


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_checkpoint_with_missing_key_is_refused_strict(name: str) -> None:
    state = _default(name).state_dict()
    state.pop("layer2.0.downsample.0.weight")
    with pytest.raises(RuntimeError, match="downsample"):
        models.create(name).load_state_dict(state, strict=True)


def test_stride_on_moves_the_stride_between_1x1_and_3x3() -> None:
    v15 = models.resnet50(num_classes=10)
    paper = models.resnet50(num_classes=10, stride_on="1x1")
    for model, conv1_stride, conv2_stride in ((v15, (1, 1), (2, 2)), (paper, (2, 2), (1, 1))):
        for stage in (model.layer2, model.layer3, model.layer4):
            assert stage[0].conv1.stride == conv1_stride
            assert stage[0].conv2.stride == conv2_stride
            assert stage[0].downsample[0].stride == (2, 2)
            assert all(b.conv1.stride == (1, 1) and b.conv2.stride == (1, 1) for b in list(stage)[1:])
        assert model.layer1[0].conv2.stride == (1, 1)
    assert _n_params(v15) == _n_params(paper)
    with torch.no_grad():
        assert paper.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert models.resnet50(stride_on=models.StrideOn.CONV1X1).layer3[0].conv1.stride == (2, 2)


def test_in_channels_and_num_classes() -> None:
    model = models.resnet18(num_classes=7, in_channels=1).eval()
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    assert models.resnet20(in_channels=1).conv1.weight.shape == (16, 1, 3, 3)


# --- CIFAR family ---------------------------------------------------------------------------------------------

def _cifar_params(n: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """He et al. §4.2 by hand: 3x3 stem to 16, 3 stages of n two-conv blocks (16/32/64), BN after each conv, fc."""
    total = in_channels * 16 * 9 + 2 * 16
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += cin * width * 9 + 2 * width + width * width * 9 + 2 * width
            cin = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("name", sorted(TABLE6))
def test_cifar_option_a_counts_round_to_table6(name: str) -> None:
    count = _n_params(_default(name))
    printed = TABLE6[name]
    decimals = len(printed.rstrip("M").split(".")[1])
    assert f"{count / 1e6:.{decimals}f}M" == printed
    assert count == _cifar_params(CIFAR_N[int(name[6:])])


def test_option_a_has_no_shortcut_parameters() -> None:
    model = models.resnet56()
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 2
    assert all(not list(m.parameters()) and not list(m.buffers()) for m in shortcuts)
    assert not [k for k in model.state_dict() if "downsample" in k]
    assert _n_params(model) == _n_params(models.plain56())


def test_option_b_has_projection_parameters() -> None:
    a, b = models.resnet20(), models.resnet20(shortcut="B")
    assert b.layer2[0].downsample[0].weight.shape == (32, 16, 1, 1)
    assert b.layer3[0].downsample[0].weight.shape == (64, 32, 1, 1)
    assert isinstance(b.layer2[0].downsample[1], torch.nn.BatchNorm2d)
    assert b.layer1[0].downsample is None  # identity where the shape is unchanged
    assert _n_params(b) - _n_params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    with torch.no_grad():
        assert b.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_shortcut_a_subsamples_pads_and_backpropagates() -> None:
    x = torch.randn(2, 4, 6, 6, dtype=torch.double, requires_grad=True)
    y = ShortcutA(2, 4)(x)
    assert y.shape == (2, 8, 3, 3)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 4:]) == 0
    assert torch.autograd.gradcheck(ShortcutA(2, 4), (x,))


# --- plain twins and zero-init ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in IMAGENET + CIFAR if n.startswith("plain")])
def test_plain_twins_have_no_shortcuts(name: str) -> None:
    model = models.create(name)
    assert not [n for n, _ in model.named_modules() if "downsample" in n]
    assert all(not getattr(m, "residual", False) for m in model.modules() if hasattr(m, "residual"))


def test_plain_vs_residual_behaviour_with_zeroed_last_bn() -> None:
    # With each block's last BN at gamma 0 (and beta 0), a residual block passes non-negative input through;
    # a plain block outputs relu(0) = 0. This checks both zero_init_residual and the absence of shortcuts.
    x = torch.rand(2, 16, 8, 8)
    res = models.resnet20(zero_init_residual=True).eval()
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in res.layer1)
    plain = models.plain20().eval()
    for block in plain.layer1:
        torch.nn.init.zeros_(block.bn2.weight)
    with torch.no_grad():
        assert torch.allclose(res.layer1(x), x)
        assert torch.count_nonzero(plain.layer1(x)) == 0
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in models.resnet50(zero_init_residual=True).layer1)
    assert torch.all(models.resnet50().layer1[0].bn3.weight == 1)


# --- forward shapes for every factory ---------------------------------------------------------------------

@pytest.mark.parametrize("name", CIFAR)
def test_cifar_forward_shape(name: str) -> None:
    model = models.create(name, num_classes=4, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_forward_shape_small_input(name: str) -> None:
    with torch.no_grad():
        assert _default(name)(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


# --- the registry ---------------------------------------------------------------------------------------------

def test_names_sorted_and_complete() -> None:
    assert models.names() == sorted(IMAGENET + CIFAR)
    assert all(callable(getattr(models, n)) for n in models.names())


def test_default_input_size() -> None:
    assert {models.default_input_size(n) for n in CIFAR} == {32}
    assert {models.default_input_size(n) for n in IMAGENET} == {224}
    with pytest.raises(ModelError, match="resnet20"):
        models.default_input_size("vgg16")


def test_create_is_case_insensitive_and_passes_options() -> None:
    model = models.create("ResNet20", num_classes=3, shortcut="b")
    assert model.fc.out_features == 3
    assert model.layer2[0].downsample[0].weight.shape == (32, 16, 1, 1)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ModelError) as info:
        models.create("resnet19")
    message = str(info.value)
    assert "resnet19" in message and all(n in message for n in models.names())
    assert "\n" not in message
    assert isinstance(info.value, EdgeresError)


@pytest.mark.parametrize("name, kwargs, fragment", [
    ("resnet20", {"stride_on": "1x1"}, "stride_on"),
    ("resnet50", {"shortcut": "A"}, "shortcut"),
    ("plain20", {"zero_init_residual": True}, "zero_init_residual"),
    ("resnet20", {"shortcut": "C"}, "'C'"),
    ("resnet50", {"stride_on": "2x2"}, "'2x2'"),
    ("resnet18", {"num_classes": 0}, "num_classes"),
    ("resnet20", {"in_channels": 2.5}, "in_channels"),
])
def test_bad_options_raise_model_error(name: str, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ModelError, match=fragment):
        models.create(name, **kwargs)


def test_options_lists_keywords() -> None:
    assert models.options("resnet20") == ["in_channels", "num_classes", "shortcut", "zero_init_residual"]
    assert "stride_on" in models.options("resnet152")
    assert models.options("plain34") == ["in_channels", "num_classes"]


# --- ONNX export ------------------------------------------------------------------------------------------

def _export(model: torch.nn.Module, path, shape) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


@pytest.mark.parametrize("name, shortcut", [("resnet20", "A"), ("resnet20", "B")])
def test_onnx_export_matches_torch_in_onnxruntime(tmp_path, name: str, shortcut: str) -> None:
    torch.manual_seed(0)
    model = models.create(name, shortcut=shortcut, num_classes=10)
    with torch.no_grad():  # non-trivial BN statistics, so a mis-exported BN would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    path = tmp_path / "m.onnx"
    _export(model, path, (2, 3, 32, 32))
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    ops = {n.op_type for n in graph.graph.node}
    # Only plain, TensorRT-friendly ops: no run-time shape arithmetic around option A's padding.
    assert ops <= {"Conv", "Relu", "Add", "Slice", "Pad", "Constant", "Identity", "GlobalAveragePool",
                   "Flatten", "Gemm"}, ops
    if shortcut == "A":
        pads = [n for n in graph.graph.node if n.op_type == "Pad"]
        assert len(pads) == 2 and ("Slice" in ops)
        consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                  for n in graph.graph.node if n.op_type == "Constant"}
        assert [list(consts[p.input[1]]) for p in pads] == [[0, 0, 0, 0, 0, 16, 0, 0], [0, 0, 0, 0, 0, 32, 0, 0]]
    else:
        assert not ops & {"Pad", "Slice"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() <= 1e-4
        assert (got.argmax(1) == expected.argmax(1)).all()


# --- any CIFAR depth 6n + 2 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, blocks, residual", [("resnet8", 1, True), ("plain14", 2, False)])
def test_cifar_depth_by_name(name: str, blocks: int, residual: bool) -> None:
    model = models.create(name, num_classes=4, in_channels=1)
    assert len(model.layer1) == len(model.layer3) == blocks and model.residual is residual
    assert models.is_known(name) and models.default_input_size(name) == 32
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("name", ["resnet19", "plain2", "resnet9x"])
def test_depth_not_6n_plus_2_is_unknown(name: str) -> None:
    assert not models.is_known(name)
    with pytest.raises(ModelError, match=name):
        models.create(name)


def test_named_architectures_win_over_depth_names() -> None:
    assert models.default_input_size("resnet50") == 224  # 50 = 6*8 + 2, but resnet50 is the ImageNet net
    assert "shortcut" not in models.options("plain8")
