"""Text file I/O for this package: atomic writes (a temporary file beside the target, renamed into place only
when complete) and reads that fail with one clear CalibrationError.

A local copy of the idea in ``edgeres.io`` (this package may not import ``edgeres``).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from calibration.errors import CalibrationError


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` so that readers never see a half-written file.

    An existing ``target`` is replaced only after the new content is fully on disk; on any failure the
    temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = None
    try:  # an interrupt anywhere from here on leaves no temporary file
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp's 0600 would carry over to the target
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except OSError as e:  # name the file the user asked for, not its hidden temporary twin
        if tmp_name is not None and (e.filename is None or tmp_name in (e.filename, e.filename2)):
            raise OSError(e.errno, e.strerror, str(target)) from e
        raise
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_text(path: str | os.PathLike[str], *, what: str, missing_hint: str = "") -> str:
    """The UTF-8 text of ``path``; a missing or unreadable file is a CalibrationError naming ``what`` and the path."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationError(f"{what} {path} does not exist{missing_hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"cannot read {what} {path}: {e}") from None
