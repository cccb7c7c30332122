"""The server process wrapper and the serve/infer/bench command lines, without starting a server: the bundled
binary is found, ports are loopback and checked, and every wrong use is a one-line error."""
from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from edgeres.errors import BackendUnavailable, InputError
from edgeres.serve.client import parse_concurrency
from edgeres.serve.triton import HOST, Ports, TritonServer, backend_directory, find_triton
from helpers.models import make_tiny_onnx


def test_the_bundled_server_and_this_pythons_stub_are_found(tmp_path: Path) -> None:
    install = find_triton()
    assert install.binary.name == "tritonserver" and install.binary.stat().st_mode & 0o111
    assert install.stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"  # the stub embeds it
    folder = backend_directory(install, tmp_path / "backends")
    python = folder / "python"
    assert sorted(p.name for p in python.iterdir()) == ["libtriton_python.so", "triton_python_backend_stub",
                                                        "triton_python_backend_utils.py"]
    assert (python / "triton_python_backend_stub").resolve() == install.stub.resolve()


def test_missing_server_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(BackendUnavailable, match="nvidia-pytriton"):
        find_triton()
    art = make_tiny_onnx(tmp_path / "m.onnx")
    res = CliRunner().invoke(cli, ["serve", str(art)])
    assert res.exit_code == 1 and "pip install" in res.output and "Traceback" not in res.output


def test_a_missing_shared_libpython_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes.util

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(BackendUnavailable, match=r"libpython3\.\d+\.so\.1\.0.*apt-get install libpython3"):
        find_triton()


def test_ports_are_loopback_free_and_checked() -> None:
    ports = Ports.free()
    assert len({ports.http, ports.grpc, ports.metrics}) == 3
    server = TritonServer(".", ports=ports)
    assert server.http_url == f"http://127.0.0.1:{ports.http}" and HOST == "127.0.0.1"
    command = server.command(Path("/tmp/backends"))
    assert {f"--http-address={HOST}", f"--grpc-address={HOST}", f"--metrics-address={HOST}"} <= set(command)
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(InputError, match=f"--http-port {taken} is in use"):
            Ports.resolve(taken, 0, 0)
    with pytest.raises(InputError, match="must differ"):
        Ports.resolve(9000, 9000, 0)
    resolved = Ports.resolve(0, 0, 0)
    assert 0 not in (resolved.http, resolved.grpc, resolved.metrics)


def test_concurrency_levels_are_parsed_and_bounded() -> None:
    assert parse_concurrency("1,4,16") == [1, 4, 16]
    for bad in ("", "0", "1,x", "1000"):
        with pytest.raises(InputError, match="--concurrency"):
            parse_concurrency(bad)


def test_command_line_misuse_is_one_line(tmp_path: Path) -> None:
    art = make_tiny_onnx(tmp_path / "m.onnx")
    runner = CliRunner()
    res = runner.invoke(cli, ["infer", str(art)])
    assert res.exit_code == 2 and "Missing argument 'IMAGES'" in res.output
    res = runner.invoke(cli, ["infer", str(tmp_path), str(tmp_path)])
    assert res.exit_code == 2 and "is a folder" in res.output
    res = runner.invoke(cli, ["infer", str(art), str(tmp_path), "--server", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "give only IMAGES" in res.output
    res = runner.invoke(cli, ["infer", str(tmp_path), "--server", "ftp://somewhere"])
    assert res.exit_code == 1 and "http://HOST:PORT" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["bench"])
    assert res.exit_code == 2 and "Missing argument 'ARTIFACT'" in res.output
    res = runner.invoke(cli, ["bench", str(art), "--server", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "not both" in res.output
    res = runner.invoke(cli, ["serve", str(art), "--http-port", "8100", "--grpc-port", "8100"])
    assert res.exit_code == 1 and "must differ" in res.output
