"""A small KServe v2 (Triton) HTTP client, a runner that infers through a server, and a concurrency benchmark.

Standard library only (``http.client``), one keep-alive connection per thread, tensors sent and received with
Triton's binary-data extension. :class:`RemoteRunner` satisfies edgeres's runner contract, so ``infer_folder``
and ``bench`` report a served model exactly as they report a local one::

    client = TritonClient("http://127.0.0.1:8000")
    logits = client.infer("model_fp32", batch)                    # (N, classes) float32
    top = client.classify("model_fp32_image", open("cat.jpg", "rb").read(), top_k=5)
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edgeres.backends.base import BatchProfile, StageTimes
from edgeres.card import ModelCard
from edgeres.errors import EdgeresError, InputError

_DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64,
           "FP64": np.float64, "INT8": np.int8}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class ServerRequestError(EdgeresError):
    """The server answered a request with an error (``status`` is the HTTP status), or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _split_url(url: str) -> tuple[str, int, str]:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme != "http" or not parsed.hostname:
        raise InputError(f"--server must be an http://HOST:PORT URL, got {url!r}")
    return parsed.hostname, parsed.port or 80, parsed.path.rstrip("/")


class TritonClient:
    """KServe v2 over HTTP to one server. Thread-safe: each thread keeps its own connection."""

    def __init__(self, url: str, *, timeout_s: float = 60.0) -> None:
        self.url = url
        self.host, self.port, self.prefix = _split_url(url)
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange; a dropped keep-alive connection is reopened once."""
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, self.prefix + path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt:
                    raise ServerRequestError(f"cannot reach the server at {self.url} ({exc}); is "
                                             "`edgeres serve` running there?") from None
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        status, _, data = self.request("GET", path)
        if status != 200:
            raise ServerRequestError(f"GET {path}: {_error_text(data)} (HTTP {status})", status=status)
        return json.loads(data)

    def ready(self) -> bool:
        try:
            return self.request("GET", "/v2/health/ready")[0] == 200
        except ServerRequestError:
            return False

    def server_metadata(self) -> dict[str, Any]:
        """The server's KServe v2 metadata: ``{"name": "triton", "version": "2.51.0", "extensions": [...]}``."""
        return self.get_json("/v2")

    def model_config(self, model: str) -> dict[str, Any]:
        return self.get_json(f"/v2/models/{urllib.parse.quote(model)}/config")

    def statistics(self, model: str) -> dict[str, Any]:
        """The model's ``model_stats`` entry (inference_count, execution_count, batch_stats, ...)."""
        stats = self.get_json(f"/v2/models/{urllib.parse.quote(model)}/stats")["model_stats"]
        return stats[0] if stats else {}

    def models(self) -> list[dict[str, Any]]:
        status, _, data = self.request("POST", "/v2/repository/index", b"{}")
        if status != 200:
            raise ServerRequestError(f"cannot list the server's models: {_error_text(data)}", status=status)
        return json.loads(data)

    def infer_raw(self, model: str, inputs: Sequence[tuple[str, np.ndarray]], outputs: Sequence[str],
                  *, datatypes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """Send tensors (binary extension) and return the named outputs as arrays."""
        header: dict[str, Any] = {"inputs": [], "outputs": [{"name": o, "parameters": {"binary_data": True}}
                                                            for o in outputs]}
        blobs = []
        for name, array in inputs:
            array = np.ascontiguousarray(array)
            datatype = (datatypes or {}).get(name) or _NAMES.get(array.dtype)
            if datatype is None:
                raise InputError(f"cannot send a {array.dtype} tensor; use one of {', '.join(_DTYPES)}")
            blob = array.tobytes()
            header["inputs"].append({"name": name, "shape": list(array.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        head = json.dumps(header).encode()
        status, headers, data = self.request(
            "POST", f"/v2/models/{urllib.parse.quote(model)}/infer", head + b"".join(blobs),
            {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
        if status != 200:
            raise ServerRequestError(f"model {model!r}: {_error_text(data)} (HTTP {status})", status=status)
        return _parse_outputs(headers, data)

    def infer(self, model: str, batch: np.ndarray, *, input_name: str = "input",
              output_name: str = "logits") -> np.ndarray:
        """Run an FP32 batch through the tensor model; returns its logits."""
        return self.infer_raw(model, [(input_name, batch)], [output_name])[output_name]

    def classify(self, model: str, image: bytes, *, top_k: int = 5) -> list[tuple[str, float]]:
        """Top-k ``(label, probability)`` of one encoded image through the image model, best first."""
        body = {"inputs": [{"name": "image", "shape": [1, len(image)], "datatype": "UINT8",
                            "parameters": {"binary_data_size": len(image)}}],
                "outputs": [{"name": "probabilities", "parameters": {"classification": top_k}}]}
        head = json.dumps(body).encode()
        status, _, data = self.request(
            "POST", f"/v2/models/{urllib.parse.quote(model)}/infer", head + image,
            {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
        if status != 200:
            raise ServerRequestError(f"model {model!r}: {_error_text(data)} (HTTP {status})", status=status)
        out = json.loads(data)["outputs"][0]["data"]
        top = []
        for entry in out:
            prob, _, label = str(entry).split(":", 2)
            top.append((label, float(prob)))
        return top


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", data[:200].decode(errors="replace")))
    except (ValueError, AttributeError):
        return data[:200].decode(errors="replace") or "(empty answer)"


def _parse_outputs(headers: dict[str, str], data: bytes) -> dict[str, np.ndarray]:
    size = int(headers.get("inference-header-content-length", len(data)))
    body = json.loads(data[:size])
    offset, out = size, {}
    for o in body.get("outputs", []):
        dtype = _DTYPES.get(o["datatype"])
        nbytes = o.get("parameters", {}).get("binary_data_size")
        if dtype is None:
            raise ServerRequestError(f"output {o['name']!r} has unsupported type {o['datatype']}")
        if nbytes is None:
            array = np.asarray(o["data"], dtype=dtype)
        else:
            array = np.frombuffer(data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=offset)
            offset += nbytes
        out[o["name"]] = array.reshape(o["shape"])
    return out


def edgeres_models(client: TritonClient) -> list[str]:
    """Names of the tensor models ``edgeres serve`` put on a server."""
    names = []
    for entry in client.models():
        if entry.get("state", "READY") != "READY":
            continue
        params = client.model_config(entry["name"]).get("parameters", {})
        if params.get("edgeres_role", {}).get("string_value") == "tensor":
            names.append(entry["name"])
    return names


class RemoteRunner:
    """A runner whose ``infer`` goes through a server's tensor model (edgeres's runner contract).

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        model: the tensor model's name; None = the only edgeres tensor model on the server.
    """

    def __init__(self, url: str, model: str | None = None, *, timeout_s: float = 60.0) -> None:
        self.client = TritonClient(url, timeout_s=timeout_s)
        if model is None:
            found = edgeres_models(self.client)
            if len(found) != 1:
                raise InputError(f"{url} serves {len(found)} edgeres models ({', '.join(found) or 'none'}); "
                                 "name one with --model")
            model = found[0]
        self.model = model
        config = self.client.model_config(model)
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        if "edgeres_card" not in params:
            raise InputError(f"model {model!r} on {url} was not put there by `edgeres serve` (no model card)")
        self.card = ModelCard.from_json(params["edgeres_card"])
        low = BatchProfile.parse(params.get("edgeres_profile", "1:1:1")).min
        high = int(config.get("max_batch_size") or 1)
        self.profile = BatchProfile(min(low, high), min(low, high), high)
        self.backend = f"triton/{params.get('edgeres_backend', '?')}"
        self.precision = params.get("edgeres_precision", "?")
        # the served artifact's identity as `edgeres serve` recorded it ("" from a repository of an older edgeres)
        self.artifact_sha256 = params.get("edgeres_artifact_sha256", "")
        self.model_sha256 = params.get("edgeres_model_sha256", "")
        groups = config.get("instance_group") or [{}]
        self.instance_kind = str(groups[0].get("kind", "KIND_CPU"))
        self.threads = None
        self.last_stage_times: StageTimes | None = None

    def __enter__(self) -> RemoteRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        logits = self.client.infer(self.model, np.asarray(batch, dtype=np.float32),
                                   input_name=self.card.input_name, output_name=self.card.output_name)
        self.last_stage_times = StageTimes(compute_ms=(time.perf_counter() - t0) * 1e3,
                                           total_ms=(time.perf_counter() - t0) * 1e3)
        return logits


@dataclass
class LoadLevel:
    """One concurrency level of :func:`bench_server`."""

    concurrency: int
    requests: int
    errors: int
    wall_s: float
    latency: Any  # LatencyStats
    throughput: float  # requests/s
    images_per_s: float
    executions: int  # server-side model executions during the level (fewer than requests: it batched)

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "requests": self.requests, "errors": self.errors,
                "wall_s": round(self.wall_s, 4), "latency_ms": self.latency.to_dict(),
                "throughput": round(self.throughput, 3), "images_per_s": round(self.images_per_s, 3),
                "server_executions": self.executions,
                "mean_server_batch": round(self.requests / self.executions, 3) if self.executions else None}


@dataclass
class ServerBenchResult:
    url: str
    model: str
    batch: int
    levels: list[LoadLevel] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "edgeres.bench.server", "url": self.url, "model": self.model, "batch": self.batch,
                "settings": self.settings, "levels": [lv.to_dict() for lv in self.levels]}

    def write_json(self, path: Any) -> Any:
        from edgeres.io import write_json_atomic

        return write_json_atomic(path, self.to_dict())


def parse_concurrency(text: str | Sequence[int]) -> list[int]:
    values = text if not isinstance(text, str) else [p for p in text.split(",") if p.strip()]
    try:
        levels = [int(v) for v in values]
    except ValueError:
        raise InputError(f"--concurrency must be comma-separated integers, got {text!r}") from None
    if not levels or any(v < 1 or v > 256 for v in levels):
        raise InputError(f"--concurrency levels must be in 1..256, got {text!r}")
    return levels


def run_load(client: TritonClient, model: str, batch: np.ndarray, *, concurrency: int, requests: int | None = None,
             duration_s: float | None = None, card: ModelCard | None = None) -> tuple[list[float], int, float,
                                                                                       list[np.ndarray]]:
    """``concurrency`` threads send ``batch`` until ``requests`` in total (or ``duration_s``) are done.

    Returns:
        (latencies in ms, errors, wall seconds, the outputs in completion order).
    """
    if (requests is None) == (duration_s is None):
        raise InputError("give requests or a duration, not both")
    lock = threading.Lock()
    state = {"left": requests if requests is not None else 1 << 62, "errors": 0}
    latencies: list[float] = []
    outputs: list[np.ndarray] = []
    deadline = time.perf_counter() + (duration_s or 0.0)
    names = (card.input_name, card.output_name) if card else ("input", "logits")

    def worker() -> None:
        local = TritonClient(client.url, timeout_s=client.timeout_s)
        try:
            while True:
                with lock:
                    if state["left"] <= 0 or (duration_s is not None and time.perf_counter() >= deadline):
                        return
                    state["left"] -= 1
                t0 = time.perf_counter()
                try:
                    out = local.infer(model, batch, input_name=names[0], output_name=names[1])
                except ServerRequestError:
                    with lock:
                        state["errors"] += 1
                    continue
                ms = (time.perf_counter() - t0) * 1e3
                with lock:
                    latencies.append(ms)
                    outputs.append(out)
        finally:
            local.close()

    threads = [threading.Thread(target=worker, name=f"edgeres-load-{i}") for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, state["errors"], time.perf_counter() - start, outputs


def bench_server(url: str, *, model: str | None = None, concurrency: str | Sequence[int] = (1, 4, 16),
                 batch: int = 1, duration_s: float | None = 5.0, requests: int | None = None,
                 warmup_s: float = 1.0) -> ServerBenchResult:
    """Latency percentiles and throughput of a served model at several client concurrencies.

    Args:
        url: the server.
        model: the tensor model; None = the only edgeres model there.
        concurrency: client threads per level, each with its own connection, one request in flight each.
        batch: images per request.
        duration_s: timed wall time per level (ignored when ``requests`` is given).
        requests: total requests per level instead of a duration.
        warmup_s: untimed load before each level.
    """
    from edgeres.benchmarking import input_batch
    from edgeres.timing import summarize, throughput

    levels = parse_concurrency(concurrency)
    with RemoteRunner(url, model) as runner:  # its connection is closed on every way out
        if not runner.profile.min <= batch <= runner.profile.max:
            raise InputError(f"--batch {batch} is outside the served model's batch range "
                             f"{runner.profile.min}..{runner.profile.max}")
        x = input_batch(runner.card, batch)
        result = ServerBenchResult(url=url, model=runner.model, batch=batch,
                                   settings={"concurrency": levels, "duration_s": duration_s, "requests": requests,
                                             "warmup_s": warmup_s, "latency": "client wall time per request"})
        for c in levels:
            if warmup_s > 0:
                run_load(runner.client, runner.model, x, concurrency=c, duration_s=warmup_s, card=runner.card)
            before = runner.client.statistics(runner.model).get("execution_count", 0)
            lat, errors, wall, _ = run_load(runner.client, runner.model, x, concurrency=c, card=runner.card,
                                            requests=requests, duration_s=None if requests else duration_s)
            after = runner.client.statistics(runner.model).get("execution_count", 0)
            if not lat:
                raise ServerRequestError(f"every request at concurrency {c} failed ({errors} errors)")
            qps = throughput(len(lat), wall)
            result.levels.append(LoadLevel(c, len(lat), errors, wall, summarize(lat), qps, qps * batch,
                                           int(after) - int(before)))
    return result


def server_bench_table(result: ServerBenchResult) -> str:
    """One row per concurrency: requests, errors, latency percentiles, throughput, server batching."""
    from edgeres.timing import format_table

    rows = []
    for lv in result.levels:
        s = lv.latency
        batched = f"{lv.requests / lv.executions:.2f}" if lv.executions else "-"
        rows.append([str(lv.concurrency), str(lv.requests), str(lv.errors),
                     *(f"{v:.2f}" for v in (s.min, s.median, s.p90, s.p99, s.max)),
                     f"{lv.throughput:.1f}", f"{lv.images_per_s:.1f}", batched])
    head = f"{result.model} at {result.url}, batch {result.batch} per request"
    return head + "\n" + format_table(["clients", "n", "errors", "min", "p50", "p90", "p99", "max", "req/s",
                                       "img/s", "req/exec"], rows)
