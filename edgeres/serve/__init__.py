"""Serving edgeres artifacts with NVIDIA's Triton Inference Server.

* :mod:`edgeres.serve.repository` — model repositories: :func:`export_triton` for Triton containers,
  :func:`serving_repository` for ``edgeres serve``.
* :mod:`edgeres.serve.config` — ``config.pbtxt`` text, checked against Triton's schema (tritonclient, lazily).
* :mod:`edgeres.serve.triton` — the bundled server binary (nvidia-pytriton wheel), started and stopped.
* :mod:`edgeres.serve.python_model` — the Python-backend models that run an artifact with edgeres's runner.
* :mod:`edgeres.serve.client` — a KServe v2 HTTP client, :class:`RemoteRunner`, and a concurrency benchmark.

Nothing here imports tritonclient or the server at import time.
"""
from __future__ import annotations

from typing import Any

__all__ = ["RemoteRunner", "TritonServer", "bench_server", "export_triton", "serving_repository"]

_WHERE = {"RemoteRunner": "client", "bench_server": "client", "TritonServer": "triton",
          "export_triton": "repository", "serving_repository": "repository"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"edgeres.serve.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'edgeres.serve' has no attribute {name!r}")
