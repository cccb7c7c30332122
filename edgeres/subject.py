"""What the regression gate measures: an artifact file opened here, or a model that ``edgeres serve`` serves.

:func:`open_subject` opens either and says what it is (:class:`edgeres.benchmarking.ArtifactInfo` for baseline
matching, and the environment record). A served model's identity comes from what the served repository recorded
in the model's config (the artifact's and its source model's sha256, backend, precision, card) and from the server
(Triton's version, its host, the instance kind); its backend is ``triton/<backend>``, so a baseline of the same
artifact run here is another measurement (latency through a server includes the network and the server's queue).
:func:`served_side_by_side` finds the baseline's served model on the same server, for timing the two side by side.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeres.backends.base import Runner
from edgeres.baseline import Baseline
from edgeres.benchmarking import ArtifactInfo, describe_artifact, runner_environment
from edgeres.environment import Environment, collect
from edgeres.errors import EdgeresError, GateInputError


def open_runner(artifact: str | Path, threads: int | None, *, spinning: bool = True) -> Runner:
    """A local runner for ``artifact`` (the gate's, or the baseline's artifact timed side by side)."""
    from edgeres import backends

    return backends.open(artifact, threads=threads, spinning=spinning)


@dataclass
class Subject:
    """What the gate measures: an artifact opened here (``artifact`` set), or a model that ``edgeres serve``
    serves (``server`` set; ``runner`` is then a :class:`edgeres.serve.client.RemoteRunner`)."""

    runner: Runner
    info: ArtifactInfo
    environment: Environment
    artifact: Path | None = None
    server: str | None = None

    @property
    def served(self) -> bool:
        return self.artifact is None

    @property
    def label(self) -> str:
        return str(self.artifact) if self.artifact is not None else self.info.path


def refuse_bad_subject(artifact: str | Path | None, *, server: str | None, model: str | None) -> None:
    """Exactly one of ARTIFACT and --server, and --model only with --server (checked before any file is read)."""
    if (artifact is None) == (server is None):
        raise GateInputError("give ARTIFACT or --server URL (with --model NAME when it serves several), not both"
                             if artifact is not None else "nothing to check: give ARTIFACT or --server URL")
    if artifact is not None and model is not None:
        raise GateInputError("--model names a served model; it goes with --server URL, not with ARTIFACT")


def open_subject(artifact: str | Path | None, *, server: str | None, model: str | None, runner: Runner | None,
                 threads: int | None, spinning: bool, stack: contextlib.ExitStack) -> Subject:
    """Open what is gated (entered on ``stack``, unless ``runner`` is given) and describe its identity."""
    refuse_bad_subject(artifact, server=server, model=model)
    if artifact is not None:
        if runner is None:
            runner = stack.enter_context(open_runner(artifact, threads, spinning=spinning))
        info = describe_artifact(artifact, runner=runner)
        return Subject(runner, info, runner_environment(runner, info), artifact=Path(artifact))
    if runner is None:
        from edgeres.serve.client import RemoteRunner

        runner = stack.enter_context(RemoteRunner(server, model))
    info, environment = served_identity(runner)
    return Subject(runner, info, environment, server=server)


def served_identity(runner: Any) -> tuple[ArtifactInfo, Environment]:
    """The identity of a served model, from what ``edgeres serve`` recorded in its config (the artifact's and its
    source model's sha256, backend, precision, card) and from the server (Triton's version, its host, the
    instance kind). The backend is ``triton/<backend>``, so a baseline of the artifact run here is another
    thing: its latency was not measured through a server.

    Raises:
        GateInputError: the served model records no artifact sha256 (a repository of an older edgeres).
    """
    if not runner.artifact_sha256:
        raise GateInputError(f"model {runner.model!r} at {runner.client.url} records no artifact sha256 (served by "
                             "an older edgeres), so a baseline cannot be matched with it; restart `edgeres serve`")
    client = runner.client
    url = f"http://{client.host}:{client.port}{client.prefix}/v2/models/{runner.model}"
    info = ArtifactInfo(url, runner.artifact_sha256, runner.model_sha256 or runner.artifact_sha256, runner.backend,
                        runner.precision, runner.card.arch)
    meta = client.server_metadata()
    kind = str(runner.instance_kind).removeprefix("KIND_").lower()
    environment = collect(backend=runner.backend, backend_version=f"{meta.get('name', 'triton')} "
                                                                  f"{meta.get('version', '?')}",
                          gpu=False, artifact_sha256=info.sha256)
    return info, dataclasses.replace(environment, device=f"Triton at {client.host} ({kind} instances)")


def served_reference(subject: Subject, reference: Path, *, allow_mismatch: bool) -> list[str]:
    """Refuse a ``--reference`` that is not the FP32 model the served artifact was made from (by the source
    sha256 the served model records), or note it with ``allow_mismatch``."""
    from edgeres.provenance import source_sha256

    ref_src, _ = source_sha256(reference)
    if ref_src is None or ref_src == subject.info.model_sha256:
        return []
    problem = (f"--reference {reference} is not the model {subject.label} was built from (source sha256 "
               f"{subject.info.model_sha256[:12]}…, reference {ref_src[:12]}…)")
    if not allow_mismatch:
        raise GateInputError(f"{problem}; pass the FP32 ONNX it was built from (or --allow-mismatch)")
    return [f"reference mismatch allowed: {problem}"]


def served_side_by_side(asked: bool | None, base: Baseline | None, subject: Subject,
                         baseline_runner: Runner | None, stack: contextlib.ExitStack) -> tuple[bool, str, Any]:
    """Side by side for a served model: with the baseline's served model, when the same server still serves it
    (by its name, with the baseline's artifact sha256) beside the one checked, e.g. v1 and v2 of a model; the two
    alternate request by request, so the server's and the network's drift cancel out. Returns (whether, why, the
    baseline model's runner).

    Raises:
        GateInputError: ``asked`` is True and the server does not serve the baseline's model unchanged.
    """
    if base is None or asked is False:
        return False, "--no-side-by-side" if base is not None else "", None
    if baseline_runner is not None:
        return True, "asked for", baseline_runner
    _, sep, name = base.artifact.path.rpartition("/v2/models/")
    problem = None if sep else "the baseline was not written from a served model"
    partner = None
    if problem is None and base.artifact.sha256 == subject.info.sha256:
        problem = f"the baseline's model {name!r} serves the artifact being checked (timing it against itself " \
                  "tells nothing)"
    elif problem is None:
        from edgeres.serve.client import RemoteRunner

        try:
            partner = stack.enter_context(RemoteRunner(subject.server, name))
        except EdgeresError as exc:
            problem = f"the server does not serve the baseline's model {name!r} ({exc})"
        else:
            if partner.artifact_sha256 != base.artifact.sha256:
                problem, partner = f"the server's model {name!r} is no longer the baseline's artifact", None
    if problem is not None and asked:
        raise GateInputError(f"--side-by-side: {problem}; compare with the stored samples (leave it out)")
    if problem is not None:
        return False, problem, None
    return True, f"the server also serves the baseline's model {name!r} unchanged", partner
