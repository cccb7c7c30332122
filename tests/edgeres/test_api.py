"""The public API: ``import edgeres`` alone runs the README's pipeline, names load lazily, and the rules that once
lived only in cli.py (default outputs, overwrite guards, usage errors, --strict) hold for API callers too."""
from __future__ import annotations

import ast
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgeres
from edgeres.errors import DataError, InputError, UsageError

ROOT = Path(__file__).resolve().parents[2]


def readme_pipeline() -> str:
    """The Python block of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section should hold exactly one Python block"
    return blocks[0]


def test_readme_script_imports_nothing_but_edgeres() -> None:
    tree = ast.parse(readme_pipeline())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported == {"edgeres"}
    assert not any(isinstance(node, ast.ImportFrom) for node in ast.walk(tree))


@pytest.mark.slow
def test_readme_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    """digits -> train -> export -> calibrate -> quantize -> build int8 -> open -> infer -> bench -> check."""
    script = tmp_path / "pipeline.py"
    script.write_text(readme_pipeline())
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    backend, _, top1, verdict = run.stdout.strip().splitlines()[-1].split()
    assert backend == "onnxruntime"  # no TensorRT here: the embedded default ran, and the script says so
    assert float(top1.rstrip("%")) > 20.0  # one epoch on digits already beats chance (10 %) clearly
    assert verdict in {"PASS", "INCONCLUSIVE"}  # the same artifact never FAILs its own baseline
    for name in ("resnet20.pt", "resnet20.onnx", "resnet20.ranges.json", "resnet20.qdq.onnx", "baseline.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "resnet20.ranges.json").read_text())["num_images"] == 128


def test_import_edgeres_loads_no_pipeline_module_until_a_name_is_used() -> None:
    code = ("import sys, edgeres; heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'edgeres.api', "
            "'edgeres.building') if m in sys.modules]; print(heavy); edgeres.calibrate; "
            "print('edgeres.api' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True False"]


def test_every_public_name_resolves_and_none_is_shadowed_by_a_submodule() -> None:
    for name in edgeres.__all__:
        assert getattr(edgeres, name) is not None, name
    submodules = {m.name for m in pkgutil.iter_modules(edgeres.__path__)}
    # importing a submodule rebinds the package attribute of its name: a public function must not share it
    assert not submodules & set(edgeres.__all__)
    assert set(edgeres.__all__) <= set(dir(edgeres))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        edgeres.trian  # noqa: B018


def test_what_type_checkers_see_is_what_runs() -> None:
    """The TYPE_CHECKING imports of edgeres/__init__ (for IDEs and mypy) name the same objects as the lazy map."""
    tree = ast.parse((ROOT / "edgeres" / "__init__.py").read_text())
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    seen = {(node.module, alias.asname or alias.name, alias.name)
            for node in ast.walk(block) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert {(module, name, attribute) for name, (module, attribute) in edgeres._LAZY.items()} == seen


def test_public_functions_are_documented_and_typed() -> None:
    for name in ("train", "export", "calibrate", "quantize", "build", "open", "infer", "bench", "check"):
        fn = getattr(edgeres, name)
        assert fn.__doc__ and len(fn.__doc__.strip()) > 40, name
        assert "return" in fn.__annotations__, name


def test_train_refuses_an_existing_checkpoint_and_unknown_settings(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    out.write_bytes(b"an earlier run")
    with pytest.raises(InputError, match="already exists; pass --resume .* or --force"):
        edgeres.train("digits", out=out, epochs=1)
    assert out.read_bytes() == b"an earlier run"
    with pytest.raises(InputError, match="unknown training setting"):
        edgeres.train("digits", out=tmp_path / "new.pt", epochz=1)
    with pytest.raises(InputError, match="not both"):
        edgeres.train("digits", out=tmp_path / "new.pt", config=edgeres.TrainConfig(), epochs=1)


def test_calibrate_writes_beside_the_model_refuses_overwrites_and_checks_the_cache_header_first(
        tiny_onnx: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    with pytest.raises(InputError, match="TensorRT version|version"):  # before any image is read
        edgeres.calibrate(model, images=16, trt_cache=tmp_path / "m.cache", trt_version="banana")
    assert not (tmp_path / "m.ranges.json").exists()
    result = edgeres.calibrate(model, method="minmax", images=16, batch_size=8, trt_cache=tmp_path / "m.cache",
                               quiet=True)
    assert result.path == tmp_path / "m.ranges.json" and result.path.is_file()
    assert result.trt_header.endswith("-MinMaxCalibration")  # the calibrator TensorRT runs for minmax ranges
    assert (tmp_path / "m.cache").read_text().splitlines()[0] == result.trt_header
    summary = result.to_dict()
    assert summary["tensors"] == len(result.ranges.amax) and summary["amax_min"] <= summary["amax_max"]
    before = result.path.read_bytes()
    with pytest.raises(InputError, match="already exists; pass --force"):
        edgeres.calibrate(model, images=16, batch_size=8, quiet=True)
    assert result.path.read_bytes() == before
    with pytest.raises(InputError, match="input of this command"):
        edgeres.calibrate(model, images=16, batch_size=8, out=model, force=True, quiet=True)


def test_quantize_reports_its_qdq_points_and_size(tiny_onnx: Path, tmp_path: Path) -> None:
    ranges = edgeres.calibrate(tiny_onnx, images=16, batch_size=8, out=tmp_path / "r.json", quiet=True)
    result = edgeres.quantize(tiny_onnx, ranges.path, out=tmp_path / "q.onnx")
    import onnx

    nodes = onnx.load(str(result.path)).graph.node
    assert result.qdq_points == sum(n.op_type == "QuantizeLinear" for n in nodes) > 0
    assert result.size_ratio == pytest.approx(result.path.stat().st_size / tiny_onnx.stat().st_size)
    with pytest.raises(InputError, match="input of this command"):
        edgeres.quantize(tiny_onnx, ranges.path, out=ranges.path, force=True)


def test_infer_writes_results_before_strict_refuses_skipped_files(tiny_onnx: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8), 128).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "results.json"
    with pytest.raises(DataError, match="1 unreadable image.* skipped \\(--strict\\)") as info:
        edgeres.infer(tiny_onnx, folder, out=out, strict=True, quiet=True)
    assert len(info.value.result.predictions) == 1
    written = json.loads(out.read_text())  # written before the refusal
    assert len(written["results"]) == 1 and len(written["skipped"]) == 1
    with pytest.raises(InputError, match="must end in .json or .csv"):
        edgeres.infer(tiny_onnx, folder, out=tmp_path / "results.txt")


def test_infer_and_bench_usage_errors_carry_the_cli_usage_exit_status(tiny_onnx: Path, tmp_path: Path) -> None:
    cases = [
        lambda: edgeres.infer(tiny_onnx, tmp_path, server="http://127.0.0.1:9"),
        lambda: edgeres.infer(None, tmp_path),
        lambda: edgeres.infer(tmp_path, tmp_path),
        lambda: edgeres.bench(),
        lambda: edgeres.bench(tiny_onnx, server="http://127.0.0.1:9"),
        lambda: edgeres.bench(tiny_onnx, iterations=2, plot=tmp_path / "p.jpg"),
        lambda: edgeres.bench(server="http://127.0.0.1:9", report=tmp_path / "r.md"),
        lambda: edgeres.bench(server="http://127.0.0.1:9", batches="1,8"),
        lambda: edgeres.bench(server="http://127.0.0.1:9", batches="abc"),
        lambda: edgeres.bench(tiny_onnx, duration_s=1.0, iterations=2),
    ]
    for case in cases:
        with pytest.raises(UsageError) as info:
            case()
        assert info.value.exit_code == 2


def test_environment_report_says_which_backend_auto_picks_here_and_why() -> None:
    report = edgeres.environment_report()
    assert report["backend"]["auto"] == "onnxruntime"  # no TensorRT on this machine
    assert "TensorRT" in report["backend"]["why"] or "tensorrt" in report["backend"]["why"]
    assert report["packages"]["onnxruntime"]["version"]


def test_compare_labels_results_by_what_tells_their_paths_apart(tiny_onnx: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8), 50).save(folder / "a.png")
    paths = []
    for run in ("fp32", "again"):
        (tmp_path / run).mkdir()
        paths.append(tmp_path / run / "results.json")
        edgeres.infer(tiny_onnx, folder, out=paths[-1], quiet=True)
    summaries = edgeres.compare(paths)
    assert list(summaries) == ["fp32/results", "again/results"]  # the same file name: its folder tells them apart
    assert all(s["images"] == 1 for s in summaries.values())


@pytest.mark.slow
def test_serve_artifact_serves_for_the_block_and_infer_through_it_matches_local(tmp_path: Path) -> None:
    from PIL import Image

    from edgeres.serve.triton import group_members
    from helpers.models import make_tiny_onnx

    model = make_tiny_onnx(tmp_path / "tiny.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (40, 36), 40 * i).save(folder / f"{i}.png")
    local = edgeres.infer(model, folder, quiet=True)
    with edgeres.serve_artifact(model, name="tiny", ready_timeout_s=90) as (server, served):
        assert served.tensor_model == "tiny" and server.alive()
        remote = edgeres.infer(images=folder, server=server.http_url, model="tiny", quiet=True)
    assert [p.topk[0][0] for p in remote.predictions] == [p.topk[0][0] for p in local.predictions]
    assert not server.alive() and group_members(server.process.pid) == []  # nothing left running
