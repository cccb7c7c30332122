"""The Triton Inference Server binary that the ``nvidia-pytriton`` wheel bundles, started and stopped as a process.

The wheel ships ``pytriton/tritonserver/bin/tritonserver``, its libraries in ``nvidia_pytriton.libs/`` and the
Python backend with one backend stub per Python version. edgeres drives the binary directly (PyTriton's own Python
proxy is not used): it lays out a private backend folder whose Python backend uses the stub of the running Python,
puts the bundled libraries on ``LD_LIBRARY_PATH`` and starts the server in its own process group, bound to
127.0.0.1 only, so that :meth:`TritonServer.stop` ends the server and every stub it started::

    with TritonServer(repo, ports=Ports.free()) as server:
        print(server.http_url)          # http://127.0.0.1:NNNNN
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgeres.errors import BackendUnavailable, EdgeresError, InputError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # the only address edgeres binds; serving beyond this machine is the container's job
INSTALL_HINT = "install the serve extra: pip install -e '.[serve]' && pip install --no-deps nvidia-pytriton==0.7.0"


class ServerError(EdgeresError):
    """The Triton server could not start, did not become ready, or died."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the bundled server lives."""

    binary: Path
    libs: Path
    python_backend: Path  # libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python version


def find_triton() -> TritonInstall:
    """Locate the Triton server bundled in the ``nvidia-pytriton`` wheel.

    Raises:
        BackendUnavailable: the wheel is not installed, or has no stub for this Python version.
    """
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(f"the Triton server is not installed (no nvidia-pytriton); {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = TritonInstall(binary=root / "bin" / "tritonserver", libs=root.parent.parent / "nvidia_pytriton.libs",
                          python_backend=root / "backends" / "python",
                          stub=root / "python_backend_stubs" / version / "triton_python_backend_stub")
    for what, path in (("server binary", found.binary), ("Python backend", found.python_backend / "libtriton_python.so"),
                       (f"Python {version} backend stub", found.stub)):
        if not path.exists():
            raise BackendUnavailable(f"the Triton install under {root} has no {what} ({path}); {INSTALL_HINT}")
    import ctypes.util

    if ctypes.util.find_library(f"python{version}") is None:  # the stub embeds the system's shared libpython
        raise BackendUnavailable(f"Triton's Python backend stub needs the shared library libpython{version}.so.1.0, "
                                 f"which this system lacks; install it (Debian/Ubuntu: apt-get install "
                                 f"libpython{version})")
    return found


def backend_directory(install: TritonInstall, into: Path) -> Path:
    """A backend folder whose Python backend runs this Python's stub (the wheel's own folder is left untouched)."""
    python = into / "python"
    python.mkdir(parents=True, exist_ok=True)
    targets = {name: install.python_backend / name for name in ("libtriton_python.so", "triton_python_backend_utils.py")}
    targets["triton_python_backend_stub"] = install.stub  # the stub is found beside the backend library
    for name, target in targets.items():
        link = python / name
        if not link.exists():
            link.symlink_to(target)
    return into


@dataclass(frozen=True)
class Ports:
    """The three loopback ports a server listens on."""

    http: int
    grpc: int
    metrics: int

    @classmethod
    def free(cls) -> Ports:
        """Three ports that are free on 127.0.0.1 right now."""
        return cls(*_free_ports(3))

    @classmethod
    def resolve(cls, http: int, grpc: int, metrics: int) -> Ports:
        """The given ports, each 0 replaced by a free one; a port in use is an InputError."""
        wanted = (http, grpc, metrics)
        if len({p for p in wanted if p}) != len([p for p in wanted if p]):
            raise InputError(f"--http-port, --grpc-port and --metrics-port must differ, got {http}, {grpc}, {metrics}")
        spare = iter(_free_ports(3, avoid=set(wanted)))
        chosen = []
        for name, port in zip(("--http-port", "--grpc-port", "--metrics-port"), wanted):
            if port and not _port_free(port):
                raise InputError(f"{name} {port} is in use on {HOST}; pick another port or 0 for any free one")
            chosen.append(port or next(spare))
        return cls(*chosen)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int, avoid: set[int] | None = None) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((HOST, 0))
            port = s.getsockname()[1]
            if port not in (avoid or set()):
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()  # its own process group: stop() signals the server and every stub it started at once
    with contextlib.suppress(Exception):  # Linux: the server gets SIGTERM if edgeres itself dies
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TritonServer:
    """A Triton server process on 127.0.0.1, serving a model repository; a context manager.

    Args:
        repository: the model repository folder.
        ports: where to listen (all on 127.0.0.1).
        log_file: the server's stdout/stderr; None = a temporary file, removed on stop.
        ready_timeout_s: how long :meth:`start` waits for every model to be ready.
        verbose: Triton's ``--log-verbose`` level.
        exit_timeout_s: on stop, how long in-flight requests (and idle keep-alive client connections, which
            Triton also waits for) may hold the server before it unloads its models and exits.
    """

    def __init__(self, repository: str | os.PathLike[str], *, ports: Ports | None = None,
                 log_file: str | os.PathLike[str] | None = None, ready_timeout_s: float = 120.0,
                 verbose: int = 0, exit_timeout_s: int = 3) -> None:
        self.repository = Path(repository)
        self.ports = ports or Ports.free()
        self.ready_timeout_s = ready_timeout_s
        self.verbose = verbose
        self.exit_timeout_s = exit_timeout_s
        self._log_path = Path(log_file) if log_file else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.ports.metrics}/metrics"

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise ServerError("the server has not been started, so it has no log yet")
        return self._log_path

    def command(self, backends: Path) -> list[str]:
        install = find_triton()
        return [str(install.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
                f"--http-address={HOST}", f"--http-port={self.ports.http}",
                f"--grpc-address={HOST}", f"--grpc-port={self.ports.grpc}",
                f"--metrics-address={HOST}", f"--metrics-port={self.ports.metrics}",
                "--allow-sagemaker=false", "--allow-vertex-ai=false", "--model-control-mode=none",
                "--exit-on-error=true", f"--exit-timeout-secs={self.exit_timeout_s}", "--strict-readiness=true", f"--log-verbose={self.verbose}"]

    def start(self) -> TritonServer:
        """Start the server and wait until it and every model in the repository are ready.

        Raises:
            BackendUnavailable: Triton is not installed.
            ServerError: it exited or was not ready within ``ready_timeout_s``; the message quotes its log.
        """
        install = find_triton()
        if not self.repository.is_dir():
            raise InputError(f"model repository {self.repository} is not a folder")
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeres-triton-")
        backends = backend_directory(install, Path(self._tmp.name) / "backends")
        if self._log_path is None:
            self._log_path = Path(self._tmp.name) / "tritonserver.log"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.libs), env.get("LD_LIBRARY_PATH")) if p)
        log.info("starting Triton: %s", " ".join(self.command(backends)))
        with open(self._log_path, "wb") as out:
            self.process = subprocess.Popen(self.command(backends), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=env, preexec_fn=_child_setup)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is None:
                raise ServerError("start() was not called")
            if self.process.poll() is not None:
                raise ServerError(f"Triton exited with code {self.process.returncode} while starting: "
                                  f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ServerError(f"Triton was not ready after {self.ready_timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        """The last error lines of the server log (NVML/DCGM complaints on a GPU-less machine left out)."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, ServerError):
            return "(no log)"
        noise = ("NVML", "DCGM", "CudaDriverHelper", "CUDA driver", "+--", "| ")
        keep = [t for t in text if t.strip() and not any(n in t for n in noise)]
        errors = [t for t in keep if t[:1] == "E" or "error" in t.lower()]
        return " | ".join((errors or keep)[-lines:]) or "(empty log)"

    def processes(self) -> list[int]:
        """Live process ids in the server's process group (the server and its backend stubs)."""
        if self.process is None:
            return []
        return group_members(self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the server and every process in its group: SIGTERM, then SIGKILL after ``timeout_s`` (default:
        the exit timeout plus 15 s for unloading the models)."""
        timeout_s = self.exit_timeout_s + 15.0 if timeout_s is None else timeout_s
        proc = self.process
        if proc is not None:
            pgid = proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("Triton did not stop within %.0f s; killing it", timeout_s)
            deadline = time.monotonic() + 5.0
            while group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)  # stubs notice the server is gone and exit on their own
            if group_members(pgid):
                log.warning("killing what is left of Triton's process group %d", pgid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            deadline = time.monotonic() + 5.0
            while group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) process ids whose process group is ``pgid``, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(entry.name))
    return members

