"""Triton model repositories for an artifact: one for NVIDIA's Triton containers, one that edgeres serves itself.

:func:`export_triton` writes the production layout — ``<repo>/<name>/config.pbtxt``, ``labels.txt`` and
``1/model.plan`` (TensorRT engine, ``tensorrt_plan``) or ``1/model.onnx`` (``onnxruntime_onnx``, optionally with
ONNX Runtime's TensorRT execution provider) — for a Triton container on a GPU node. Each model folder is staged
beside its final place, its config checked against Triton's schema, then renamed into place.

:func:`serving_repository` writes the two Python-backend models ``edgeres serve`` runs: the tensor model
(FP32 images in the card's layout in, logits out) and the image model (encoded image bytes in, class
probabilities out, labelled so Triton's classification extension returns the top-k classes). Both run the
artifact through edgeres's own runner (:mod:`edgeres.serve.python_model`)::

    export_triton("fp32/model.fp32.onnx", "repo/")            # -> repo/model_fp32/{config.pbtxt,labels.txt,1/}
"""
from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import site
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeres.backends.base import BatchProfile, Sidecar
from edgeres.card import ModelCard
from edgeres.errors import BackendError, InputError, ModelError
from edgeres.io import sha256_file
from edgeres.serve.config import ModelConfig, Tensor, preferred_batch_sizes, validate_config

log = logging.getLogger(__name__)

VERSION = "1"  # the version folder every generated model uses
IMAGE_SUFFIX = "_image"  # the image model's name is the tensor model's plus this
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class Device(str, enum.Enum):
    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True)
class ServedArtifact:
    """What a repository needs to know about an artifact."""

    path: Path
    card: ModelCard
    backend: str
    precision: str
    profile: BatchProfile
    sidecar: Sidecar | None


def describe(artifact: str | os.PathLike[str]) -> ServedArtifact:
    """Read an artifact's sidecar (checking the file still matches it), or a plain ONNX's card."""
    from edgeres.backends import read_sidecar_for, sidecar_path
    from edgeres.card import read_onnx_card

    path = Path(artifact)
    if not path.is_file():
        raise InputError(f"artifact {path} not found; build one with `edgeres build`")
    if not sidecar_path(path).exists():
        card = read_onnx_card(path) if path.suffix.lower() == ".onnx" else None
        if card is None:
            raise BackendError(f"{path} has no sidecar and carries no edgeres model card; build it with "
                               "`edgeres build MODEL.onnx --precision ...`")
        precision, profile = _plain_onnx_facts(path)
        return ServedArtifact(path, card, "onnxruntime", precision, profile, None)
    sidecar = read_sidecar_for(path)
    if sha256_file(path) != sidecar.artifact_sha256:
        raise BackendError(f"{path} does not match its sidecar's sha256: the file changed after it was built; "
                           f"rebuild it with `edgeres build`")
    return ServedArtifact(path, sidecar.card, sidecar.backend, sidecar.precision, BatchProfile(**sidecar.profile),
                          sidecar)


def _plain_onnx_facts(path: Path) -> tuple[str, BatchProfile]:
    """Precision and batch range of an ONNX without a sidecar: a fixed batch N is N:N:N, a dynamic one the
    default profile; Q/DQ nodes mean int8, FP16 weights fp16."""
    import onnx

    from edgeres.servable import graph_inputs

    model = onnx.load(str(path), load_external_data=False)
    dims = graph_inputs(model)[0].type.tensor_type.shape.dim if graph_inputs(model) else []
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
    ops = {node.op_type for node in model.graph.node}
    fp16 = any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    precision = "int8" if {"QuantizeLinear", "QLinearConv"} & ops else ("fp16" if fp16 else "fp32")
    return precision, BatchProfile(batch, batch, batch) if batch > 0 else BatchProfile()


def model_name(artifact: str | os.PathLike[str]) -> str:
    """A Triton model name from an artifact file name: ``model.int8.onnx`` -> ``model_int8``."""
    stem = Path(artifact).name
    for suffix in (".onnx", ".engine", ".plan"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return _NAME.sub("_", stem.replace(".", "_")).strip("_") or "model"


def check_name(name: str) -> str:
    if not name or _NAME.search(name) or name.startswith("."):
        raise InputError(f"model name {name!r} must be letters, digits, '_', '-' or '.', not starting with '.'")
    return name


_ONNX_TYPES = {1: "FP32", 10: "FP16", 11: "FP64", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64"}


def _io_types(art: ServedArtifact) -> tuple[str, str]:
    """The Triton data types of the artifact's input and output: an ONNX's own graph types; FP32 for engines
    (edgeres builds them with FP32 bindings whatever the precision inside)."""
    if art.backend == "tensorrt" or art.path.suffix.lower() != ".onnx":
        return "FP32", "FP32"
    import onnx

    from edgeres.servable import graph_inputs

    graph = onnx.load(str(art.path), load_external_data=False).graph
    types = [graph_inputs(onnx.ModelProto(graph=graph))[0].type.tensor_type.elem_type,
             graph.output[0].type.tensor_type.elem_type]
    names = [_ONNX_TYPES.get(t) for t in types]
    if None in names:
        raise ModelError(f"{art.path}: input/output ONNX element types {types} have no Triton equivalent here")
    return names[0], names[1]  # type: ignore[return-value]


def _io(art: ServedArtifact) -> tuple[Tensor, Tensor]:
    card = art.card
    in_type, out_type = _io_types(art)
    return (Tensor(card.input_name, in_type, list(card.preprocess.input_shape)),
            Tensor(card.output_name, out_type, [card.num_classes], label_filename="labels.txt"))


def _labels(card: ModelCard) -> str:
    return "".join(f"{name}\n" for name in card.class_names)


def _profile_note(art: ServedArtifact) -> list[str]:
    notes = [f"written by edgeres from {art.path.name} ({art.backend}, {art.precision}, batch profile "
             f"{art.profile})"]
    if art.profile.min > 1:
        notes.append(f"the artifact accepts batches of {art.profile.min}..{art.profile.max} only: clients must "
                     f"send at least {art.profile.min} images per request")
    return notes


def production_config(art: ServedArtifact, *, name: str, instances: int = 1, max_queue_delay_us: int = 100,
                      device: Device | str = Device.GPU, tensorrt_ep: bool = False) -> ModelConfig:
    """The ``config.pbtxt`` of :func:`export_triton`, not yet written."""
    device = Device(device)
    inp, out = _io(art)
    notes = _profile_note(art)
    if art.backend == "tensorrt":
        if device is Device.CPU:
            raise InputError(f"{art.path} is a TensorRT engine: it runs on a GPU only; export an ONNX artifact "
                             "for CPU instances")
        if tensorrt_ep:
            raise InputError("--tensorrt-ep applies to ONNX artifacts; an engine already is TensorRT")
        platform, filename = "tensorrt_plan", "model.plan"
        fp = art.sidecar.fingerprint if art.sidecar else {}
        notes.append(f"engine built by TensorRT {art.sidecar.backend_version if art.sidecar else '?'} for "
                     f"{fp.get('device') or fp.get('gpu') or 'its build GPU'}: the container's TensorRT and GPU "
                     "must match (rebuild the engine inside the container otherwise)")
    else:
        platform, filename = "onnxruntime_onnx", "model.onnx"
    accelerator = None
    if tensorrt_ep:
        if device is Device.CPU:
            raise InputError("--tensorrt-ep needs GPU instances; drop it or use --device gpu")
        accelerator = {"precision_mode": art.precision.upper(), "max_workspace_size_bytes": str(1 << 30),
                       "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp/edgeres-trt-cache"}
        if art.precision == "int8":
            notes.append("INT8 through the TensorRT EP uses the Q/DQ scales of the ONNX itself")
    return ModelConfig(name=name, platform=platform, default_model_filename=filename, inputs=[inp], outputs=[out],
                       max_batch_size=art.profile.max, preferred_batch_sizes=preferred_batch_sizes(art.profile),
                       max_queue_delay_us=max_queue_delay_us, instances=instances,
                       kind="KIND_GPU" if device is Device.GPU else "KIND_CPU", accelerator=accelerator,
                       notes=notes)


def _check_options(instances: int, max_queue_delay_us: int) -> None:
    if instances < 1:
        raise InputError(f"--instances must be >= 1, got {instances}")
    if max_queue_delay_us < 0:
        raise InputError(f"--max-queue-delay-us must be >= 0, got {max_queue_delay_us}")


def export_triton(artifact: str | os.PathLike[str], repo: str | os.PathLike[str], *, name: str | None = None,
                  instances: int = 1, max_queue_delay_us: int = 100, device: Device | str = Device.GPU,
                  tensorrt_ep: bool = False, force: bool = False) -> Path:
    """Write ``artifact`` as one model of a Triton model repository for NVIDIA's containers.

    Args:
        artifact: a built artifact (engine or ONNX with its sidecar), or an exported ONNX carrying the card.
        repo: the repository folder (created if missing; other models in it are left alone).
        name: the model name; None = from the artifact's file name (:func:`model_name`).
        instances: model instances (``instance_group.count``).
        max_queue_delay_us: how long the dynamic batcher may hold a request to fill a batch.
        device: ``gpu`` (KIND_GPU) or ``cpu`` (KIND_CPU; ONNX only).
        tensorrt_ep: ONNX only: run it through ONNX Runtime's TensorRT execution provider.
        force: replace an existing model folder of the same name.

    Returns:
        The model folder.

    Raises:
        InputError: bad options, or the model folder exists without ``force``.
        ModelError: the config does not pass Triton's schema (a bug: nothing is written).
    """
    _check_options(instances, max_queue_delay_us)
    art = describe(artifact)
    name = check_name(name or model_name(art.path))
    config = production_config(art, name=name, instances=instances, max_queue_delay_us=max_queue_delay_us,
                               device=device, tensorrt_ep=tensorrt_ep)
    filename = config.default_model_filename or "model.onnx"

    def fill(stage: Path) -> None:
        shutil.copyfile(art.path, stage / VERSION / filename)

    return _write_model(Path(repo), name, config, fill=fill, labels=_labels(art.card), force=force)


def _write_model(repo: Path, name: str, config: ModelConfig, *, fill: Any, labels: str, force: bool) -> Path:
    """Stage a model folder beside its final place, validate its config, then rename it into place."""
    text = config.render()
    validate_config(text, where=f"{name}/config.pbtxt")  # before anything is written
    target = repo / name
    if target.exists() and not force:
        raise InputError(f"{target} already exists; pass --force to replace it")
    repo.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=repo))
    try:
        (stage / VERSION).mkdir()
        (stage / "config.pbtxt").write_text(text, encoding="utf-8")
        (stage / "labels.txt").write_text(labels, encoding="utf-8")
        fill(stage)
        validate_config((stage / "config.pbtxt").read_text(encoding="utf-8"), where=str(target / "config.pbtxt"))
        os.chmod(stage, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=repo))
            os.replace(target, old / name)
            os.replace(stage, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, target)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    log.info("wrote Triton model %s", target)
    return target


# --- the repository `edgeres serve` runs ---------------------------------------------------------------------

_SHIM = '''"""Generated by edgeres serve: the {role} model of {artifact}, run by edgeres's own runner."""
import site
import sys

_before = list(sys.path)
for _dir in {site_dirs!r}:
    site.addsitedir(_dir)  # .pth files too (an editable install of edgeres)
sys.path[:] = {roots!r} + [p for p in sys.path if p not in _before] + [p for p in _before if p not in {roots!r}]

from edgeres.serve.python_model import {cls} as TritonPythonModel  # noqa: E402,F401
'''


def _python_paths() -> tuple[list[str], list[str]]:
    """Site-packages of this interpreter, and the folder edgeres is imported from: the backend stub's embedded
    Python does not inherit PYTHONPATH or a virtual environment."""
    roots = [str(Path(__file__).resolve().parents[2])]  # the folder holding the edgeres package
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and Path(user).is_dir():
        dirs.append(user)
    return roots, dirs


@dataclass(frozen=True)
class ServingRepository:
    """The models of a repository written by :func:`serving_repository`."""

    root: Path
    tensor_model: str
    image_model: str
    artifact: ServedArtifact


def serving_repository(artifact: str | os.PathLike[str], repo: str | os.PathLike[str], *, name: str | None = None,
                       instances: int = 1, max_queue_delay_us: int = 500, threads: int | None = None,
                       top_k: int = 5) -> ServingRepository:
    """Write the two Python-backend models that serve ``artifact`` with edgeres's runner.

    Args:
        artifact: a built artifact or an exported ONNX with its card.
        repo: an empty or new folder.
        name: the tensor model's name (the image model adds ``_image``); None = from the file name.
        instances: runner instances per model (each its own backend stub process).
        max_queue_delay_us: how long the dynamic batcher may hold a request to fill a batch.
        threads: ONNX Runtime threads per instance; None = the cores split between the instances.
        top_k: the default number of classes the image model's clients ask for (recorded for clients).
    """
    _check_options(instances, max_queue_delay_us)
    art = describe(artifact)
    name = check_name(name or model_name(art.path))
    image_name = name + IMAGE_SUFFIX
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // (2 * instances))
    roots, dirs = _python_paths()
    card = art.card  # the runner takes FP32 in the card's layout and gives FP32 logits, whatever the precision
    inp = Tensor(card.input_name, "FP32", list(card.preprocess.input_shape))
    out = Tensor(card.output_name, "FP32", [card.num_classes], label_filename="labels.txt")
    artifact_sha = art.sidecar.artifact_sha256 if art.sidecar is not None else sha256_file(art.path)
    model_sha = (art.sidecar.source_onnx_sha256 if art.sidecar is not None else None) or artifact_sha
    common = {"edgeres_artifact": str(art.path.resolve()), "edgeres_threads": str(threads),
              "edgeres_artifact_sha256": artifact_sha, "edgeres_model_sha256": model_sha,
              "edgeres_card": art.card.to_json(), "edgeres_backend": art.backend,
              "edgeres_precision": art.precision, "edgeres_profile": str(art.profile),
              "edgeres_top_k": str(top_k)}
    notes = _profile_note(art)
    tensor = ModelConfig(name=name, backend="python", inputs=[inp], outputs=[out], max_batch_size=art.profile.max,
                         preferred_batch_sizes=preferred_batch_sizes(art.profile),
                         max_queue_delay_us=max_queue_delay_us, instances=instances, kind="KIND_CPU",
                         parameters={**common, "edgeres_role": "tensor", "edgeres_image_model": image_name},
                         notes=notes)
    # images arrive as their encoded bytes (UINT8, any length): ragged, so requests of different sizes batch
    image = ModelConfig(name=image_name, backend="python", inputs=[Tensor("image", "UINT8", [-1], ragged=True)],
                        outputs=[Tensor("probabilities", "FP32", [art.card.num_classes],
                                        label_filename="labels.txt")],
                        max_batch_size=art.profile.max, max_queue_delay_us=max_queue_delay_us, instances=instances,
                        kind="KIND_CPU", parameters={**common, "edgeres_role": "image", "edgeres_tensor_model": name},
                        notes=notes)
    root = Path(repo)
    if root.exists() and any(root.iterdir()):
        raise InputError(f"{root} is not empty; give a new folder for the serving repository")
    for config, cls, role in ((tensor, "TensorModel", "tensor"), (image, "ImageModel", "image")):
        shim = _SHIM.format(role=role, artifact=art.path.name, site_dirs=dirs, roots=roots, cls=cls)

        def fill(stage: Path, shim: str = shim) -> None:
            (stage / VERSION / "model.py").write_text(shim, encoding="utf-8")

        _write_model(root, config.name, config, fill=fill, labels=_labels(art.card), force=False)
    return ServingRepository(root, name, image_name, art)

