"""Folder inference: order, padding, top-k, accuracy, bad files, output shapes, on a tiny real ResNet-20."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeres import backends
from edgeres.backends import BatchProfile
from edgeres.data import load_image
from edgeres.errors import DataError, InputError
from edgeres.inference import InferResult, infer_folder, predictions_table, softmax, summary_table
from helpers.models import TINY_CLASSES, make_tiny_onnx

CLASSES = TINY_CLASSES


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model")
    src = make_tiny_onnx(root / "tiny.onnx")
    return backends.build(src, backend="onnxruntime", precision="fp32", out=root / "tiny.fp32.onnx",
                          profile=BatchProfile(1, 4, 8))


def _image(path: Path, seed: int, *, fmt: str | None = None, size: tuple[int, int] = (40, 36)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, format=fmt)
    return path


def _expected(runner_path: Path, files: list[Path]) -> np.ndarray:
    """Probabilities of each file run alone (batch 1), independent of the pipeline."""
    with backends.open(runner_path) as runner:
        pre = runner.card.preprocess
        rows = [runner.infer(load_image(f, pre)[None])[0] for f in files]
    return softmax(np.asarray(rows, dtype=np.float64))


def test_order_padding_and_topk(artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    files = [_image(folder / "b" / "z.png", 1), _image(folder / "a.jpg", 2), _image(folder / "b" / "a.PNG", 3),
             _image(folder / "c" / "d" / "x.bmp", 4), _image(folder / "m.webp", 5)]
    expected_order = sorted(files, key=lambda p: p.relative_to(folder).as_posix())
    result = infer_folder(artifact, folder, batch=4, top_k=3, workers=2, quiet=True)
    assert [p.path for p in result.predictions] == [str(p) for p in expected_order]
    assert result.summary["batches"] == 2 and result.summary["images"] == 5  # 4 + 1 padded to 4
    probs = _expected(artifact, expected_order)
    for pred, row in zip(result.predictions, probs):
        assert len(pred.topk) == 3
        best = np.argsort(-row)[:3]
        assert [lab for lab, _ in pred.topk] == [CLASSES[i] for i in best]
        np.testing.assert_allclose([p for _, p in pred.topk], row[best], atol=1e-5)
        assert pred.topk[0][1] >= pred.topk[1][1] >= pred.topk[2][1]
    full = infer_folder(artifact, folder, batch=1, top_k=99, quiet=True)  # k is capped at the class count
    for pred in full.predictions:
        assert len(pred.topk) == 10 and sum(p for _, p in pred.topk) == pytest.approx(1.0, abs=1e-6)
    assert full.summary["accuracy"] is None  # folder names are not classes


def test_accuracy_on_class_named_folders(artifact: Path, tmp_path: Path) -> None:
    flat = [_image(tmp_path / "flat" / f"{i}.png", 10 + i) for i in range(6)]
    probs = _expected(artifact, flat)
    folder = tmp_path / "labelled"
    for i, (src, row) in enumerate(zip(flat, probs)):
        order = np.argsort(-row)
        cls = CLASSES[order[0]] if i % 2 == 0 else CLASSES[order[1]]  # half right, half second-best
        (folder / cls).mkdir(parents=True, exist_ok=True)
        (folder / cls / src.name).write_bytes(src.read_bytes())
    result = infer_folder(artifact, folder, batch=4, quiet=True)
    acc = result.summary["accuracy"]
    assert acc["labelled"] == 6
    assert acc["top1"] == pytest.approx(0.5) and acc["top5"] == pytest.approx(1.0)
    assert "accuracy top-1 50.00%" in summary_table(result)


def test_bad_files_are_skipped_and_listed(artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mixed"
    good = [_image(folder / "good1.png", 1), _image(folder / "good2.jpg", 2, fmt="JPEG", size=(64, 48))]
    _image(folder / "bomb.png", 3, size=(120, 100))  # over the (lowered) decompression-bomb limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image at all")
    jpeg = good[1].read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    result = infer_folder(artifact, folder, batch=2, quiet=True)
    assert sorted(Path(p.path).name for p in result.predictions) == ["good1.png", "good2.jpg"]
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert set(reasons) == {"empty.png", "text.jpg", "truncated.jpg", "bomb.png"}
    assert "decompression bomb" in reasons["bomb.png"]
    assert "empty" in reasons["empty.png"]
    assert "not an image" in reasons["text.jpg"]
    assert "truncated" in reasons["truncated.jpg"] or "corrupt" in reasons["truncated.jpg"]
    assert result.summary["skipped"] == 4 and result.summary["images"] == 2
    assert "SKIPPED" in predictions_table(result)
    with pytest.raises(DataError, match="4 unreadable image\\(s\\) \\(remove or fix them\\)") as info:
        infer_folder(artifact, folder, batch=2, strict=True, quiet=True)
    assert len(info.value.result.predictions) == 2  # the good ones were still classified


def test_empty_or_imageless_folder_is_an_error(artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        infer_folder(artifact, tmp_path / "empty", quiet=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no images found"):
        infer_folder(artifact, tmp_path / "docs", quiet=True)
    with pytest.raises(DataError, match="not found"):
        infer_folder(artifact, tmp_path / "missing", quiet=True)
    (tmp_path / "allbad").mkdir()
    (tmp_path / "allbad" / "a.png").write_bytes(b"")
    (tmp_path / "allbad" / "b.jpg").write_text("not an image")
    with pytest.raises(DataError, match="none of its 2 image file\\(s\\) could be read"):
        infer_folder(artifact, tmp_path / "allbad", quiet=True)


def test_options_are_checked(artifact: Path, tmp_path: Path) -> None:
    _image(tmp_path / "i" / "a.png", 1)
    with pytest.raises(InputError, match="outside .*batch profile 1:4:8"):
        infer_folder(artifact, tmp_path / "i", batch=16, quiet=True)
    with pytest.raises(InputError, match="is a checkpoint; .*edgeres build"):
        infer_folder(tmp_path / "model.pt", tmp_path / "i", quiet=True)
    with pytest.raises(InputError, match="--top-k"):
        infer_folder(artifact, tmp_path / "i", top_k=0, quiet=True)


def test_json_and_csv_shapes_and_atomic_writes(artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    for i in range(3):
        _image(folder / f"{i}.png", i)
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    result = infer_folder(artifact, folder, batch=2, top_k=2, quiet=True)
    out = tmp_path / "out" / "results.json"
    out.parent.mkdir()
    out.write_text("old")
    result.write(out)
    data = json.loads(out.read_text())
    assert list(data) == ["results", "skipped", "summary"]
    assert [sorted(r) for r in data["results"]] == [["path", "topk"]] * 3
    assert [sorted(t) for t in data["results"][0]["topk"]] == [["label", "prob"]] * 2
    assert data["skipped"] == [{"path": str(folder / "bad.png"), "reason": data["skipped"][0]["reason"]}]
    summary = data["summary"]
    for key in ("images", "wall_s", "images_per_s", "latency_ms", "backend", "precision"):
        assert key in summary
    assert summary["backend"] == "onnxruntime" and summary["images"] == 3
    assert set(summary["latency_ms"]) == {"preprocess", "input_wait", "inference"}
    assert set(summary["latency_ms"]["inference"]) >= {"min", "mean", "median", "p90", "p95", "p99", "max"}
    rows = list(csv.reader(io.StringIO(result.write(tmp_path / "out" / "r.csv").read_text())))
    assert rows[0] == ["path", "label_1", "prob_1", "label_2", "prob_2", "skipped"]
    assert len(rows) == 5 and rows[-1][0].endswith("bad.png") and rows[-1][-1]
    assert float(rows[1][2]) == pytest.approx(data["results"][0]["topk"][0]["prob"], abs=1e-6)
    with pytest.raises(InputError, match=".json or .csv"):
        result.write(tmp_path / "out" / "r.txt")
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.csv", "results.json"]  # no temp files left


def test_result_round_trips_through_dict() -> None:
    result = InferResult([], [], {"images": 0})
    assert result.to_dict() == {"results": [], "skipped": [], "summary": {"images": 0}}


def test_cli_infer(artifact: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import cli

    folder = tmp_path / "imgs"
    for i in range(3):
        _image(folder / "c1" / f"{i}.png", i)
    (folder / "c1" / "broken.png").write_bytes(b"")
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "infer", str(artifact), str(folder), "--batch", "2", "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert str(folder / "c1" / "0.png") in res.output and "SKIPPED" in res.output
    assert "images/s" in res.output and "accuracy top-1" in res.output and "inference" in res.output
    out = tmp_path / "r.csv"
    res = runner.invoke(cli, ["-q", "infer", str(artifact), str(folder), "--out", str(out), "--strict"])
    assert res.exit_code == 1 and "skipped (--strict)" in res.output
    assert len(out.read_text().splitlines()) == 5  # written anyway: header + 3 results + 1 skipped
    res = runner.invoke(cli, ["-q", "infer", str(artifact), str(folder), "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)["results"]) == 3
    res = runner.invoke(cli, ["-q", "infer", str(artifact), str(tmp_path / "nope")])
    assert res.exit_code == 1 and "not found" in res.output
    res = runner.invoke(cli, ["-q", "infer", str(artifact), str(folder), "--out", str(tmp_path / "r.xml")])
    assert res.exit_code == 1 and ".json or .csv" in res.output


def test_compare_prints_summaries_side_by_side(artifact: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import cli

    folder = tmp_path / "imgs"
    for i in range(2):
        _image(folder / "c2" / f"{i}.png", i)
    a = infer_folder(artifact, folder, batch=2, quiet=True).write(tmp_path / "fp32.json")
    b = infer_folder(artifact, folder, batch=1, quiet=True).write(tmp_path / "again.json")
    res = CliRunner().invoke(cli, ["compare", str(a), str(b)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["fp32", "again"]
    assert any(line.startswith("accuracy top-1") for line in lines)
    assert next(line for line in lines if line.startswith("batch")).split()[1:] == ["2", "1"]
    (tmp_path / "bad.json").write_text("[]")
    res = CliRunner().invoke(cli, ["compare", str(a), str(tmp_path / "bad.json")])
    assert res.exit_code == 1 and "not an `edgeres infer` results JSON" in res.output
