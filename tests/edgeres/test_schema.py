"""Every file edgeres reads is validated (issue 16, section 4): each key of a baseline, sidecar, ranges file, results
JSON and model card is deleted or given a wrong type, and the reader must answer with its one error type and a
message naming the file and the key, never a traceback; `check` exits 2 (input error), never 1 (regression)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from edgeres.schema import CARD, Obj, SchemaError, validate
from helpers.cli import invoke
from helpers.models import TINY_CLASSES, make_tiny_onnx

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def _wrong(value: Any) -> list[Any]:
    """Values of another JSON type than ``value``."""
    if isinstance(value, bool):
        return ["yes", [1]]
    if isinstance(value, (int, float)):
        return ["x", [value], {}]
    if isinstance(value, str):
        return [3, ["x"], {}]
    if isinstance(value, list):
        return [{}, "x", 3] + ([[{}], [None]] if value else [])
    if isinstance(value, dict):
        return [[], "x", 3]
    return ["x", 3, []]


def mutations(doc: Any, *, depth: int = 4, where: tuple = ()) -> Iterator[tuple[str, Any]]:
    """``(description, mutated copy)`` for every key: deleted, and replaced by values of other types."""
    if depth == 0 or not isinstance(doc, dict):
        return
    for key, value in doc.items():
        path = (*where, key)
        for replacement in [None, *_wrong(value)]:
            mutated = copy.deepcopy(doc)
            if replacement is None:
                del mutated[key]
                yield f"delete {'.'.join(path)}", mutated
            else:
                mutated[key] = replacement
                yield f"{'.'.join(path)} = {replacement!r}", mutated
        if isinstance(value, dict):
            for desc, sub in mutations(value, depth=depth - 1, where=path):
                mutated = copy.deepcopy(doc)
                mutated[key] = sub
                yield desc, mutated
        elif isinstance(value, list) and value and isinstance(value[0], (dict, list)):
            mutated = copy.deepcopy(doc)
            mutated[key] = [_wrong(value[0])[0], *value[1:]]
            yield f"{'.'.join(path)}[0] = {mutated[key][0]!r}", mutated


def assert_named(exc: BaseException, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message and str(path) in message, message


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("schema")
    rng = np.random.default_rng(0)
    for name in TINY_CLASSES:
        (root / "imgs" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), "L").save(root / "imgs" / name / f"{i}.png")
    model = make_tiny_onnx(root / "m.onnx")
    assert invoke("-q", "build", model, "--precision", "fp32", "--calib", root / "imgs", "--verify-images", "0"
                  ).exit_code == 0
    assert invoke("-q", "calibrate", model, "--data", root / "imgs", "--images", "8", "--batch", "4",
                  "--method", "minmax").exit_code == 0
    assert invoke("-q", "infer", model, root / "imgs", "--out", root / "results.json").exit_code == 0
    res = invoke("-q", "check", root / "m.fp32.onnx", "--baseline", root / "baseline.json", "--data", root / "imgs",
                 "--update-baseline", "--no-latency")
    assert res.exit_code == 0, res.output
    return {"root": root, "model": model, "artifact": root / "m.fp32.onnx", "imgs": root / "imgs"}


def test_validator_names_the_key_and_the_type() -> None:
    with pytest.raises(SchemaError, match=r"key 'class_names\[1\]' must be a string or an integer, got None"):
        validate({"arch": "r", "class_names": ["a", None]}, CARD)
    with pytest.raises(SchemaError, match="missing key 'a.b'"):
        validate({"a": {}}, Obj(required={"a": Obj(required={"b": int})}))
    with pytest.raises(SchemaError, match=r"key 'n' must be an integer, got True \(bool\)"):
        validate({"n": True}, Obj(required={"n": int}))


def test_every_broken_baseline_is_an_input_error(world: dict[str, Path], tmp_path: Path) -> None:
    from edgeres.baseline import load_baseline
    from edgeres.errors import GateInputError

    good = json.loads((world["root"] / "baseline.json").read_text())
    good["latency"] = {"trials": {"1": [[0.5, 0.6], [0.55]]}, "settings": {"trials": 2}}
    path = tmp_path / "baseline.json"
    refused = 0
    for desc, doc in mutations(good):
        path.write_text(json.dumps(doc))
        try:
            base = load_baseline(path)
        except GateInputError as exc:
            assert_named(exc, path)
            refused += 1
            continue
        # what loads must be usable by the gate as far as reading goes
        base.latency_trials()
        if base.accuracy:
            assert isinstance(base.accuracy["data"]["digest"], str), desc
    assert refused > 60


def test_check_exits_2_not_1_on_a_malformed_baseline(world: dict[str, Path], tmp_path: Path) -> None:
    good = json.loads((world["root"] / "baseline.json").read_text())
    cases = [("accuracy", "top1", "high"), ("accuracy", "data", None), ("artifact", "sha256", 7)]
    for section, key, value in cases:
        doc = copy.deepcopy(good)
        if value is None:
            del doc[section][key]
        else:
            doc[section][key] = value
        path = tmp_path / "b.json"
        path.write_text(json.dumps(doc))
        res = invoke("check", world["artifact"], "--baseline", path, "--no-latency")
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert f"'{section}.{key}'" in res.output and str(path) in res.output


def test_every_broken_sidecar_is_one_backend_error(world: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from edgeres import backends
    from edgeres.backends import sidecar_path
    from edgeres.errors import EdgeresError

    art = tmp_path / world["artifact"].name
    shutil.copy(world["artifact"], art)
    good = json.loads(sidecar_path(world["artifact"]).read_text())
    refused = 0
    for desc, doc in mutations(good):
        sidecar_path(art).write_text(json.dumps(doc))
        try:
            with backends.open(art) as runner:
                runner.infer(np.zeros((1, 1, 32, 32), np.float32))
        except EdgeresError as exc:
            assert_named(exc, art)
            refused += 1
    assert refused > 40
    sidecar_path(art).write_text(json.dumps({**good, "profile": {"min": "1", "opt": 8, "max": 32}}))
    res = invoke("infer", art, world["imgs"])
    assert res.exit_code == 1 and "'profile.min' must be an integer" in res.output and "Traceback" not in res.output


def test_every_broken_ranges_file_is_one_error(world: dict[str, Path], tmp_path: Path) -> None:
    from calibration import CalibrationError
    from calibration.ranges import Ranges

    good = json.loads((world["root"] / "m.ranges.json").read_text())
    path = tmp_path / "r.json"
    refused = 0
    for desc, doc in mutations(good, depth=1):
        path.write_text(json.dumps(doc))
        try:
            Ranges.load(path)
        except CalibrationError as exc:
            assert_named(exc, path)
            refused += 1
    assert refused > 15
    path.write_text(json.dumps({**good, "model_sha256": 12}))
    res = invoke("quantize", world["model"], "--ranges", path, "--out", tmp_path / "q.onnx")
    assert res.exit_code == 1 and "model_sha256" in res.output and "Traceback" not in res.output


def test_every_broken_results_file_is_one_error(world: dict[str, Path], tmp_path: Path) -> None:
    from edgeres.errors import InputError
    from edgeres.inference import compare_table, load_summary

    good = json.loads((world["root"] / "results.json").read_text())
    path = tmp_path / "results.json"
    refused = 0
    for desc, doc in mutations(good, depth=3):
        path.write_text(json.dumps(doc))
        try:
            summary = load_summary(path)
        except InputError as exc:
            assert_named(exc, path)
            refused += 1
            continue
        compare_table({"a": summary})  # whatever loads must print
    assert refused > 30


def test_every_broken_model_card_is_one_model_error(world: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    from edgeres.card import ONNX_METADATA_KEY, read_onnx_card
    from edgeres.errors import ModelError

    model = onnx.load(str(world["model"]))
    prop = next(p for p in model.metadata_props if p.key == ONNX_METADATA_KEY)
    good = json.loads(prop.value)
    path = tmp_path / "m.onnx"
    refused = 0
    for desc, doc in mutations(good, depth=2):
        prop.value = json.dumps(doc)
        onnx.save(model, str(path))
        try:
            read_onnx_card(path)
        except ModelError as exc:
            assert_named(exc, path)
            refused += 1
    assert refused > 30


def test_compare_labels_columns_by_the_distinguishing_path(world: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    for sub in ("fp32", "int8"):
        (tmp_path / sub).mkdir()
        shutil.copy(world["root"] / "results.json", tmp_path / sub / "results.json")
    res = invoke("compare", tmp_path / "fp32" / "results.json", tmp_path / "int8" / "results.json", "--json")
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.output)) == ["fp32/results", "int8/results"]
    csv = tmp_path / "results.csv"
    assert invoke("infer", world["model"], world["imgs"], "--out", csv).exit_code == 0
    res = invoke("compare", csv)
    assert res.exit_code == 1 and "is a CSV file" in res.output and "Expecting value" not in res.output
