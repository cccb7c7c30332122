"""A real Triton server (the nvidia-pytriton wheel's binary) serving a tiny artifact on free loopback ports:
bounded concurrent load answered exactly as the local runner answers, dynamic batching seen in the server's own
statistics, malformed requests refused with a 4xx while the server keeps serving, the image model, the
`--server` clients, and shutdown that leaves no server or stub process behind (also after a client crash and
after `edgeres serve` itself is terminated or killed)."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from edgeres import backends
from edgeres.backends import BatchProfile
from edgeres.serve.client import RemoteRunner, ServerRequestError, TritonClient
from edgeres.serve.repository import serving_repository
from edgeres.serve.triton import Ports, TritonServer, group_members
from helpers.models import TINY_CLASSES, make_tiny_onnx

pytestmark = pytest.mark.slow

CLIENTS, REQUESTS = 32, 50  # the bounded load: 1,600 requests
TOL = 1e-4  # batching changes ONNX Runtime's summation order a little; anything larger is a wrong answer


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("served")
    tiny = make_tiny_onnx(folder / "tiny.onnx")
    return backends.build(tiny, backend="onnxruntime", precision="fp32", out=folder / "tiny.fp32.onnx",
                          profile=BatchProfile(1, 8, 16))


def _start(artifact: Path, repo: Path, **kw) -> TritonServer:
    serving_repository(artifact, repo, name="tiny", **kw)
    for attempt in range(2):  # a free port can be taken between choosing it and binding it
        server = TritonServer(repo, ports=Ports.free(), ready_timeout_s=90)
        try:
            return server.start()
        except Exception:
            if attempt:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = _start(artifact, tmp_path_factory.mktemp("repo") / "models", max_queue_delay_us=2000)
    yield srv
    srv.stop()
    assert group_members(srv.process.pid) == []


@pytest.fixture(scope="module")
def local(artifact: Path):
    with backends.open(artifact) as runner:
        yield runner


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32), dtype=np.float32)


def _png(seed: int, size: tuple[int, int] = (40, 36)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_concurrent_load_equals_the_local_runner_and_is_batched(server: TritonServer, local) -> None:
    pool = _images(64)
    reference = local.infer(pool[:16])
    reference = np.concatenate([reference, local.infer(pool[16:32]), local.infer(pool[32:48]),
                                local.infer(pool[48:])])
    client = TritonClient(server.http_url)
    before = client.statistics("tiny")
    answers: dict[tuple[int, int], np.ndarray] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def work(c: int) -> None:
        mine = TritonClient(server.http_url, timeout_s=60)
        for r in range(REQUESTS):
            first = (c * REQUESTS + r) % 63
            n = 1 + (c + r) % 2  # requests of 1 and 2 images, so batches mix request sizes
            try:
                out = mine.infer("tiny", pool[first:first + n])
            except ServerRequestError as exc:
                with lock:
                    failures.append(str(exc))
                continue
            with lock:
                answers[c, r] = out
        mine.close()

    threads = [threading.Thread(target=work, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert len(answers) == CLIENTS * REQUESTS  # none lost
    worst = 0.0
    for (c, r), out in answers.items():
        first = (c * REQUESTS + r) % 63
        n = 1 + (c + r) % 2
        assert out.shape == (n, len(TINY_CLASSES))
        worst = max(worst, float(np.abs(out - reference[first:first + n]).max()))
    assert worst < TOL
    after = client.statistics("tiny")
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == sum(1 + (c + r) % 2 for c in range(CLIENTS) for r in range(REQUESTS))  # images, server side
    assert executions < CLIENTS * REQUESTS / 2  # the dynamic batcher merged requests: at least 2 per execution
    assert max(b["batch_size"] for b in after["batch_stats"]) > 2


@pytest.mark.parametrize("bad, status, message", [
    (lambda c, x: c.infer("tiny", x.astype(np.float64)), 400, "data-type is 'FP64', but model 'tiny' expects 'FP32'"),
    (lambda c, x: c.infer("tiny", x[:, :, :16]), 400, "unexpected shape for input 'input'"),
    (lambda c, x: c.infer("tiny", np.zeros((17, 1, 32, 32), np.float32)), 400, "batch-size must be <= 16"),
    (lambda c, x: c.classify("tiny_image", b"GIF89a not really"), 400, "not an image Pillow can read"),
    (lambda c, x: c.classify("tiny_image", b""), 400, "the image is empty (0 bytes)"),
    (lambda c, x: c.infer("no_such_model", x), 404, "unknown model: 'no_such_model'"),
    (lambda c, x: c.infer("tiny", x, input_name="pixels"), 400, "unexpected inference input 'pixels'"),
], ids=["dtype", "shape", "batch-over-max", "garbage-image", "empty-image", "unknown-model", "unknown-input"])
def test_malformed_requests_get_a_4xx_and_the_server_keeps_serving(server: TritonServer, local, bad, status,
                                                                    message) -> None:
    client = TritonClient(server.http_url)
    pids = sorted(server.processes())
    x = _images(2, seed=5)
    with pytest.raises(ServerRequestError) as err:
        bad(client, x)
    assert err.value.status == status and message in str(err.value)
    assert np.abs(client.infer("tiny", x) - local.infer(x)).max() < TOL  # still serving, correctly
    assert sorted(server.processes()) == pids  # no stub crashed or was restarted


def test_a_body_that_is_not_json_is_refused_and_the_server_keeps_serving(server: TritonServer, local) -> None:
    client = TritonClient(server.http_url)
    status, _, data = client.request("POST", "/v2/models/tiny/infer", b"{not json")
    # Triton 2.51's HTTP frontend answers an unparsable body with 500 (its own choice, not the model's)
    assert status >= 400 and "JSON" in json.loads(data)["error"]
    x = _images(1, seed=7)
    assert np.abs(client.infer("tiny", x) - local.infer(x)).max() < TOL


def test_image_model_answers_top_k_like_local_preprocessing(server: TritonServer, local, tmp_path: Path) -> None:
    from edgeres.data import load_image
    from edgeres.inference import softmax

    client = TritonClient(server.http_url)
    for seed in range(3):
        path = tmp_path / f"{seed}.png"
        path.write_bytes(_png(seed))
        probs = softmax(local.infer(load_image(path, local.card.preprocess)[None]).astype(np.float64))[0]
        order = np.argsort(-probs, kind="stable")[:3]
        top = client.classify("tiny_image", path.read_bytes(), top_k=3)
        assert [label for label, _ in top] == [TINY_CLASSES[i] for i in order]
        assert np.allclose([p for _, p in top], probs[order], atol=1e-4)


def test_concurrent_images_of_different_sizes_batch_together(server: TritonServer, local, tmp_path: Path) -> None:
    from edgeres.data import load_image

    files = []
    for seed in range(8):  # 8 PNGs of different byte lengths: a ragged batch
        path = tmp_path / f"{seed}.png"
        path.write_bytes(_png(100 + seed, (32 + 3 * seed, 40)))
        files.append(path)
    assert len({p.stat().st_size for p in files}) == len(files)
    expected = [TINY_CLASSES[int(np.argmax(local.infer(load_image(p, local.card.preprocess)[None])[0]))]
                for p in files]
    client = TritonClient(server.http_url)
    before = client.statistics("tiny_image")
    got: dict[tuple[int, int], str] = {}
    rounds = threading.Barrier(8, timeout=60)  # each round's 8 requests reach the batcher together

    def work(c: int) -> None:
        mine = TritonClient(server.http_url)
        for r in range(4):
            data = files[(c + r) % 8].read_bytes()
            rounds.wait()
            got[c, r] = mine.classify("tiny_image", data, top_k=1)[0][0]
        mine.close()

    threads = [threading.Thread(target=work, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == {(c, r): expected[(c + r) % 8] for c in range(8) for r in range(4)}
    after = client.statistics("tiny_image")
    assert after["inference_count"] - before["inference_count"] == 32
    assert after["execution_count"] - before["execution_count"] < 32  # ragged requests were batched


def test_infer_and_bench_through_the_server_report_like_local(server: TritonServer, artifact: Path,
                                                              tmp_path: Path) -> None:
    images = tmp_path / "val"
    for i, name in enumerate(TINY_CLASSES[:3]):
        (images / name).mkdir(parents=True)
        for j in range(3):
            (images / name / f"{j}.png").write_bytes(_png(10 * i + j))
    runner = CliRunner()
    res_local = runner.invoke(cli, ["-q", "infer", str(artifact), str(images), "--batch", "4", "--json"])
    res_remote = runner.invoke(cli, ["-q", "infer", str(images), "--server", server.http_url, "--batch", "4",
                                     "--json"])
    assert res_local.exit_code == 0 and res_remote.exit_code == 0, res_remote.output
    here, there = json.loads(res_local.output), json.loads(res_remote.output)
    assert [r["topk"][0]["label"] for r in here["results"]] == [r["topk"][0]["label"] for r in there["results"]]
    assert there["summary"]["accuracy"] == here["summary"]["accuracy"]
    assert there["summary"]["backend"] == "triton/onnxruntime" and there["summary"]["images"] == 9
    assert set(there["summary"]["latency_ms"]) >= {"inference", "preprocess"}
    table = runner.invoke(cli, ["-q", "infer", str(images), "--server", server.http_url])
    assert table.exit_code == 0 and "accuracy top-1" in table.output

    out = tmp_path / "bench.json"
    res = runner.invoke(cli, ["-q", "bench", "--server", server.http_url, "--concurrency", "1,4", "--duration",
                              "300ms", "--warmup", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert re.search(r"^\s*4\s+\d+\s+0\s", res.output, re.M)  # the concurrency-4 row, no errors
    levels = json.loads(out.read_text())["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4] and all(lv["requests"] > 0 for lv in levels)
    assert levels[1]["latency_ms"]["p99"] >= levels[1]["latency_ms"]["median"] > 0


def test_client_errors_are_one_line(server: TritonServer, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["infer", str(tmp_path), "--server", server.http_url, "--model", "nope"])
    assert res.exit_code == 1 and "'nope'" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["bench", "--server", "http://127.0.0.1:9", "--duration", "100ms"])
    assert res.exit_code == 1 and "cannot reach the server" in res.output


_CRASHING_CLIENT = """
import sys, threading, numpy as np
sys.path.insert(0, {root!r})
from edgeres.serve.client import TritonClient
url = sys.argv[1]
x = np.zeros((2, 1, 32, 32), np.float32)
def load():
    c = TritonClient(url)
    for _ in range(2000):  # bounded; the test kills the process long before
        c.infer("tiny", x)
for _ in range(8):
    threading.Thread(target=load, daemon=True).start()
print("loading", flush=True)
threading.Event().wait(30)
"""


def test_stop_leaves_no_process_even_after_a_client_crashed_mid_load(artifact: Path, local, tmp_path: Path) -> None:
    srv = _start(artifact, tmp_path / "models", instances=2)
    try:
        pids = srv.processes()
        assert len(pids) >= 5  # the server, and one stub per instance of each of the two models
        client = subprocess.Popen([sys.executable, "-c", _CRASHING_CLIENT.format(root=str(Path.cwd())),
                                   srv.http_url], stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "loading"
        time.sleep(1.0)
        client.kill()  # mid-load: connections drop with requests in flight
        client.wait(timeout=10)
        x = _images(3, seed=9)
        assert np.abs(TritonClient(srv.http_url).infer("tiny", x) - local.infer(x)).max() < TOL
        assert sorted(srv.processes()) == sorted(pids)
    finally:
        srv.stop()
    assert group_members(srv.process.pid) == []
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def _serve(artifact: Path) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([sys.executable, "-m", "cli", "-q", "serve", str(artifact), "--http-port", "0",
                             "--grpc-port", "0", "--metrics-port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=Path.cwd())
    url = pid = None
    deadline = time.monotonic() + 120
    while (url is None or pid is None) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("HTTP"):
            url = line.split()[1]
        if line.startswith("process"):
            pid = int(line.split()[1])
    assert url and pid, "edgeres serve did not print its endpoints"
    assert url.startswith("http://127.0.0.1:")
    return proc, url, pid


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_edgeres_serve_ends_with_its_server(artifact: Path, local, how: signal.Signals) -> None:
    proc, url, pgid = _serve(artifact)
    try:
        x = _images(2, seed=3)
        assert np.abs(TritonClient(url).infer("tiny_fp32", x) - local.infer(x)).max() < TOL
        assert len(group_members(pgid)) >= 3
        proc.send_signal(how)
        code = proc.wait(timeout=60)
        assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        deadline = time.monotonic() + 30  # after SIGKILL the server gets SIGTERM from the kernel (PDEATHSIG)
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(pgid) == []
        assert not TritonClient(url, timeout_s=2).ready()
    finally:
        if proc.poll() is None:
            proc.kill()
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
