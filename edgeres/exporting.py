"""PyTorch → ONNX export, checked numerically against the PyTorch model with ONNX Runtime.

The exported file carries the model card in ``metadata_props``. Parity is checked on real images of the model's
own dataset (when the card names one) at batch 1 and at an odd batch size: max |Δlogit| ≤ 1e-4 and 100% top-1
agreement, or the export fails and no file is left behind.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeres import models
from edgeres.card import ModelCard, Preprocess, attach_card_to_onnx, card_for_file
from edgeres.comparison import compare_logits
from edgeres.errors import InputError, ModelError, ParityError
from edgeres.io import atomic_path

log = logging.getLogger(__name__)

MIN_OPSET = 17
PARITY_MAX_ABS = 1e-4
ODD_BATCH = 5
CHECKPOINT_SHA_KEY = "edgeres.checkpoint_sha256"  # metadata_props: sha256 of the checkpoint the ONNX came from


def max_opset() -> int:
    """The highest opset the legacy (TorchScript) exporter writes with this torch."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):  # a torch that moved the constant: its long-standing value
        return 20


def checkpoint_sha256_of(onnx_model: object) -> str | None:
    """The checkpoint sha256 an exported ``onnx.ModelProto`` records, or None (exported before it was recorded)."""
    for prop in getattr(onnx_model, "metadata_props", []):
        if prop.key == CHECKPOINT_SHA_KEY:
            return str(prop.value)
    return None


def check_finite_weights(model: torch.nn.Module, *, source: str | Path) -> None:
    """Refuse a model with NaN or infinite weights (a diverged training): it would export and "pass" parity.

    Raises:
        ModelError: naming the first non-finite tensor.
    """
    for name, tensor in list(model.state_dict().items()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{source} holds non-finite weights ({name} has NaN or inf): its training diverged; "
                             "retrain it with a lower --lr")


@dataclass
class ExportResult:
    path: Path
    opset: int
    max_abs_diff: float  # largest |Δlogit| over all parity batches
    top1_agreement: float  # 0..1
    parity_images: int
    parity_source: str  # "dataset" (real images) or "random" (no dataset known)
    batch_sizes: tuple[int, ...]


def load_for_export(checkpoint: str | Path, *, arch: str | None = None,
                    num_classes: int | None = None) -> tuple[torch.nn.Module, ModelCard]:
    """Load an edgeres checkpoint, or a bare (e.g. torchvision) state dict when ``arch`` is given."""
    from edgeres.training import load_checkpoint

    checkpoint = Path(checkpoint)
    if arch is None:
        return load_checkpoint(checkpoint)
    if arch not in models.names():
        raise InputError(f"unknown architecture {arch!r}; choose one of: {', '.join(models.names())}")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or non-weights file
        raise ModelError(f"{checkpoint} is not a readable state dict ({str(exc).splitlines()[0]})") from exc
    if isinstance(state, dict) and "model" in state and "card" in state:  # an edgeres checkpoint: use its card
        if state["card"].get("arch") != arch:
            raise ModelError(f"{checkpoint} is an edgeres checkpoint of {state['card'].get('arch')}, not {arch}; "
                             "drop --arch")
        return load_checkpoint(checkpoint)
    classes = num_classes or int(state["fc.weight"].shape[0]) if "fc.weight" in state else (num_classes or 1000)
    model = models.create(arch, num_classes=classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{checkpoint} does not fit {arch} ({first}); check --arch") from exc
    size = models.default_input_size(arch)
    pre = Preprocess() if size > 64 else Preprocess.small(size=size)
    card = ModelCard(arch=arch, class_names=[str(i) for i in range(classes)], preprocess=pre)
    return model.eval(), card


def export_onnx(checkpoint: str | Path, *, out: str | Path, opset: int = MIN_OPSET, batch: str | int = "dynamic",
                force: bool = False, verify: bool = True, arch: str | None = None,
                quiet: bool = False) -> ExportResult:
    """Export a checkpoint to ONNX and verify it against PyTorch.

    Args:
        checkpoint: an edgeres ``.pt`` checkpoint (or a bare state dict together with ``arch``).
        out: the ``.onnx`` path; written through a temporary file and renamed only after parity passes.
        opset: ONNX opset, at least 17.
        batch: ``"dynamic"`` for a dynamic batch axis, or a fixed batch size.
        force: replace an existing ``out``.
        verify: run the parity check (always on in the CLI).
        arch: the architecture of a bare state dict (torchvision weights).
        quiet: no progress output.
    """
    from edgeres.io import check_writable, refuse_overwriting_inputs, sha256_file

    out = Path(out)
    if opset < MIN_OPSET:
        raise InputError(f"--opset must be at least {MIN_OPSET}, got {opset}")
    if opset > max_opset():  # torch would print hundreds of lines of IR, then fail
        raise InputError(f"--opset must be at most {max_opset()} (the highest torch {torch.__version__} "
                         f"exports), got {opset}")
    fixed_batch = _parse_batch(batch)
    refuse_overwriting_inputs({"CHECKPOINT": checkpoint}, {"--out": out})
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to overwrite it")
    check_writable(out, what="ONNX file")
    model, card = load_for_export(checkpoint, arch=arch)
    check_finite_weights(model, source=checkpoint)
    checkpoint_sha = sha256_file(checkpoint)
    pre = card.preprocess
    example = torch.zeros((fixed_batch or 1, *pre.input_shape), dtype=torch.float32)

    with atomic_path(out, force=True) as tmp:
        _torch_export(model, example, tmp, card=card, opset=opset, dynamic=fixed_batch is None)
        import onnx

        proto = onnx.load(str(tmp))
        attach_card_to_onnx(proto, card_for_file(card, out.parent))  # dataset paths relative, never absolute
        entry = proto.metadata_props.add()  # build reuses this ONNX for that checkpoint only (content, not time)
        entry.key, entry.value = CHECKPOINT_SHA_KEY, checkpoint_sha
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        result = ExportResult(path=out, opset=opset, max_abs_diff=0.0, top1_agreement=1.0, parity_images=0,
                              parity_source="none", batch_sizes=())
        if verify:
            result = _check_parity(model, tmp, card, out=out, opset=opset, fixed_batch=fixed_batch)
    return result


def _parse_batch(batch: str | int) -> int | None:
    if str(batch) == "dynamic":
        return None
    try:
        value = int(batch)
    except ValueError:
        raise InputError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}") from None
    if value < 1:
        raise InputError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    return value


def _torch_export(model: torch.nn.Module, example: torch.Tensor, path: Path, *, card: ModelCard, opset: int,
                  dynamic: bool) -> None:
    # The legacy (TorchScript) exporter: the dynamo exporter needs onnxscript, writes opset 18 only and splits
    # weights into a side file (see MEASUREMENTS.md).
    import warnings

    axes = {card.input_name: {0: "batch"}, card.output_name: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=[card.input_name],
                          output_names=[card.output_name], dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False)


def parity_inputs(card: ModelCard, count: int, *, seed: int = 0) -> tuple[np.ndarray, str]:
    """Up to ``count`` preprocessed real images of the card's dataset (val split first), else seeded noise."""
    from edgeres.comparison import dataset_sample, real_or_noise

    return real_or_noise(lambda: dataset_sample(card, count), card.preprocess, count=count, seed=seed,
                         real="dataset", noise="random",
                         warning="no dataset recorded in the model card: checking parity on random inputs")


def _check_parity(model: torch.nn.Module, onnx_path: Path, card: ModelCard, *, out: Path, opset: int,
                  fixed_batch: int | None) -> ExportResult:
    import onnxruntime as ort

    batch_sizes = (fixed_batch,) if fixed_batch else (1, ODD_BATCH)
    images, source = parity_inputs(card, 2 * ODD_BATCH if not fixed_batch else 2 * fixed_batch)
    if len(images) < max(batch_sizes):  # a small dataset: repeat its images to fill the largest batch
        images = np.concatenate([images] * -(-max(batch_sizes) // len(images)))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    refs, gots = [], []
    for bs in batch_sizes:
        for start in range(0, len(images) - bs + 1, bs):
            x = images[start:start + bs]
            with torch.no_grad():
                refs.append(model(torch.from_numpy(x)).numpy())
            gots.append(session.run(None, {card.input_name: x})[0])
    parity = compare_logits(np.concatenate(refs), np.concatenate(gots))
    max_abs, top1 = parity.max_abs_diff, parity.top1_agreement
    if not np.isfinite(max_abs) or max_abs > PARITY_MAX_ABS or parity.agree != parity.count:
        raise ParityError(f"ONNX export of {card.arch} does not match PyTorch: max |dlogit| {max_abs:.3g} "
                          f"(limit {PARITY_MAX_ABS:g}), top-1 agreement {100 * top1:.1f}%; {out} was not written")
    return ExportResult(path=out, opset=opset, max_abs_diff=max_abs, top1_agreement=top1,
                        parity_images=parity.count, parity_source=source, batch_sizes=batch_sizes)
