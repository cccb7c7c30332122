"""Fault injection (issue 16, section 2): read-only output folders, a write that fails at byte N, a full disk, and
SIGINT/SIGTERM at several points of train, calibrate, build and bench, each through the real `edgeres` entry point
in a subprocess. For each: no traceback, one `Error:` line, the README's exit code, no temporary file left (in the
output folder or in TMPDIR), no user file changed, and a rerun succeeds."""
from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXIT = {"SIGINT": 130, "SIGTERM": 143}  # the README's codes for an interrupted command
AS_ROOT = os.geteuid() == 0  # root writes into read-only folders: those runs drop to nobody with setpriv


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_files(work: Path) -> dict[str, str]:
    """The inputs every case reads (the model, the checkpoint, the images): they must never change."""
    return {name: digest for name, digest in _snapshot(work).items() if not name.startswith("case-")}


def _leftovers(*folders: Path) -> list[Path]:
    """Temporary files, staging files and lock files edgeres might leave behind."""
    found = []
    for folder in folders:
        for p in folder.rglob("*"):
            if p.name.endswith((".tmp", ".lock")) or ".building" in p.name or p.name.startswith("edgeres-"):
                found.append(p)
    return found


class Cli:
    """Runs ``edgeres ARGS`` in a subprocess with a private TMPDIR, optionally as nobody or with a file-size limit."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.tmpdir = work / "tmpdir"
        self.tmpdir.mkdir(exist_ok=True)
        os.chmod(self.tmpdir, 0o777)

    def command(self, args: list[object], *, unprivileged: bool = False) -> list[str]:
        cmd = [sys.executable, "-c", "import cli; cli.main()", *[str(a) for a in args]]
        if unprivileged and AS_ROOT:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        return cmd

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(self.tmpdir), "HOME": str(self.work),
                "OMP_NUM_THREADS": "1"}

    def run(self, *args: object, fsize: int | None = None, unprivileged: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess:
        def limit() -> None:
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        return subprocess.run(self.command(list(args), unprivileged=unprivileged), cwd=self.work, env=self.env(),
                              capture_output=True, text=True, timeout=timeout, preexec_fn=limit)

    def start(self, *args: object) -> subprocess.Popen:
        return subprocess.Popen(self.command(list(args)), cwd=self.work, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def assert_one_line_failure(res: subprocess.CompletedProcess, *needles: str, exit_code: int = 1) -> None:
    assert res.returncode == exit_code, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def work(tiny_onnx: Path, tiny_checkpoint: Path, digits_slice: Path) -> Iterator[Path]:
    """A folder every user can read (the unprivileged runs need it): the tiny model, its checkpoint and images."""
    work = Path(tempfile.mkdtemp(prefix="edgeres-faults-", dir="/tmp"))
    try:
        shutil.copy(tiny_onnx, work / "m.onnx")
        shutil.copy(tiny_checkpoint, work / "m.pt")
        shutil.copytree(digits_slice, work / "data")
        for p in [work, *work.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def cli_in(work: Path, tmp_path: Path) -> Iterator[Cli]:
    """A fresh case folder inside ``work`` (readable by all), cleaned afterwards."""
    case = Path(tempfile.mkdtemp(dir=work, prefix="case-"))
    os.chmod(case, 0o777)
    yield Cli(case)
    for p in case.rglob("*"):  # a read-only folder must become writable again to be removed
        if p.is_dir():
            os.chmod(p, 0o777)
    shutil.rmtree(case, ignore_errors=True)


# --- read-only output folders -----------------------------------------------------------------------------------

SLOW = pytest.mark.slow  # the same guarantee for one more command: `make test` runs them, `make test-fast` not
READ_ONLY_CASES = [
    pytest.param(["train", "{w}/data", "--out", "{ro}/m.pt", "--epochs", "1", "--threads", "1"], 1, id="train"),
    pytest.param(["export", "{w}/m.pt", "--out", "{ro}/m.onnx"], 1, id="export", marks=SLOW),
    pytest.param(["calibrate", "{w}/m.onnx", "--data", "{w}/data", "--images", "8", "--batch", "4", "--out",
                  "{ro}/r.json"], 1, id="calibrate"),
    pytest.param(["build", "{w}/m.onnx", "--precision", "fp32", "--out", "{ro}/engines"], 1, id="build"),
    pytest.param(["infer", "{w}/m.onnx", "{w}/data/val", "--out", "{ro}/results.json"], 1, id="infer"),
    pytest.param(["bench", "{w}/m.onnx", "--iterations", "2", "--batch", "1", "--out", "{ro}/bench.json"], 1,
                 id="bench", marks=SLOW),
    pytest.param(["check", "{w}/m.onnx", "--baseline", "{ro}/base.json", "--data", "{w}/data/val",
                  "--update-baseline", "--no-latency"], 2, id="check", marks=SLOW),
]


@pytest.mark.parametrize("args, exit_code", READ_ONLY_CASES)
def test_read_only_output_folder_is_refused_before_the_work(args: list[str], exit_code: int, work: Path,
                                                            cli_in: Cli) -> None:
    ro = cli_in.work / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    before = _snapshot(work / "data"), _snapshot(ro)
    start = time.perf_counter()
    res = cli_in.run(*[a.format(w=work, ro=ro) for a in args], unprivileged=True)
    assert_one_line_failure(res, "not writable", str(ro), exit_code=exit_code)
    assert time.perf_counter() - start < 60
    assert "epoch 1/" not in res.stderr and "calibrate (" not in res.stderr  # refused before the work started
    assert (_snapshot(work / "data"), _snapshot(ro)) == before
    assert not _leftovers(cli_in.work, cli_in.tmpdir)
    os.chmod(ro, 0o777)
    if args[0] == "calibrate":  # a rerun once the folder is writable succeeds
        res = cli_in.run(*[a.format(w=work, ro=ro) for a in args], unprivileged=True)
        assert res.returncode == 0, res.stderr[-2000:]


# --- a write that fails at byte N ------------------------------------------------------------------------------

FSIZE_CASES = [
    pytest.param(["train", "{w}/data", "--out", "{o}/m.pt", "--epochs", "1", "--threads", "1"], "m.pt", id="train"),
    pytest.param(["export", "{w}/m.pt", "--out", "{o}/m.onnx"], "m.onnx", id="export", marks=SLOW),
    pytest.param(["calibrate", "{w}/m.onnx", "--data", "{w}/data", "--images", "8", "--batch", "4", "--out",
                  "{o}/r.json", "--method", "minmax"], "r.json", id="calibrate"),
    pytest.param(["build", "{w}/m.onnx", "--precision", "fp32", "--out", "{o}", "--verify-images", "0"],
                 "m.fp32.onnx", id="build"),
    pytest.param(["infer", "{w}/m.onnx", "{w}/data", "--out", "{o}/results.json"], "results.json", id="infer",
                 marks=SLOW),
]


@pytest.mark.parametrize("args, output", FSIZE_CASES)
def test_a_write_failing_at_byte_n_is_one_line_and_leaves_the_old_file(args: list[str], output: str, work: Path,
                                                                       cli_in: Cli) -> None:
    out = cli_in.work / "out"
    out.mkdir()
    (out / output).write_bytes(b"the user's previous version")  # must survive the failed rewrite
    if output == "m.fp32.onnx":
        (out / output).unlink()  # build never replaces a foreign file: start from an empty folder
    argv = [a.format(w=work, o=out) for a in args] + (["--force"] if args[0] in ("train", "export",
                                                                                   "calibrate") else [])
    before = _snapshot(out), _snapshot(work / "data")
    res = cli_in.run(*argv, fsize=2000)  # every file write beyond 2,000 bytes fails (EFBIG)
    assert_one_line_failure(res, "file too large", ": /")  # the cause, then the file
    assert (_snapshot(out), _snapshot(work / "data")) == before
    assert not _leftovers(cli_in.work, cli_in.tmpdir)
    res = cli_in.run(*argv)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / output).read_bytes() != b"the user's previous version"


def test_a_full_disk_is_named_disk_full(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC at byte N of a results file, through a patched writer: `disk full`, the file named, no temp file."""
    from click.testing import CliRunner

    from cli import cli

    real = Path.write_bytes

    def write_fails_at_byte_100(self: Path, data: bytes) -> int:
        real(self, bytes(data)[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    out = tmp_path / "results.json"
    out.write_text("previous")
    monkeypatch.setattr(Path, "write_bytes", write_fails_at_byte_100)
    res = CliRunner().invoke(cli, ["infer", str(work / "m.onnx"), str(work / "data" / "val"), "--out", str(out)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and error[0].startswith("Error: disk full:") and "results.json" in error[0], res.output
    assert out.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# --- SIGINT / SIGTERM ---------------------------------------------------------------------------------------------

_TRAIN = ["train", "{w}/data", "--out", "{o}/m.pt", "--epochs", "40", "--threads", "1"]
SIGNAL_CASES = [
    # command, signal, its arguments, the stderr text that says the work reached the point, extra delay (s)
    pytest.param("train", "SIGTERM", _TRAIN, "epoch 2/", 0.3, id="train-SIGTERM-after-a-checkpoint"),
    pytest.param("calibrate", "SIGINT", ["calibrate", "{w}/m.onnx", "--data", "{w}/data", "--images", "200",
                                         "--batch", "8", "--out", "{o}/r.json"], "calibrate (", 0.0,
                 id="calibrate-SIGINT-while-observing"),
    pytest.param("build", "SIGTERM", ["build", "{w}/m.onnx", "--precision", "int8", "--calib", "{w}/data",
                                      "--calib-images", "200", "--out", "{o}"], "backend onnxruntime", 0.0,
                 id="build-SIGTERM-while-calibrating"),
    pytest.param("bench", "SIGTERM", ["bench", "{w}/m.onnx", "--duration", "20s", "--warmup", "0", "--batch",
                                      "1,8", "--out", "{o}/bench.json"], "bench m.onnx", 0.2,
                 id="bench-SIGTERM-while-timing"),
    pytest.param("train", "SIGINT", _TRAIN, "epoch 1/", 0.0, id="train-SIGINT-in-the-first-epoch", marks=SLOW),
    pytest.param("build", "SIGINT", ["build", "{w}/m.onnx", "--precision", "fp16", "--out", "{o}",
                                     "--verify-images", "200", "--calib", "{w}/data"], "built ", 0.0,
                 id="build-SIGINT-while-verifying", marks=SLOW),
    pytest.param("bench", "SIGINT", ["bench", "{w}/m.onnx", "--duration", "20s", "--warmup", "0", "--batch",
                                     "1,8", "--out", "{o}/bench.json"], "bench m.onnx", 0.2,
                 id="bench-SIGINT-while-timing", marks=SLOW),
]


def _wait_for(proc: subprocess.Popen, marker: str, timeout: float = 90) -> str:
    """Read stderr until ``marker`` shows (the work has reached that point)."""
    import selectors

    seen = ""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, f"{marker!r} never appeared: {seen[-2000:]}"
        assert proc.poll() is None, f"finished before {marker!r}: {seen[-2000:]}"
        if sel.select(timeout=0.5):
            seen += os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
    return seen


@pytest.mark.parametrize("name, sig, args, marker, delay", SIGNAL_CASES)
def test_an_interrupt_cleans_up_and_a_rerun_succeeds(name: str, sig: str, args: list[str], marker: str,
                                                     delay: float, work: Path, cli_in: Cli) -> None:
    out = cli_in.work / "out"
    out.mkdir()
    argv = [a.format(w=work, o=out) for a in args]
    before = _user_files(work)
    proc = cli_in.start(*argv)
    try:
        seen = _wait_for(proc, marker)
        time.sleep(delay)
        proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = seen + stderr
    assert proc.returncode == EXIT[sig], (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert [line for line in stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: interrupted ({sig}); no partial output was left"], stderr[-2000:]
    assert not _leftovers(cli_in.work, cli_in.tmpdir), _leftovers(cli_in.work, cli_in.tmpdir)
    assert _user_files(work) == before  # no user file changed
    if name == "train":  # a checkpoint, when there is one, is a whole finished epoch that --resume continues
        if (out / "m.pt").exists():
            res = cli_in.run(*argv[:-4], "--epochs", str(_epochs_in(out / "m.pt") + 1), "--resume")
            assert res.returncode == 0, res.stderr[-2000:]
        return
    short = {"calibrate": ["--images", "16"], "build": ["--calib-images", "16", "--verify-images", "4"],
             "bench": ["--duration", "200ms"]}[name]
    res = cli_in.run(*argv, *short, "--force" if name in ("calibrate", "build") else "--batch=1")
    assert res.returncode == 0, res.stderr[-2000:]


def _epochs_in(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"])
