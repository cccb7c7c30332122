"""The Triton Python-backend models of ``edgeres serve``: each instance opens the artifact with edgeres's runner.

Triton's dynamic batcher hands :meth:`execute` several requests at once; they are stacked into one batch (split
at the artifact's maximum, zero-padded up to its minimum), run once, and the rows are handed back per request.
A request that cannot be served (undecodable image bytes) gets its own error; the others in the batch are
answered normally. Tensors cross the stub boundary through DLPack (``np.from_dlpack`` / ``Tensor.from_dlpack``):
the stub's own NumPy conversions predate NumPy 2's ABI and return wrong strides under it.

This module runs inside Triton's backend stub (``triton_python_backend_utils`` is importable only there).
"""
from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # provided by the backend stub

    return pb_utils


def _same_artifact(params: dict[str, str]) -> None:
    """Refuse to serve an artifact that changed after the repository recorded its sha256 (clients read that
    record as the served model's identity, e.g. `edgeres check --server`)."""
    from edgeres.io import sha256_file

    path, expected = params["edgeres_artifact"], params.get("edgeres_artifact_sha256")
    if expected and sha256_file(path) != expected:
        raise RuntimeError(f"{path} changed after `edgeres serve` wrote this model (sha256 differs from the "
                           "recorded one); restart `edgeres serve`")


class _Model:
    """What both models share: open the runner, batch the requests, answer each one."""

    role = ""

    def initialize(self, args: dict[str, str]) -> None:
        from edgeres import backends
        from edgeres.card import ModelCard

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.card = ModelCard.from_json(params["edgeres_card"])
        opts: dict[str, Any] = {}
        if params.get("edgeres_backend") == "onnxruntime":
            opts = {"threads": int(params.get("edgeres_threads") or 1), "spinning": False}
        _same_artifact(params)
        self.runner = backends.open(params["edgeres_artifact"], **opts)
        self.runner.__enter__()
        # the batch range the repository promised Triton (for a plain ONNX it comes from the graph, not a sidecar)
        from edgeres.backends.base import BatchProfile

        self.profile = BatchProfile.parse(params.get("edgeres_profile") or str(self.runner.profile))
        self.shape = tuple(self.card.preprocess.input_shape)
        self.output_name = config["output"][0]["name"]

    def finalize(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()

    def _inputs(self, request: Any) -> np.ndarray:
        raise NotImplementedError

    def _outputs(self, logits: np.ndarray) -> np.ndarray:
        return logits

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        from edgeres.errors import EdgeresError

        responses: list[Any] = [None] * len(requests)
        arrays: list[tuple[int, np.ndarray]] = []
        for i, request in enumerate(requests):
            try:
                arrays.append((i, self._inputs(request)))
            except EdgeresError as exc:
                responses[i] = pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
        if arrays:
            try:
                logits = self._run(np.concatenate([a for _, a in arrays]))
            except Exception as exc:  # never let the stub die: every request gets the error
                log.exception("inference failed")
                error = pb.TritonError(f"inference failed: {exc}", pb.TritonError.INTERNAL)
                for i, _ in arrays:
                    responses[i] = pb.InferenceResponse(error=error)
                return responses
            start = 0
            for i, a in arrays:
                rows = np.ascontiguousarray(self._outputs(logits[start:start + len(a)]), dtype=np.float32)
                start += len(a)
                responses[i] = pb.InferenceResponse([pb.Tensor.from_dlpack(self.output_name, rows)])
        return responses

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run any number of rows through the runner in chunks its profile accepts."""
        out = []
        for start in range(0, len(batch), self.profile.max):
            chunk = batch[start:start + self.profile.max]
            n = len(chunk)
            if n < self.profile.min:
                chunk = np.concatenate([chunk, np.zeros((self.profile.min - n, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(self.runner.infer(np.ascontiguousarray(chunk)))[:n])
        return np.concatenate(out).astype(np.float32, copy=False)


def _tensor(request: Any, name: str) -> np.ndarray:
    from edgeres.errors import InputError

    tensor = _pb().get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InputError(f"the request has no input {name!r}")
    return np.array(np.from_dlpack(tensor), copy=True)  # the request's memory is freed after execute


class TensorModel(_Model):
    """FP32 images in the card's layout, ``(N, *input_shape)``, in; logits ``(N, classes)`` out."""

    role = "tensor"

    def _inputs(self, request: Any) -> np.ndarray:
        from edgeres.errors import InputError

        x = _tensor(request, self.card.input_name)
        if x.dtype != np.float32 or tuple(x.shape[1:]) != self.shape:  # Triton checks too; this is the backstop
            raise InputError(f"input {self.card.input_name!r} must be FP32 of shape (N, "
                             f"{', '.join(map(str, self.shape))}), got {x.dtype} {tuple(x.shape)}")
        return x


class ImageModel(_Model):
    """Encoded image files (JPEG, PNG, ... as UINT8 bytes, one per row) in; class probabilities out, labelled with
    the card's class names so that Triton's classification extension answers top-k ``prob:index:label``."""

    role = "image"

    def _inputs(self, request: Any) -> np.ndarray:
        raw = _tensor(request, "image")
        if raw.dtype != np.uint8:
            from edgeres.errors import InputError

            raise InputError(f"input 'image' must be UINT8 bytes of an encoded image, got {raw.dtype}")
        rows = raw.reshape(len(raw), -1) if raw.ndim > 1 else raw.reshape(1, -1)
        return np.stack([decode_bytes(row.tobytes(), self.card.preprocess) for row in rows])

    def _outputs(self, logits: np.ndarray) -> np.ndarray:
        from edgeres.inference import softmax

        return softmax(logits.astype(np.float64))


def decode_bytes(data: bytes, pre: Any) -> np.ndarray:
    """Decode an encoded image and preprocess it as the card says, like ``edgeres.data.load_image`` for a file.

    Raises:
        DataError: the bytes are not an image Pillow can decode (or a decompression bomb).
    """
    import warnings

    from PIL import Image

    from edgeres.data import _check_pixels, _exif_transpose, _to_mode, preprocess_image
    from edgeres.errors import DataError

    if not data:
        raise DataError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_pixels(img.size)
            img.load()
            img = _exif_transpose(img, "request")  # type: ignore[arg-type]
            img = _to_mode(img, "L" if pre.channels == 1 else "RGB")
    except DataError:
        raise
    except Image.UnidentifiedImageError:
        raise DataError(f"the {len(data)} bytes sent are not an image Pillow can read (unknown or corrupt "
                        "format); send the encoded file (JPEG, PNG, ...) as UINT8") from None
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise DataError(f"the {len(data)} bytes sent are not an image Pillow can decode "
                        f"({str(exc).strip() or type(exc).__name__})") from None
    return preprocess_image(img, pre)
