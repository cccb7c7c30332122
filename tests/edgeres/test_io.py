"""Tests of edgeres.io: atomic writes keep the old file on failure, refuse without force, leave no temp files."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from edgeres.errors import InputError
from edgeres.io import atomic_path, sha256_file, write_bytes_atomic, write_json_atomic, write_text_atomic


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_path_renames_onto_target_only_after_the_block(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing visible under the final name while writing
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_failure_inside_the_block_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old contents")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise Boom
    assert target.read_bytes() == b"old contents"
    assert _leftovers(tmp_path) == []


def test_failure_before_anything_existed_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.json"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("{")
            raise ValueError("serialisation failed")
    assert list(tmp_path.iterdir()) == []


def test_force_false_refuses_an_existing_file_and_keeps_it(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("keep me")
    with pytest.raises(InputError, match="already exists.*--force"):
        with atomic_path(target, force=False):
            pytest.fail("the block must not run")
    with pytest.raises(InputError, match=str(target)):
        write_text_atomic(target, "replaced", force=False)
    assert target.read_text() == "keep me"
    assert _leftovers(tmp_path) == []
    write_text_atomic(target, "replaced", force=True)
    assert target.read_text() == "replaced"


def test_parent_folders_are_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.bin"
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "card.json", "{}")
        with atomic_path(tmp_path / "model.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model.bin").stat().st_mode & 0o777 == 0o644


def test_write_json_atomic_round_trips(tmp_path: Path) -> None:
    obj = {"arch": "resnet20", "metrics": {"val_top1": 0.975}, "classes": ["0", "1"], "unicode": "Δlogit"}
    path = write_json_atomic(tmp_path / "x.json", obj)
    assert path == tmp_path / "x.json"
    assert json.loads(path.read_text(encoding="utf-8")) == obj
    assert path.read_text(encoding="utf-8").endswith("\n")


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) + 12345)  # more than one 1 MiB chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
