"""The model card: what a model is and how to feed it, carried by every artifact.

The checkpoint holds it, the ONNX carries it in ``metadata_props`` under :data:`ONNX_METADATA_KEY`, and every
built artifact's sidecar repeats it. ``infer``, ``calibrate`` and ``check`` read preprocessing from the card;
they never guess it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from edgeres.errors import ModelError

ONNX_METADATA_KEY = "edgeres.card"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes one input tensor.

    Pixels are scaled to [0, 1], resized so the short side is ``resize`` (skipped when None), center-cropped to
    ``crop`` x ``crop``, normalised per channel with ``mean``/``std`` and laid out as ``layout``.
    """

    resize: int | None = 256  # short side after resizing; None keeps the decoded size
    crop: int = 224  # square center crop, the model's input height and width
    mean: tuple[float, ...] = IMAGENET_MEAN  # per channel, in [0, 1] pixel units
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3  # 1 = grayscale (L), 3 = colour
    channel_order: str = "RGB"  # or "BGR" for models trained on OpenCV-decoded images
    layout: str = "NCHW"  # or "NHWC"
    interpolation: str = "bilinear"  # Pillow resampling filter name

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ModelError(f"preprocess.channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ModelError(
                f"preprocess mean/std need {self.channels} values each, got {len(self.mean)} and {len(self.std)}"
            )
        if self.channel_order not in ("RGB", "BGR"):
            raise ModelError(f"preprocess.channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ModelError(f"preprocess.layout must be NCHW or NHWC, got {self.layout!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image, without the batch axis."""
        if self.layout == "NCHW":
            return (self.channels, self.crop, self.crop)
        return (self.crop, self.crop, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(x) for x in kwargs[key])
        return cls(**kwargs)

    @classmethod
    def imagenet(cls) -> Preprocess:
        """ImageNet's 256 → 224 recipe."""
        return cls()

    @classmethod
    def small(cls, *, size: int = 32, channels: int = 3, mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None) -> Preprocess:
        """Small images (digits, CIFAR-like): resize straight to ``size``, no crop margin."""
        mean = mean if mean is not None else (0.5,) * channels
        std = std if std is not None else (0.25,) * channels
        return cls(resize=size, crop=size, mean=mean, std=std, channels=channels)


@dataclass
class ModelCard:
    """What a model is, what it was trained on and how to feed it."""

    arch: str
    class_names: list[str]
    preprocess: Preprocess = field(default_factory=Preprocess)
    input_name: str = "input"
    output_name: str = "logits"
    model_options: dict[str, Any] = field(default_factory=dict)  # extra factory kwargs (shortcut, stride_on...)
    dataset: dict[str, Any] = field(default_factory=dict)  # {"root": ..., "train": ..., "val": ..., "calibration": ...}
    metrics: dict[str, Any] = field(default_factory=dict)  # {"val_top1": 0.978, ...}
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)  # edgeres, torch, ... at training time

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.preprocess.channels

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    def to_json(self) -> str:
        from edgeres.io import dumps_json

        return dumps_json(self.to_dict(), what=f"the model card of {self.arch}", indent=None, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build from :meth:`to_dict`'s output, validated against :data:`edgeres.schema.CARD`.

        Raises:
            ModelError: a missing key or a value of the wrong type, named.
        """
        from edgeres.schema import CARD, SchemaError, validate

        try:
            validate(data, CARD)
        except SchemaError as exc:
            raise ModelError(f"model card is incomplete or malformed: {exc}; re-export the model") from exc
        try:
            known = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in data.items() if k in known}
            kwargs["preprocess"] = Preprocess.from_dict(data.get("preprocess", {}))
            kwargs["class_names"] = [str(c) for c in data["class_names"]]
            return cls(**kwargs)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"model card is incomplete or malformed ({exc}); re-export the model") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card is not valid JSON ({exc})") from exc


def card_for_file(card: ModelCard, folder: str | os.PathLike[str]) -> ModelCard:
    """The card as a file in ``folder`` stores it: the dataset root relative to ``folder`` and the calibration
    images relative to the root, so no shipped model or sidecar carries the training machine's absolute paths."""
    root = card.dataset.get("root")
    if not root:
        return card
    dataset = dict(card.dataset)
    absolute = Path(root) if Path(root).is_absolute() else None
    if absolute is not None:
        try:
            dataset["root"] = Path(os.path.relpath(absolute, Path(folder).resolve())).as_posix()
        except ValueError:  # another drive (Windows): keep it as it is
            pass
    listed = dataset.get("calibration")
    if absolute is not None and isinstance(listed, list):
        dataset["calibration"] = [_relative_to(Path(p), absolute) for p in listed]
    return dataclasses.replace(card, dataset=dataset)


def _relative_to(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() if path.is_absolute() else path.as_posix()
    except ValueError:
        return path.as_posix()  # outside the root: as it was given


def card_from_file(card: ModelCard, folder: str | os.PathLike[str]) -> ModelCard:
    """The card as read from a file in ``folder``: a relative dataset root resolved against that folder (paths
    in memory are absolute; calibration images stay relative to the root, see :func:`calibration_images`)."""
    root = card.dataset.get("root")
    if not root or Path(root).is_absolute():
        return card
    return dataclasses.replace(card, dataset={**card.dataset, "root": str((Path(folder) / root).resolve())})


def calibration_images(card: ModelCard) -> list[Path]:
    """The calibration images a card lists, as paths (relative entries are relative to the dataset root)."""
    listed = card.dataset.get("calibration")
    if not isinstance(listed, list):
        return []
    root = Path(card.dataset["root"]) if card.dataset.get("root") else None
    return [root / p if root is not None else Path(p) for p in listed]


def rebase_onnx_card(model: Any, *, source: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """A model made from the file ``source`` and saved as ``out`` (quantize, FP16): its card's relative dataset
    root, relative to ``source``'s folder, is made relative to ``out``'s."""
    card = card_from_onnx(model)
    root = card.dataset.get("root") if card is not None else None
    if root and not Path(root).is_absolute():
        attach_card_to_onnx(model, card_for_file(card_from_file(card, Path(source).parent), Path(out).parent))


def card_from_onnx(model: Any) -> ModelCard | None:
    """The card stored in an ``onnx.ModelProto``'s metadata, or None when it carries none."""
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return ModelCard.from_json(prop.value)
    return None


def attach_card_to_onnx(model: Any, card: ModelCard) -> None:
    """Store ``card`` in an ``onnx.ModelProto``'s metadata, replacing any earlier card."""
    for prop in list(model.metadata_props):
        if prop.key == ONNX_METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = card.to_json()


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """``onnx.load`` with one-line errors: a missing, truncated or foreign file is a ModelError, never a protobuf
    traceback."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise ModelError(f"ONNX model {path} not found") from None
    except Exception as exc:  # protobuf DecodeError, OSError, ...: a damaged or truncated file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not a readable ONNX model ({first}); is it truncated? export it again with "
                         "`edgeres export`") from exc


def read_onnx_card(path: str | os.PathLike[str]) -> ModelCard | None:
    """Read only the card of an ONNX file (weights are loaded too; ONNX has no header-only read)."""
    model = load_onnx(path)
    try:
        card = card_from_onnx(model)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    return card_from_file(card, Path(path).parent) if card is not None else None
