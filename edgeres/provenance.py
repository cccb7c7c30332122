"""Where an artifact came from: which FP32 model it was built, quantized or exported from.

``check --reference`` judges an artifact against "its" FP32 model; :func:`check_reference` refuses a reference
that is not the artifact's recorded source, so an unrelated model can never make a gate pass.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgeres.errors import GateInputError

log = logging.getLogger(__name__)


def source_sha256(path: str | Path) -> tuple[str | None, Any]:
    """The sha256 of the FP32 ONNX ``path`` was made from (None when it records none), and its model card.

    A built artifact's sidecar names its source; a ``quantize`` output records the FP32 model in its metadata; any
    other ONNX is its own source.
    """
    from edgeres.backends import read_sidecar_for, sidecar_path
    from edgeres.card import card_from_onnx, load_onnx
    from edgeres.io import sha256_file

    path = Path(path)
    if sidecar_path(path).exists():
        sidecar = read_sidecar_for(path)
        return sidecar.source_onnx_sha256, sidecar.card
    model = load_onnx(path)
    card = card_from_onnx(model)
    for prop in model.metadata_props:
        if prop.key == "edgeres.quantization":
            try:
                recorded = json.loads(prop.value).get("fp32_sha256")
            except (ValueError, AttributeError):
                recorded = None
            return (str(recorded) if recorded else None), card
    return sha256_file(path), card


def check_reference(artifact: str | Path, reference: str | Path, *, allow_mismatch: bool = False) -> list[str]:
    """Refuse a ``--reference`` that is not the FP32 model ``artifact`` was made from.

    Args:
        artifact: the artifact under test.
        reference: the FP32 model given as its reference.
        allow_mismatch: note the mismatch (``--allow-mismatch``) instead of refusing it.

    Returns:
        Notes for the verdict table (the allowed mismatch), else nothing.

    Raises:
        GateInputError: (exit 2) naming both hashes, or both models' classes when no hash is recorded.
    """
    art_src, art_card = source_sha256(artifact)
    ref_src, ref_card = source_sha256(reference)
    problem = None
    if art_src and ref_src:
        if art_src != ref_src:
            problem = (f"--reference {reference} is not the model {artifact} was built from (source sha256 "
                       f"{art_src[:12]}…, reference {ref_src[:12]}…)")
    elif art_card is not None and ref_card is not None and (
            art_card.class_names != ref_card.class_names or art_card.arch != ref_card.arch):
        problem = (f"--reference {reference} ({ref_card.arch}, {ref_card.num_classes} classes) is not the model of "
                   f"{artifact} ({art_card.arch}, {art_card.num_classes} classes)")
    if problem is None:
        return []
    if not allow_mismatch:
        raise GateInputError(f"{problem}; pass the FP32 ONNX it was built from (or --allow-mismatch)")
    log.warning("%s (allowed by --allow-mismatch)", problem)
    return [f"reference mismatch allowed: {problem}"]
