"""`edgeres check --server`: a model served by a real Triton server (the nvidia-pytriton wheel's binary, free
loopback ports, one server for the module serving two tiny artifacts) is gated like a local artifact: a baseline
written from the served model, the same served model passing, another served model refused as another model (and
failing accuracy when compared anyway), and a baseline of the same artifact run locally refused as another backend
and device (its accuracy matching exactly when compared anyway)."""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from edgeres import backends
from edgeres.backends import BatchProfile
from edgeres.io import sha256_file
from edgeres.serve.repository import serving_repository
from edgeres.serve.triton import Ports, TritonServer, group_members
from helpers.models import TINY_CLASSES, make_tiny_onnx

pytestmark = pytest.mark.slow

QUICK = ["--batch", "1", "--trials", "3", "--trial-duration", "100ms"]  # latency: enough to judge the median


def _labelled_by(artifact: Path, folder: Path, count: int = 8) -> Path:
    """Noise images filed under the class ``artifact`` gives each: that model scores 100 % on them."""
    from PIL import Image

    from edgeres.data import load_image

    rng = np.random.default_rng(0)
    with backends.open(artifact) as runner:
        for i in range(count):
            scratch = folder / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (36, 40), dtype=np.uint8)).save(scratch)
            label = TINY_CLASSES[int(np.argmax(runner.infer(load_image(scratch, runner.card.preprocess)[None])[0]))]
            (folder / "val" / label).mkdir(parents=True, exist_ok=True)
            scratch.rename(folder / "val" / label / scratch.name)
    return folder / "val"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("gate")
    arts = {name: backends.build(make_tiny_onnx(folder / f"{name}.onnx", seed=seed), backend="onnxruntime",
                                 precision="fp32", out=folder / f"{name}.fp32.onnx", profile=BatchProfile(1, 4, 8))
            for name, seed in (("good", 0), ("other", 1))}
    repo = folder / "models"
    repo.mkdir()
    for name, artifact in arts.items():  # one repository holding both models (each is written to a new folder)
        staged = serving_repository(artifact, folder / f"repo-{name}", name=name, instances=1, threads=1).root
        for model in staged.iterdir():
            shutil.move(str(model), repo / model.name)
    for attempt in range(2):  # a free port can be taken between choosing it and binding it
        try:
            server = TritonServer(repo, ports=Ports.free(), ready_timeout_s=120).start()
            break
        except Exception:
            if attempt:
                raise
    yield SimpleNamespace(url=server.http_url, data=_labelled_by(arts["good"], folder), tmp=folder, **arts)
    server.stop()
    assert group_members(server.process.pid) == []


def _check(*args: object):
    res = CliRunner().invoke(cli, ["-q", "check", *map(str, args)])
    return res, (json.loads(res.stdout) if "--json" in args and res.stdout.startswith("{") else None)


def test_a_served_model_is_gated_like_a_local_one(served) -> None:
    baseline, junit, report = served.tmp / "served.json", served.tmp / "junit.xml", served.tmp / "check.md"
    res, _ = _check("--server", served.url, "--model", "good", "--baseline", baseline, "--data", served.data,
                    "--update-baseline", *QUICK)
    assert res.exit_code == 0, res.output
    written = json.loads(baseline.read_text())
    assert written["artifact"]["sha256"] == sha256_file(served.good)  # the served artifact, as its repo recorded
    assert written["artifact"]["backend"] == "triton/onnxruntime" and written["accuracy"]["top1"] == 100.0
    assert written["device"] == "Triton at 127.0.0.1 (cpu instances)"
    assert written["environment"]["backend_version"].startswith("triton 2.")
    settings = written["latency"]["settings"]
    assert settings["served"] is True and settings["batches"] == [1] and settings["trials"] == 3
    assert "probe" not in written["latency"]  # a probe here would time the client's machine, not the server's
    # the same served model passes; a generous latency tolerance: this checks the plumbing, not the machine's noise
    res, verdict = _check("--server", served.url, "--model", "good", "--baseline", baseline, *QUICK,
                          "--tol-latency", "10", "--json", "--junit", junit, "--report", report)
    assert res.exit_code == 0, res.output
    rows = {r["metric"]: r["verdict"] for r in verdict["rows"]}
    assert rows["top-1 accuracy"] == "PASS" and rows["latency median b1"] == "PASS"
    assert any("client's wall time per request" in n and "NOT load-normalised" in n for n in verdict["notes"])
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "0"
    assert "| top-1 accuracy | 100.00% | 100.00% |" in report.read_text()
    res, _ = _check("--server", served.url, "--model", "good", "--baseline", baseline, "--side-by-side", *QUICK)
    assert res.exit_code == 2 and "serves the artifact being checked" in res.output  # itself: tells nothing


def test_the_baseline_model_still_served_beside_is_timed_side_by_side(served) -> None:
    """v1 ("good") and v2 ("other") on one server: v2 is timed request by request against v1, not the stored
    samples (the two tiny models have the same architecture, so their speed is the same)."""
    baseline = served.tmp / "v1.json"
    res, _ = _check("--server", served.url, "--model", "good", "--baseline", baseline, "--update-baseline", *QUICK)
    assert res.exit_code == 0, res.output
    res, verdict = _check("--server", served.url, "--model", "other", "--baseline", baseline, "--allow-mismatch",
                          *QUICK, "--tol-latency", "10", "--json")
    assert res.exit_code == 0, res.output
    assert any("side by side with the baseline's model" in n and "'good' unchanged" in n for n in verdict["notes"])
    median = next(r for r in verdict["rows"] if r["metric"] == "latency median b1")
    assert median["verdict"] == "PASS" and "timed side by side" in median["message"]
    res, verdict = _check("--server", served.url, "--model", "other", "--baseline", baseline, "--allow-mismatch",
                          "--no-side-by-side", *QUICK, "--tol-latency", "10", "--json")
    assert res.exit_code == 0, res.output
    assert any("compared with the stored samples (--no-side-by-side)" in n for n in verdict["notes"])


def test_another_served_model_is_refused_and_fails_accuracy_when_compared(served) -> None:
    baseline = served.tmp / "good-served.json"
    res, _ = _check("--server", served.url, "--model", "good", "--baseline", baseline, "--data", served.data,
                    "--update-baseline", "--no-latency")
    assert res.exit_code == 0, res.output
    res, _ = _check("--server", served.url, "--model", "other", "--baseline", baseline, "--no-latency")
    assert res.exit_code == 2 and "artifact sha256" in res.output and "--allow-mismatch" in res.output
    res, verdict = _check("--server", served.url, "--model", "other", "--baseline", baseline, "--no-latency",
                          "--allow-mismatch", "--json")
    assert res.exit_code == 1, res.output
    top1 = next(r for r in verdict["rows"] if r["metric"] == "top-1 accuracy")
    assert top1["verdict"] == "FAIL" and top1["baseline"] == 100.0 and top1["now"] < 100.0


def test_a_local_baseline_of_the_served_artifact_is_another_backend(served) -> None:
    """Same artifact file, run here vs through the server: the accuracy is the same, but latency through a server
    is not the same measurement, so the baseline is refused unless --allow-mismatch says to compare anyway."""
    baseline = served.tmp / "local.json"
    res, _ = _check(served.good, "--baseline", baseline, "--data", served.data, "--update-baseline", "--no-latency")
    assert res.exit_code == 0, res.output
    res, _ = _check("--server", served.url, "--model", "good", "--baseline", baseline, "--no-latency")
    assert res.exit_code == 2
    assert "backend onnxruntime -> triton/onnxruntime" in res.output and "Triton at 127.0.0.1" in res.output
    assert "artifact sha256" not in res.output  # the artifact itself is the same
    res, verdict = _check("--server", served.url, "--model", "good", "--baseline", baseline, "--no-latency",
                          "--allow-mismatch", "--json")
    assert res.exit_code == 0, res.output
    assert [(r["metric"], r["baseline"], r["now"]) for r in verdict["rows"]][0] == ("top-1 accuracy", 100.0, 100.0)
    assert any(n.startswith("baseline mismatch allowed") for n in verdict["notes"])
