"""TensorRT calibration cache: round trip, TensorRT-written samples, corrupt lines, version headers."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from calibration import CalibrationError, Ranges, trt_cache

# As TensorRT writes it (names with spaces, brackets and colons; short hex for a zero scale).
TRT_WRITTEN = """TRT-8601-EntropyCalibration2
input: 3c010a14
(Unnamed Layer* 64) [Shuffle]_output: 3d8f5c29
/layer1/layer1.0/conv1/Conv_output_0: 3e0d4d4c
ns::block: a: 3f800000
zero_tensor: 0
"""


def test_reads_what_tensorrt_writes(tmp_path):
    path = tmp_path / "model.cache"
    path.write_text(TRT_WRITTEN)
    header, scales = trt_cache.read(path)
    assert header == "TRT-8601-EntropyCalibration2"
    assert list(scales) == ["input", "(Unnamed Layer* 64) [Shuffle]_output",
                            "/layer1/layer1.0/conv1/Conv_output_0", "ns::block: a", "zero_tensor"]
    assert scales["input"] == struct.unpack(">f", bytes.fromhex("3c010a14"))[0]
    assert scales["ns::block: a"] == 1.0
    assert scales["zero_tensor"] == 0.0
    assert trt_cache.read_amax(path)["ns::block: a"] == pytest.approx(127.0)


def test_round_trip_scales_are_float32_of_amax_over_127(tmp_path):
    amax = {"input": 1.0, "(Unnamed Layer* 64) [Shuffle]_output": 0.125, "z": 0.0, "big": 1e4, "x": 2.64}
    header = trt_cache.write(tmp_path / "m.cache", amax, trt_version="8.6.1")
    assert header == "TRT-8601-EntropyCalibration2"
    text = (tmp_path / "m.cache").read_text()
    assert text.splitlines()[0] == header and text.endswith("\n")
    assert "\ninput: 3c010204\n" in text  # 1/127 as big-endian float32 bits
    assert "(Unnamed Layer* 64) [Shuffle]_output: 3a810204" in text  # 2**-3 / 127: exponent 3 lower
    assert "\nz: 00000000\n" in text
    read_header, scales = trt_cache.read(tmp_path / "m.cache")
    assert read_header == header
    assert scales == {k: float(np.float32(v / 127)) for k, v in amax.items()}


def test_write_accepts_ranges_and_other_algorithms(tmp_path):
    r = Ranges(amax={"x": 1.27}, method="minmax", num_images=1, model_sha256="0" * 64, manifest_sha256="1" * 64,
               preprocess={})
    header = trt_cache.write(tmp_path / "c", r, trt_version="10.3", algorithm="MinMaxCalibration")
    assert header == "TRT-100300-MinMaxCalibration"
    assert trt_cache.read(tmp_path / "c")[1]["x"] == pytest.approx(0.01)
    with pytest.raises(CalibrationError, match="unknown TensorRT calibration algorithm 'KL'"):
        trt_cache.write(tmp_path / "d", r, algorithm="KL")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "version, number",
    [("8.6", 8600), ("8.6.1", 8601), ("8.5.2", 8502), ("8.5.10", 8510), ("7.1.3", 7103),
     ("10.3", 100300), ("10.13.3", 101303), ("10.13.3.9", 101303), ("11.4", 110400), (" 10.16 ", 101600)],
)
def test_version_numbers(version, number):
    assert trt_cache.version_number(version) == number
    header = trt_cache.format_header(version)
    assert header == f"TRT-{number}-EntropyCalibration2"
    major, minor, patch = (int(p) for p in (version.strip().split(".") + ["0"])[:3])
    assert trt_cache.parse_version(header) == (major, minor, patch)


@pytest.mark.parametrize("version", ["", "10", "ten.3", "8.6.1-rc", "9.2", "12.0", "6.0", "8.10", "10.3.100"])
def test_unknown_or_malformed_versions_are_refused(version):
    with pytest.raises(CalibrationError, match="TensorRT version"):
        trt_cache.version_number(version)


def test_failed_write_leaves_the_old_cache(tmp_path):
    path = tmp_path / "m.cache"
    trt_cache.write(path, {"a": 1.0})
    before = path.read_text()
    with pytest.raises(CalibrationError, match="line break"):
        trt_cache.write(path, {"a\nb": 1.0})
    with pytest.raises(CalibrationError, match="finite number >= 0"):
        trt_cache.write(path, {"a": float("nan")})
    with pytest.raises(CalibrationError, match="TensorRT version"):
        trt_cache.write(path, {"a": 1.0}, trt_version="banana")
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.cache"]


@pytest.mark.parametrize(
    "body, lineno, pattern",
    [
        ("input 3c010a14\n", 2, "not '<tensor name>: <hex scale>'"),
        ("a: 3c010a14\nb: 3c01zz14\n", 3, "not '<tensor name>: <hex scale>'"),
        ("a: 3c010a14\n\nb: 123456789\n", 4, "not '<tensor name>: <hex scale>'"),
        (": 3c010a14\n", 2, "not '<tensor name>: <hex scale>'"),
        ("a: 7fc00000\n", 2, "not a finite number"),
        ("a: bf800000\n", 2, "not a finite number"),
        ("a: 1\na: 2\n", 3, "appears twice"),
    ],
)
def test_corrupt_lines_are_named_by_number(tmp_path, body, lineno, pattern):
    path = tmp_path / "bad.cache"
    path.write_text("TRT-100300-EntropyCalibration2\n" + body)
    with pytest.raises(CalibrationError, match=pattern) as err:
        trt_cache.read(path)
    assert f"line {lineno}:" in str(err.value) and "bad.cache" in str(err.value)


def test_bad_header_missing_and_empty_files(tmp_path):
    (tmp_path / "h.cache").write_text("TensorRT cache\na: 0\n")
    with pytest.raises(CalibrationError, match="line 1.*not a TensorRT calibration cache header"):
        trt_cache.read(tmp_path / "h.cache")
    (tmp_path / "e.cache").write_text("")
    with pytest.raises(CalibrationError, match="empty"):
        trt_cache.read(tmp_path / "e.cache")
    with pytest.raises(CalibrationError, match="does not exist"):
        trt_cache.read(tmp_path / "missing.cache")


def test_windows_line_endings_are_read(tmp_path):
    path = tmp_path / "w.cache"
    path.write_bytes(b"TRT-8502-EntropyCalibration2\r\ndata: 3c008912\r\n")
    header, scales = trt_cache.read(path)
    assert header == "TRT-8502-EntropyCalibration2"
    assert scales["data"] == struct.unpack(">f", bytes.fromhex("3c008912"))[0]


def test_algorithm_for_names_the_calibrator_tensorrt_runs_for_each_method():
    from calibration import Method
    from calibration.trt_cache import Algorithm, algorithm_for

    named = {m.value: algorithm_for(m) for m in Method}
    assert named.pop("minmax") is Algorithm.MINMAX
    assert set(named.values()) == {Algorithm.ENTROPY2}  # entropy, percentile, mse: no calibrator of their own
    assert algorithm_for("minmax") is algorithm_for(Method.MINMAX)
