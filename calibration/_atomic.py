"""Atomic text writes: a temporary file beside the target, renamed into place only when complete.

A local copy of the idea in ``edgeres.io`` (this package may not import ``edgeres``).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` so that readers never see a half-written file.

    An existing ``target`` is replaced only after the new content is fully on disk; on any failure the
    temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp's 0600 would carry over to the target
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
