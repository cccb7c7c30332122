"""Safe file writes: outputs go to a temporary file beside the target and are renamed into place, so an
interrupted or failed command never leaves a half-written file or destroys an existing one; JSON is always valid
JSON (no NaN); output locations are checked before the work, and no command writes over its own inputs."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgeres.errors import InputError, ModelError, WriteError


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
    tmp: Path | None = None
    try:  # an interrupt (Ctrl-C, SIGTERM) anywhere from here on leaves no temporary file
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp = Path(tmp_name)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would carry over to the target
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:  # name the file the user asked for, not its hidden temporary twin (or no file at all)
        if tmp is not None and (exc.filename is None or str(tmp) in (str(exc.filename), str(exc.filename2))):
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike[str], *, what: str = "output") -> Iterator[Path]:
    """Hold ``.<target>.lock`` beside ``target`` (an ``fcntl`` lock, released even if the process is killed) while
    the block writes ``target``; a second writer is refused at once instead of silently replacing the first's file.
    The lock file is removed on the way out.

    Raises:
        InputError: another process holds the lock; the message names the target and the lock file.
    """
    import fcntl

    target = Path(target)
    lock = target.with_name(f".{target.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd: int | None = None
    held = False
    _LOCKS.add(lock)  # before the file exists: remove_own_locks() finds it whenever an interrupt lands
    try:
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = None
                raise InputError(f"another edgeres command is writing {what} {target} right now (lock "
                                 f"{lock.name}); wait for it to finish, or write to another --out") from None
            held = True
            try:  # the previous holder may have removed the file between our open and our lock: lock a fresh one
                fresh = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                fresh = False
            if fresh:
                break
            held = False
            os.close(fd)
            fd = None
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        if fd is not None and not held:  # interrupted while taking it: remove the file if nobody holds it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except OSError:
                pass
        if held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
        if fd is not None:
            os.close(fd)
        _LOCKS.discard(lock)


_LOCKS: set[Path] = set()  # lock files this process is taking or holds


def remove_own_locks() -> None:
    """Remove the lock files this process took and an interrupt kept it from removing (it landed where no cleanup
    could run, e.g. between a generator's yield and its caller's ``with``). Another process's lock is left alone."""
    import fcntl

    for lock in list(_LOCKS):
        try:
            ours = lock.read_text().strip() == str(os.getpid())
            if not ours:  # empty: taken but not yet marked; ours only if nobody holds it
                fd = os.open(lock, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    ours = True
                except OSError:
                    pass
                finally:
                    os.close(fd)
            if ours:
                lock.unlink()
        except OSError:
            pass
        _LOCKS.discard(lock)


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


def dumps_json(obj: Any, *, what: str, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``obj`` as strict JSON text: a NaN or infinity (which ``json`` would write as invalid bare ``NaN``) is refused.

    Args:
        obj: a JSON-ready object.
        what: how the error names the output, e.g. ``"results file r.json"``.

    Raises:
        WriteError: naming the first non-finite value's place, e.g. ``results[3].topk[0][1]``.
    """
    try:
        return json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False)
    except ValueError as exc:
        place = _non_finite_place(obj) or "a value"
        raise WriteError(f"cannot write {what}: {place} is not a finite number, which JSON cannot hold (the model "
                         f"or measurement produced NaN/inf; was it trained with too high a --lr?)") from exc


def _non_finite_place(obj: Any, where: str = "") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "the value"
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for place, value in items:
        found = _non_finite_place(value, place)
        if found:
            return found
    return None


def write_json_atomic(target: str | os.PathLike[str], obj: Any, *, force: bool = True) -> Path:
    """Write ``obj`` as indented, strict JSON (see :func:`dumps_json`) to ``target`` atomically; return the path."""
    return write_text_atomic(target, dumps_json(obj, what=str(target)) + "\n", force=force)


def check_writable(*targets: str | os.PathLike[str] | None, what: str = "output") -> None:
    """Refuse, before any work, output files whose folder cannot be written (or created).

    Args:
        targets: output files (None entries are skipped).
        what: how the message names them.

    Raises:
        WriteError: naming the file and the folder that is not writable.
    """
    for target in targets:
        if target is None:
            continue
        target = Path(target)
        if target.is_dir():
            raise WriteError(f"{what} {target} is a folder; pass a file name")
        folder = target.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # the folder that would hold the new ones
        if not folder.is_dir():
            raise WriteError(f"cannot write {what} {target}: {folder} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise WriteError(f"cannot write {what} {target}: folder {folder} is not writable (read-only); "
                             "choose another location")


def check_writable_dir(folder: str | os.PathLike[str], *, what: str = "output folder") -> None:
    """Refuse a folder that cannot be written or created (see :func:`check_writable`)."""
    check_writable(Path(folder) / ".edgeres-probe", what=what)


def refuse_overwriting_inputs(inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    """No command writes over one of its own inputs, or writes two outputs to one file, ``--force`` or not.

    Args:
        inputs: ``{"MODEL": path, "--ranges": path, ...}``; None values are skipped.
        outputs: ``{"--out": path, "--trt-cache": path, ...}``; None values are skipped.

    Raises:
        InputError: naming both options and the file.
    """
    ins = [(name, Path(p)) for name, p in inputs.items() if p is not None]
    outs = [(name, Path(p)) for name, p in outputs.items() if p is not None]
    for i, (out_name, out) in enumerate(outs):
        for in_name, inp in ins:
            if _same_file(out, inp):
                raise InputError(f"{out_name} {out} is {in_name}, an input of this command; writing it would "
                                 "destroy the input (even with --force): choose another output name")
        for other_name, other in outs[i + 1:]:
            if _same_file(out, other):
                raise InputError(f"{out_name} and {other_name} are the same file {out}; one would overwrite the "
                                 "other: give them different names")


def outputs_safe(inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    """Before any work: no output is one of the command's inputs (or another output), and every output's folder
    can be written. ``inputs``/``outputs`` map option names (as the CLI spells them) to paths (None: not given).

    Raises:
        InputError: an output would overwrite an input or another output.
        WriteError: an output's folder cannot be written.
    """
    refuse_overwriting_inputs(inputs, outputs)
    for name, path in outputs.items():
        if path is not None:
            check_writable(path, what=name)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def describe_os_error(exc: OSError) -> str:
    """One line for an I/O error: the file and the cause, with "disk full" for ENOSPC."""
    causes = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large (the "
              "file size limit, ulimit -f)", errno.EROFS: "read-only file system",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}
    cause = causes.get(exc.errno or -1) or exc.strerror or str(exc)
    name = exc.filename if exc.filename is not None else None
    if name is not None and exc.filename2 is not None:
        name = f"{exc.filename} -> {exc.filename2}"
    return f"{cause}: {name}" if name else f"I/O error: {cause}"


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
