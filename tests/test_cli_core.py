"""CLI tests for `data digits`, `train` and `export` through click's CliRunner: results, one-line errors, --debug."""
from __future__ import annotations

import re
import shutil
import traceback
from pathlib import Path

import pytest
import torch

from edgeres import exporting as export_mod
from edgeres.errors import InputError
from helpers.cli import assert_one_line_error, invoke

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- train ------------------------------------------------------------------------------------------------------

def test_train_then_resume_then_force(small_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "m.pt"
    result = invoke("train", small_slice, "--out", out, "--epochs", 1, "--batch-size", 8, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "trained resnet20 for 1 epochs" in result.output
    state = torch.load(out, map_location="cpu", weights_only=False)
    best = state["card"]["metrics"]["best_val_top1"]
    assert f"best val top-1: {100 * best:.1f}%" in result.output
    # the progress bar's final line for the epoch (not a tty: plain lines on stderr)
    assert re.search(r"^epoch 1/1 \[#{20}\] 50/50 [\d.]+ img/s .*val_top1=[\d.]+%$", result.stderr, re.M), \
        result.stderr

    result = invoke("-q", "train", small_slice, "--out", out, "--epochs", 2, "--resume")
    assert result.exit_code == 0, result.output
    assert "trained resnet20 for 1 epochs" in result.output
    assert "epoch 2/2" not in result.output  # -q: no progress bars
    assert torch.load(out, map_location="cpu", weights_only=False)["epoch"] == 2

    result = invoke("-q", "train", small_slice, "--out", out, "--epochs", 1, "--batch-size", 8, "--threads", 1,
                    "--force")
    assert result.exit_code == 0, result.output
    assert torch.load(out, map_location="cpu", weights_only=False)["epoch"] == 1  # started over
    assert _names(out.parent) == ["m.pt"]


def test_train_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-data"
    result = invoke("train", missing, "--out", tmp_path / "m.pt")
    assert_one_line_error(result, str(missing), "does not exist", "'digits'")
    assert _names(tmp_path) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_train_corrupt_image_names_the_file(damage: str, small_slice: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_slice, data)
    bad = data / "train" / "3" / "bad.png"
    good = next((data / "train" / "3").glob("*.png")).read_bytes()
    bad.write_bytes({"garbage": b"this is not a png", "truncated": good[: len(good) // 2], "empty": b""}[damage])
    out = tmp_path / "m.pt"
    result = invoke("-q", "train", data, "--out", out, "--epochs", 1, "--threads", 1)
    line = assert_one_line_error(result, str(bad))
    reason = {"garbage": "not an image", "truncated": "truncated", "empty": "empty"}[damage]
    assert reason in line.lower()
    assert not out.exists()
    assert _names(tmp_path) == ["data"]


def test_train_refuses_to_overwrite_without_force(small_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    out.write_bytes(b"a checkpoint from yesterday")
    result = invoke("train", small_slice, "--out", out, "--epochs", 1)
    assert_one_line_error(result, str(out), "already exists", "--resume", "--force")
    assert out.read_bytes() == b"a checkpoint from yesterday"


def test_train_unknown_arch_is_a_usage_error(small_slice: Path, tmp_path: Path) -> None:
    result = invoke("train", small_slice, "--arch", "resnet21", "--out", tmp_path / "m.pt")
    assert_one_line_error(result, "--arch", "resnet21", "resnet20", exit_code=2)
    assert _names(tmp_path) == []


def test_train_refuses_learning_rates_that_cannot_train(small_slice: Path, tmp_path: Path) -> None:
    negative = invoke("train", small_slice, "--out", tmp_path / "m.pt", "--epochs", 1, "--lr", -1)
    assert_one_line_error(negative, "--lr", "-1", exit_code=2)
    decay = invoke("train", small_slice, "--out", tmp_path / "m.pt", "--epochs", 1, "--weight-decay", -1)
    assert_one_line_error(decay, "--weight-decay", exit_code=2)
    nan = invoke("train", small_slice, "--out", tmp_path / "m.pt", "--epochs", 1, "--lr", "nan")
    assert_one_line_error(nan, "--lr must be a positive number, got nan")
    assert _names(tmp_path) == []


def test_debug_lets_the_exception_propagate_with_its_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = invoke("--debug", "train", missing, "--out", tmp_path / "m.pt")
    assert result.exit_code == 1
    assert isinstance(result.exception, InputError)
    frames = "".join(traceback.format_exception(*result.exc_info))
    assert "resolve_dataset" in frames and str(missing) in frames
    with pytest.raises(InputError, match="does not exist"):
        invoke("--debug", "train", missing, "--out", tmp_path / "m.pt", catch_exceptions=False)
    # without --debug the same failure is a one-line error
    assert_one_line_error(invoke("train", missing, "--out", tmp_path / "m.pt"), str(missing))


# --- export -----------------------------------------------------------------------------------------------------

def test_export_prints_both_parity_numbers(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = invoke("-q", "export", tiny_checkpoint, "--out", out, "--batch", 3)
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (opset 17)" in result.output
    match = re.search(r"parity on 6 dataset images at batch 3: max \|dlogit\| (\S+), top-1 agreement (\S+)%",
                      result.output)
    assert match, result.output
    assert float(match.group(1)) <= 1e-4 and match.group(2) == "100.0"
    assert _names(tmp_path) == ["m.onnx"]


def test_export_refuses_to_overwrite_without_force(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old onnx")
    assert_one_line_error(invoke("export", tiny_checkpoint, "--out", out), str(out), "--force")
    assert out.read_bytes() == b"old onnx"


def test_export_parity_failure_exits_non_zero_and_writes_nothing(tiny_checkpoint: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_mod, "PARITY_MAX_ABS", -1.0)
    out = tmp_path / "m.onnx"
    result = invoke("-q", "export", tiny_checkpoint, "--out", out)
    assert_one_line_error(result, "does not match PyTorch", "top-1 agreement", "was not written")
    assert _names(tmp_path) == []


@pytest.mark.parametrize("args, needles, exit_code", [
    (["--opset", "16"], ["--opset must be at least 17, got 16"], 1),
    (["--batch", "-2"], ["--batch must be 'dynamic' or a positive integer"], 1),
    (["--arch", "resnet21"], ["unknown architecture 'resnet21'"], 1),
])
def test_export_option_errors(args: list[str], needles: list[str], exit_code: int, tiny_checkpoint: Path,
                              tmp_path: Path) -> None:
    result = invoke("export", tiny_checkpoint, "--out", tmp_path / "m.onnx", *args)
    assert_one_line_error(result, *needles, exit_code=exit_code)
    assert _names(tmp_path) == []


def test_export_missing_or_foreign_checkpoint(tmp_path: Path) -> None:
    result = invoke("export", tmp_path / "missing.pt", "--out", tmp_path / "m.onnx")
    assert_one_line_error(result, "missing.pt", "does not exist", exit_code=2)
    (tmp_path / "notes.pt").write_text("just text")
    result = invoke("export", tmp_path / "notes.pt", "--out", tmp_path / "m.onnx")
    assert_one_line_error(result, "notes.pt", "not a readable PyTorch checkpoint")
    assert _names(tmp_path) == ["notes.pt"]


# --- data -------------------------------------------------------------------------------------------------------

def test_data_digits_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert_one_line_error(invoke("data", "digits", out), str(out), "not empty", "--force")
    assert _names(out) == ["mine.txt"]


def test_help_lists_the_core_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("data", "train", "export"):
        assert re.search(rf"^\s+{command}\s", result.output, re.M), command
    result = invoke("train", "--help")
    assert result.exit_code == 0 and "--resume" in result.output and "--force" in result.output
