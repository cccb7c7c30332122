"""The degradation study on tiny settings: depths 8 and 14, 2 epochs, the digits slice, one torch thread.

One study is run twice: first interrupted (Ctrl-C) right after ResNet-8 saved its first epoch, then to the end
through the CLI. Most tests read what the two runs left behind.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from edgeres import study as study_mod
from edgeres.errors import InputError
from edgeres.study import StudyConfig, degradation_verdict, parse_depths, run_study

NETS = ["plain8", "resnet8", "plain14", "resnet14"]
ARGS = ["--depths", "8,14", "--epochs", "2", "--threads", "1"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(digits_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The study interrupted in ResNet-8's second epoch, then resumed to the end by ``edgeres study degradation``."""
    import edgeres.training as train_mod
    from helpers.training import torch_threads_kept

    out = tmp_path_factory.mktemp("study") / "deg"
    real_save = train_mod._save_checkpoint

    def save_then_stop(path: Path, **kwargs: Any) -> None:
        real_save(path, **kwargs)
        if path.parent.name == "resnet8" and kwargs["epoch"] == 1:
            raise KeyboardInterrupt

    with torch_threads_kept(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "_save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_study(digits_slice, out=out, quiet=True,
                      config=StudyConfig(depths=(8, 14), epochs=2, threads=1))
    before = {"plain8_sha": _sha(out / "plain8" / "model.pt"),
              "resnet8": torch.load(out / "resnet8" / "model.pt", weights_only=False),
              "rows": sorted(p.parent.name for p in out.glob("*/row.json"))}
    with torch_threads_kept():
        res = CliRunner().invoke(cli, ["study", "degradation", str(digits_slice), *ARGS, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return {"out": out, "before": before, "stderr": res.stderr, "json": json.loads(res.stdout)}


def test_files_written(finished: dict[str, Any]) -> None:
    out = finished["out"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((out / "table.json").read_text())
    assert [r["network"] for r in table["networks"]] == NETS
    md = (out / "table.md").read_text()
    assert all(f"| {name} |" in md for name in NETS) and "**Verdict:**" in md
    for name in NETS:
        assert (out / name / "model.pt").is_file() and (out / name / "model.int8.onnx").is_file()


def test_resume_keeps_finished_network_and_continues_the_interrupted_one(finished: dict[str, Any]) -> None:
    out, before, stderr = finished["out"], finished["before"], finished["stderr"]
    assert before["rows"] == ["plain8"]  # the interruption came after plain8 was measured
    assert _sha(out / "plain8" / "model.pt") == before["plain8_sha"]  # not retrained
    assert "plain8 (1/4): finished in an earlier run, kept" in stderr
    assert "resnet8 (2/4): resuming training at epoch 2/2" in stderr
    assert "epoch 1/2" not in stderr.split("resnet8 (2/4)")[1].split("plain14 (3/4)")[0]
    resumed = torch.load(out / "resnet8" / "model.pt", weights_only=False)
    assert before["resnet8"]["epoch"] == 1 and resumed["epoch"] == 2
    assert resumed["history"][0] == before["resnet8"]["history"][0]  # epoch 1 kept, only epoch 2 trained


def test_table_figures(finished: dict[str, Any], digits_slice: Path) -> None:
    from edgeres.sensitivity import labelled_images, quantizable_layers
    from edgeres.training import load_checkpoint

    import onnx

    out = finished["out"]
    rows = finished["json"]["networks"]
    for row in rows:
        ckpt = out / row["network"] / "model.pt"
        model, card = load_checkpoint(ckpt)
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["depth"] == int(re.sub(r"\D", "", row["network"])) and row["residual"] == (row["network"][0] == "r")
        history = torch.load(ckpt, weights_only=False)["history"]
        assert len(row["curves"]["train_error"]) == len(history) == 2
        assert row["train_error"] == pytest.approx(100 * (1 - history[-1]["train_top1"]))
        assert row["val_error"] == pytest.approx(100 * (1 - history[-1]["val_top1"]))
        for key in ("train_error", "val_error", "fp32_top1", "int8_top1"):
            assert 0 <= row[key] <= 100, (row["network"], key)
        assert row["fp32_latency_ms"] > 0 and row["int8_latency_ms"] > 0
        # FP32 top-1 of the artifact agrees with PyTorch on the same validation images
        x, y, _ = labelled_images(out / row["network"] / "model.onnx")
        with torch.no_grad():
            torch_top1 = 100 * float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
        assert row["fp32_top1"] == pytest.approx(torch_top1, abs=100 / len(y) + 1e-9)
        assert row["val_error"] == pytest.approx(100 - torch_top1, abs=100 / len(y) + 1e-9)
        layers = [layer.node for layer in quantizable_layers(onnx.load(out / row["network"] / "model.onnx"))]
        assert row["worst_int8_layer"]["node"] in layers
    assert rows[0]["params"] < rows[2]["params"]  # deeper: more parameters
    assert finished["json"]["verdict"] == degradation_verdict(rows)


def test_verdict_compares_shallowest_and_deepest() -> None:
    def row(name: str, err: float) -> dict[str, Any]:
        return {"network": name, "depth": int(re.sub(r"\D", "", name)), "train_error": err}

    seen = degradation_verdict([row("plain20", 1.0), row("resnet20", 2.0), row("plain56", 3.0),
                                row("resnet56", 2.0)])
    assert seen["degradation"] is True and "appeared" in seen["summary"]
    not_seen = degradation_verdict([row("plain20", 3.0), row("resnet20", 2.0), row("plain56", 1.0),
                                    row("resnet56", 1.0)])
    assert not_seen["degradation"] is False and "did not appear" in not_seen["summary"]
    assert degradation_verdict([row("plain20", 1.0), row("resnet20", 1.0)])["degradation"] is None


@pytest.mark.parametrize("depths, fragment", [("10", r"6n\+2"), ("20,abc", "'abc'"), ("2", r"6n\+2"),
                                              ("20,50", "ImageNet"), ("20,20", "distinct")])
def test_bad_depths(depths: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        parse_depths(depths)
    assert parse_depths("56,20") == (20, 56)


def test_cli_bad_inputs(tmp_path: Path, digits_slice: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["study", "degradation", "digits", "--depths", "10", "--out", str(tmp_path / "a")])
    assert res.exit_code == 1 and "6n+2" in res.output and "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(cli, ["study", "degradation", str(tmp_path / "empty"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "no train/ and val/" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()  # nothing written for a dataset that cannot be opened
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    res = runner.invoke(cli, ["study", "degradation", str(digits_slice), *ARGS, "--out", str(tmp_path / "taken")])
    assert res.exit_code == 1 and "--force" in res.output and "not empty" in res.output


def test_finished_study_needs_force(finished: dict[str, Any], digits_slice: Path) -> None:
    res = CliRunner().invoke(cli, ["study", "degradation", str(digits_slice), *ARGS, "--out", str(finished["out"])])
    assert res.exit_code == 1 and "finished study" in res.output and "--force" in res.output


def test_force_removes_only_what_a_study_writes(tmp_path: Path) -> None:
    out = tmp_path / "deg"
    (out / "plain8").mkdir(parents=True)
    (out / "plain8" / "model.pt").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    (out / "study.json").write_text(json.dumps({"settings": {"depths": [8]}, "networks": ["plain8"]}))
    cfg = StudyConfig(depths=(20,))
    with pytest.raises(InputError, match="other settings"):
        study_mod._prepare_out(out, cfg, study_mod.network_names(cfg), force=False)
    study_mod._prepare_out(out, cfg, study_mod.network_names(cfg), force=True)
    assert not (out / "plain8").exists() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "study.json").read_text())["networks"] == ["plain20", "resnet20"]

