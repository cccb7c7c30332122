"""Atomic file writes: outputs go to a temporary file beside the target and are renamed into place, so an
interrupted or failed command never leaves a half-written file or destroys an existing one."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgeres.errors import InputError, ModelError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    Args:
        target: the final file path.
        force: when False, refuse to replace an existing file.
    """
    target = Path(target)
    if not force and target.exists():
        raise InputError(f"{target} already exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would carry over to the target
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes, *, force: bool = True) -> Path:
    """Write ``data`` to ``target`` atomically and return the path."""
    with atomic_path(target, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike[str], text: str, *, force: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    return write_bytes_atomic(target, text.encode("utf-8"), force=force)


def write_json_atomic(target: str | os.PathLike[str], obj: Any, *, force: bool = True) -> Path:
    """Write ``obj`` as indented JSON to ``target`` atomically and return the path."""
    return write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n", force=force)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_onnx_checked(model: Any, out: str | os.PathLike[str], *, what: str, force: bool = True) -> Path:
    """Validate an ``onnx.ModelProto`` with ``onnx.checker`` and save it atomically; a failing model is never written.

    Args:
        model: the model to save.
        out: the ``.onnx`` path.
        what: how the error names the model, e.g. ``"the FP16 model converted from m.onnx"``.
        force: replace an existing ``out``.
    """
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{what} fails onnx.checker: {exc}") from exc
    with atomic_path(out, force=force) as tmp:
        onnx.save(model, str(tmp))
    return Path(out)
