"""Ranges: JSON round trip, validation, model sha256 check, manifest hash."""
from __future__ import annotations

import hashlib
import json

import pytest

from calibration import CalibrationError, Ranges, manifest_hash

SHA_A = "a" * 64
SHA_B = "b" * 64


def _ranges(**overrides):
    fields = dict(
        amax={"input": 2.64, "(Unnamed Layer* 3) [Conv]_output": 0.5, "zero": 0.0},
        method="entropy",
        num_images=512,
        model_sha256=SHA_A,
        manifest_sha256="c" * 64,
        preprocess={"resize": 32, "mean": [0.5], "std": [0.25], "layout": "NCHW"},
        options={"num_bins": 2048},
    )
    fields.update(overrides)
    return Ranges(**fields)


def test_save_load_round_trip(tmp_path):
    r = _ranges()
    path = r.save(tmp_path / "sub" / "ranges.json")
    loaded = Ranges.load(path)
    assert loaded == r
    assert loaded.path == path
    data = json.loads(path.read_text())
    assert data["format"] == "edgeres-ranges/1" and data["amax"]["input"] == 2.64
    assert [p.name for p in path.parent.iterdir()] == ["ranges.json"]  # no temporary file left behind
    assert r.scales()["input"] == pytest.approx(2.64 / 127)


def test_save_replaces_atomically_and_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "ranges.json"
    _ranges().save(path)
    before = path.read_text()
    bad = _ranges()
    bad.preprocess = {"not json": object()}
    with pytest.raises(TypeError):
        bad.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ranges.json"]


def test_check_model_refuses_another_models_ranges_naming_both_hashes_and_the_file(tmp_path):
    path = _ranges().save(tmp_path / "r.json")
    loaded = Ranges.load(path)
    loaded.check_model(SHA_A.upper())  # same hash, any case
    with pytest.raises(CalibrationError) as err:
        loaded.check_model(SHA_B)
    message = str(err.value)
    assert SHA_A in message and SHA_B in message and str(path) in message


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d.pop("model_sha256"), "lacks field.*model_sha256"),
        (lambda d: d.update(format="other/9"), "format 'other/9'"),
        (lambda d: d["amax"].update(x=-1.0), "amax of tensor 'x' is -1.0"),
        (lambda d: d["amax"].update(x="big"), "amax of tensor 'x'"),
        (lambda d: d.update(method="kl"), "unknown calibration method 'kl'"),
        (lambda d: d.update(num_images=-3), "num_images"),
    ],
)
def test_invalid_files_are_refused_with_the_file_name(tmp_path, mutate, pattern):
    data = _ranges().to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=pattern) as err:
        Ranges.load(path)
    assert "bad.json" in str(err.value) or "calibration method" in str(err.value)


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        Ranges.load(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text('{"amax": ')
    with pytest.raises(CalibrationError, match="broken.json is not valid JSON"):
        Ranges.load(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CalibrationError, match="not hold a JSON object"):
        Ranges.load(tmp_path / "list.json")
    cache = tmp_path / "model.cache"
    from calibration import trt_cache

    trt_cache.write(cache, _ranges(), trt_version="8.6")
    with pytest.raises(CalibrationError, match="model.cache is a TensorRT calibration cache, not a ranges file"):
        Ranges.load(cache)


def test_method_is_normalised_and_created_is_set():
    r = _ranges(method="MSE".lower())
    assert r.method == "mse"
    assert r.created.endswith("+00:00")


def test_manifest_hash_is_sorted_relative_paths_and_sizes(tmp_path):
    (tmp_path / "b").mkdir()
    files = [tmp_path / "b" / "2.png", tmp_path / "a.png"]
    files[0].write_bytes(b"12345")
    files[1].write_bytes(b"1")
    expected = hashlib.sha256(b"a.png\t1\nb/2.png\t5\n").hexdigest()
    assert manifest_hash(files, root=tmp_path) == expected
    assert manifest_hash(list(reversed(files)), root=tmp_path) == expected  # order does not matter
    assert manifest_hash(["b/2.png", "a.png"], root=tmp_path) == expected  # relative to root already
    files[1].write_bytes(b"22")
    assert manifest_hash(files, root=tmp_path) != expected  # a changed file changes the hash
    no_sizes = hashlib.sha256(b"a.png\nb/2.png\n").hexdigest()
    assert manifest_hash(["b/2.png", "a.png"], sizes=False) == no_sizes
    with pytest.raises(CalibrationError, match="not inside the calibration folder"):
        manifest_hash([tmp_path / "a.png"], root=tmp_path / "b")
    with pytest.raises(CalibrationError, match="cannot stat calibration image"):
        manifest_hash([tmp_path / "missing.png"])


def test_saved_files_follow_the_umask_not_mkstemps_private_mode(tmp_path):
    import os

    from calibration import trt_cache

    old = os.umask(0o022)
    try:
        ranges_path = _ranges().save(tmp_path / "ranges.json")
        cache_path = tmp_path / "model.cache"
        trt_cache.write(cache_path, _ranges(), trt_version="8.6")
    finally:
        os.umask(old)
    assert ranges_path.stat().st_mode & 0o777 == 0o644
    assert cache_path.stat().st_mode & 0o777 == 0o644
