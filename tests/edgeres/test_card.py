"""Tests of edgeres.card: JSON round trips, Preprocess validation, the card in ONNX metadata_props."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeres.card import (
    IMAGENET_MEAN,
    ONNX_METADATA_KEY,
    ModelCard,
    Preprocess,
    attach_card_to_onnx,
    card_from_onnx,
    read_onnx_card,
)
from edgeres.errors import ModelError


def _card(**kw) -> ModelCard:
    fields = dict(
        arch="resnet20", class_names=["cat", "dog", "7"],
        preprocess=Preprocess(resize=36, crop=32, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), channel_order="BGR",
                              layout="NHWC", interpolation="bicubic"),
        input_name="images", output_name="scores", model_options={"shortcut": "B"},
        dataset={"name": "pets", "root": "/data/pets", "train_images": 10}, metrics={"val_top1": 0.75},
        seed=7, versions={"edgeres": "0.1.0", "torch": "2.13.0"},
    )
    fields.update(kw)
    return ModelCard(**fields)


def _identity_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="author", value="someone else")
    return model


# --- round trips ------------------------------------------------------------------------------------------------

def test_card_json_round_trip_keeps_every_field_and_tuple_types() -> None:
    card = _card()
    back = ModelCard.from_json(card.to_json())
    assert back == card
    assert isinstance(back.preprocess.mean, tuple) and isinstance(back.preprocess.std, tuple)
    assert back.num_classes == 3 and back.in_channels == 3
    assert back.preprocess.input_shape == (32, 32, 3)  # NHWC


def test_card_json_is_plain_sorted_json() -> None:
    data = json.loads(_card().to_json())
    assert list(data) == sorted(data)
    assert data["preprocess"]["mean"] == [0.1, 0.2, 0.3]
    assert data["class_names"] == ["cat", "dog", "7"]


def test_card_defaults_round_trip() -> None:
    card = ModelCard(arch="resnet50", class_names=[str(i) for i in range(1000)])
    back = ModelCard.from_json(card.to_json())
    assert back == card
    assert back.preprocess == Preprocess.imagenet()
    assert back.preprocess.mean == IMAGENET_MEAN
    assert back.preprocess.input_shape == (3, 224, 224)


def test_from_dict_ignores_unknown_keys_and_stringifies_class_names() -> None:
    data = json.loads(_card().to_json())
    data["a_field_from_a_newer_version"] = 1
    data["preprocess"]["future_option"] = True
    data["class_names"] = [0, 1, 2]
    back = ModelCard.from_dict(data)
    assert back.class_names == ["0", "1", "2"]
    assert back.preprocess == _card().preprocess


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"arch": "resnet20"}), "incomplete or malformed"),  # no class_names
    (json.dumps({"class_names": ["a"]}), "incomplete or malformed"),  # no arch
])
def test_malformed_cards_raise_model_error(text: str, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        ModelCard.from_json(text)


# --- Preprocess validation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(channels=2, mean=(0.5, 0.5), std=(0.5, 0.5)), r"channels must be 1 or 3, got 2"),
    (dict(channels=1), r"need 1 values each, got 3 and 3"),
    (dict(mean=(0.5,)), r"need 3 values each, got 1 and 3"),
    (dict(std=(0.5, 0.5)), r"need 3 values each, got 3 and 2"),
    (dict(channel_order="RGBA"), r"channel_order must be RGB or BGR, got 'RGBA'"),
    (dict(layout="CHW"), r"layout must be NCHW or NHWC, got 'CHW'"),
])
def test_preprocess_rejects_bad_values_with_the_value_in_the_message(kwargs: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        Preprocess(**kwargs)


def test_preprocess_validation_also_guards_from_dict() -> None:
    data = Preprocess().to_dict()
    data["layout"] = "nchw"
    with pytest.raises(ModelError, match="layout"):
        Preprocess.from_dict(data)


def test_small_preprocess_shapes() -> None:
    gray = Preprocess.small(size=28, channels=1)
    assert gray.input_shape == (1, 28, 28)
    assert (gray.resize, gray.crop, gray.mean, gray.std) == (28, 28, (0.5,), (0.25,))
    assert Preprocess.small(size=32).input_shape == (3, 32, 32)


# --- ONNX metadata ----------------------------------------------------------------------------------------------

def test_attach_then_read_from_proto_and_file(tmp_path: Path) -> None:
    model = _identity_model()
    assert card_from_onnx(model) is None
    card = _card()
    attach_card_to_onnx(model, card)
    assert card_from_onnx(model) == card
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert read_onnx_card(str(path)) == card
    other = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert other["author"] == "someone else"  # other metadata survives


def test_attach_replaces_an_earlier_card() -> None:
    model = _identity_model()
    attach_card_to_onnx(model, _card(metrics={"val_top1": 0.5}))
    attach_card_to_onnx(model, _card(metrics={"val_top1": 0.9}))
    entries = [p for p in model.metadata_props if p.key == ONNX_METADATA_KEY]
    assert len(entries) == 1
    assert card_from_onnx(model).metrics == {"val_top1": 0.9}
    assert len(model.metadata_props) == 2  # the card and the foreign "author" entry


def test_read_onnx_card_of_a_file_without_a_card_is_none(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    onnx.save(_identity_model(), str(path))
    assert read_onnx_card(str(path)) is None


def test_a_damaged_card_in_onnx_raises_model_error() -> None:
    model = _identity_model()
    model.metadata_props.add(key=ONNX_METADATA_KEY, value="{broken")
    with pytest.raises(ModelError, match="not valid JSON"):
        card_from_onnx(model)
