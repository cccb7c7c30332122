"""Tiny ResNet-20s for 1-channel images and their ONNX exports, with or without a model card."""
from __future__ import annotations

from pathlib import Path

TINY_CLASSES = [f"c{i}" for i in range(10)]


def tiny_resnet20(*, classes: int = 10, seed: int = 0, size: int = 32, shortcut: str = "A", warmup: int = 3):
    """An untrained ResNet-20 for 1-channel ``size`` x ``size`` images, BatchNorm statistics set by ``warmup``
    train-mode passes (left at 0/1 they saturate the logits), in eval mode."""
    import torch

    from edgeres.models import resnet20

    torch.manual_seed(seed)
    model = resnet20(num_classes=classes, in_channels=1, shortcut=shortcut)
    model.train()
    with torch.no_grad():
        for _ in range(warmup):
            model(torch.randn(16, 1, size, size))
    return model.eval()


def export_tiny(model, path: Path, card=None, *, size: int = 32, batch: int | None = None, **options) -> Path:
    """Export a 1-channel ``size`` x ``size`` model to ONNX (legacy exporter, opset 17), with ``card`` attached.

    The batch dimension is dynamic unless ``batch`` fixes it; ``options`` go to ``torch.onnx.export`` (e.g.
    ``training=torch.onnx.TrainingMode.PRESERVE`` to keep the BatchNorms).
    """
    import warnings

    import onnx
    import torch

    from edgeres.card import attach_card_to_onnx

    dynamic = None if batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter warns; dynamo needs onnxscript
        torch.onnx.export(model, torch.randn(batch or 1, 1, size, size), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes=dynamic, **options)
    if card is not None:
        proto = onnx.load(str(path))
        attach_card_to_onnx(proto, card)
        onnx.save(proto, str(path))
    return path


def make_tiny_onnx(path: Path, *, card: bool = True, seed: int = 0) -> Path:
    """:func:`tiny_resnet20` with classes ``c0``..``c9`` exported to ``path``, with its model card unless ``card``
    is False."""
    from edgeres.card import ModelCard, Preprocess

    model_card = ModelCard(arch="resnet20", class_names=TINY_CLASSES, preprocess=Preprocess.small(size=32, channels=1))
    return export_tiny(tiny_resnet20(seed=seed), path, model_card if card else None)
