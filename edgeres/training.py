"""Training after He et al. (2016): SGD with momentum 0.9, weight decay 1e-4, a step or cosine schedule, light
augmentation (random crop with padding, horizontal flip where the task allows), BatchNorm.

Every epoch writes the checkpoint atomically (model, optimizer, schedule, random state and the model card), so
``resume=True`` continues bit-for-bit from the last finished epoch: the shuffling and augmentation of epoch ``e``
come from a generator seeded with ``(seed, e)``, not from state carried across epochs.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from edgeres import models
from edgeres.version import __version__
from edgeres.card import ModelCard, Preprocess
from edgeres.data import Dataset, ImageFolder, load_batch, open_dataset
from edgeres.digits import digits_preprocess, write_digits
from edgeres.errors import InputError, ModelError
from edgeres.io import atomic_path
from edgeres.progress import Progress

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("digits",)
_CACHE_DIR = Path.home() / ".cache" / "edgeres"


@dataclass
class TrainConfig:
    """One training run. ``None`` means "the recipe's default for this architecture and dataset"."""

    arch: str = "resnet20"
    epochs: int | None = None  # digits: 10; CIFAR-style: 160; ImageNet-style: 90
    batch_size: int | None = None  # digits: 32 (1,438 images: more steps per epoch); otherwise 128, as in §4.2
    lr: float | None = None  # digits: 0.05; otherwise 0.1 scaled by batch_size/128 (paper: 0.1 at batch 128)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" or "step" (divide by 10 at 50% and 75% of the epochs, as in §4.2)
    warmup_epochs: int = 0  # the paper warms ResNet-110 up at lr 0.01; set 1 for very deep CIFAR nets
    crop_padding: int | None = None  # pixels of zero padding for the random crop; default crop // 8
    hflip: bool | None = None  # None: on, except for datasets where mirroring changes the class (digits)
    seed: int = 0
    val_split: float | None = None  # for ROOT/<class>/* folders without train/ and val/
    size: int | None = None  # input size; default 32 for CIFAR-family archs, 224 for ImageNet ones
    model_options: dict[str, Any] = field(default_factory=dict)  # shortcut="B", stride_on="1x1", ...
    threads: int | None = None  # torch intra-op threads; default: torch's own


@dataclass
class TrainResult:
    checkpoint: Path
    arch: str
    best_val_top1: float
    final_val_top1: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]


def resolve_dataset(data: str | Path, *, seed: int = 0, val_split: float | None = None) -> tuple[Dataset, str]:
    """Open an image-folder dataset, or the built-in ``digits`` set (written once to ~/.cache/edgeres/digits)."""
    path = Path(data)
    if not path.exists() and str(data) in BUILTIN_DATASETS:
        path = _CACHE_DIR / str(data)
        if not (path / "train").is_dir():
            log.info("writing the built-in digits dataset to %s", path)
            write_digits(path, seed=0, force=True)  # the fixed split, not the first run's training seed
        return open_dataset(path, seed=seed), "digits"
    if not path.exists():
        raise InputError(f"dataset folder {path} does not exist; pass an image folder or the built-in name 'digits'")
    return open_dataset(path, val_split=val_split, seed=seed), _dataset_name(path)


def _dataset_name(root: Path) -> str:
    """The dataset's own name from the metadata ``edgeres data`` writes (``digits.json``), else the folder name."""
    for meta in sorted(root.glob("*.json")):
        try:
            name = json.loads(meta.read_text()).get("name")
        except (json.JSONDecodeError, AttributeError):
            continue
        if name == meta.stem:
            return str(name)
    return root.name


def default_preprocess(arch: str, dataset_name: str, *, size: int | None, channels: int = 3) -> Preprocess:
    """The preprocessing a model of ``arch`` trained on ``dataset_name`` uses."""
    if dataset_name == "digits":
        pre = digits_preprocess()
        if size is not None and size != pre.crop:
            pre = Preprocess.small(size=size, channels=pre.channels, mean=pre.mean, std=pre.std)
        return pre
    size = size or models.default_input_size(arch)
    if size <= 64:
        return Preprocess.small(size=size, channels=channels)
    return Preprocess(resize=round(size * 256 / 224), crop=size)


def _recipe(cfg: TrainConfig, dataset_name: str) -> TrainConfig:
    digits = dataset_name == "digits"
    epochs = cfg.epochs
    if epochs is None:
        if digits:
            epochs = 10
        else:
            epochs = 160 if models.default_input_size(cfg.arch) <= 64 else 90
    batch_size = cfg.batch_size or (32 if digits else 128)
    lr = cfg.lr if cfg.lr is not None else (0.05 if digits else 0.1 * batch_size / 128)
    hflip = cfg.hflip if cfg.hflip is not None else not digits  # mirrored digits are other symbols
    return TrainConfig(**{**asdict(cfg), "epochs": epochs, "batch_size": batch_size, "lr": lr, "hflip": hflip})


IN_MEMORY_LIMIT_BYTES = 1 << 30  # splits whose decoded tensors fit here are cached; larger ones stream from disk


class _Split:
    """The images of one split as batches: decoded once into memory when small (digits, CIFAR-like folders),
    else decoded per batch from disk, one batch ahead on a background thread.

    Either way a batch depends only on the indices asked for, so seeded shuffling stays reproducible.
    """

    def __init__(self, folder: ImageFolder, pre: Preprocess, desc: str, *, quiet: bool) -> None:
        self.paths = [p for p, _ in folder.samples]
        self.labels = torch.tensor([y for _, y in folder.samples], dtype=torch.long)
        self.pre = pre
        self.cached: torch.Tensor | None = None
        if len(self.paths) * 4 * math.prod(pre.input_shape) <= IN_MEMORY_LIMIT_BYTES:
            self.cached = self._load_all(desc, quiet)
        else:
            log.info("%s split: %d images do not fit %d MiB; decoding them batch by batch", desc, len(self.paths),
                     IN_MEMORY_LIMIT_BYTES >> 20)

    def __len__(self) -> int:
        return len(self.paths)

    def _load_all(self, desc: str, quiet: bool) -> torch.Tensor:
        chunks = []
        with Progress(len(self.paths), f"load {desc}", unit="img", quiet=quiet) as bar:
            for start in range(0, len(self.paths), 256):
                chunk = self.paths[start:start + 256]
                chunks.append(load_batch(chunk, self.pre))
                bar.update(len(chunk))
        return torch.from_numpy(np.concatenate(chunks))

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The preprocessed images at ``idx``."""
        if self.cached is not None:
            return self.cached[idx]
        return torch.from_numpy(load_batch([self.paths[i] for i in idx.tolist()], self.pre))

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(indices, images)`` for consecutive slices of ``order``; from disk, the next one loads meanwhile."""
        slices = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if self.cached is not None:
            yield from ((idx, self.cached[idx]) for idx in slices)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            upcoming = [pool.submit(self.take, slices[0])] if slices else []
            for i, idx in enumerate(slices):
                if i + 1 < len(slices):
                    upcoming.append(pool.submit(self.take, slices[i + 1]))
                yield idx, upcoming.pop(0).result()


def _augment(x: torch.Tensor, *, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (the paper's CIFAR augmentation) and optional horizontal flip."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
        batch_idx = torch.arange(n)[:, None, None, None]
        chan_idx = torch.arange(x.shape[1])[None, :, None, None]
        x = padded[batch_idx, chan_idx, rows, cols]
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def _lr_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    assert cfg.lr is not None and cfg.epochs is not None
    t = epoch + step / steps_per_epoch
    if epoch < cfg.warmup_epochs:
        return cfg.lr * 0.1
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t / cfg.epochs))
    if cfg.schedule == "step":
        return cfg.lr * (0.1 ** sum(t >= cfg.epochs * m for m in (0.5, 0.75)))
    raise InputError(f"unknown schedule {cfg.schedule!r}; use 'cosine' or 'step'")


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: _Split, *, batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of ``model`` on a split."""
    model.eval()
    correct = 0
    for idx, images in split.batches(torch.arange(len(split)), batch_size):
        correct += int((model(images).argmax(1) == split.labels[idx]).sum())
    return correct / max(1, len(split))


def train(data: str | Path, *, out: str | Path, config: TrainConfig | None = None, resume: bool = False,
          quiet: bool = False) -> TrainResult:
    """Train a ResNet on an image folder (or the built-in ``digits``) and write a checkpoint with its model card.

    Args:
        data: ``ROOT`` with ``train/`` and ``val/`` class folders, ``ROOT/<class>/*`` with ``config.val_split``,
            or ``"digits"``.
        out: checkpoint path (``.pt``); rewritten atomically after every epoch.
        config: the run's settings; defaults follow the paper's recipe.
        resume: continue from ``out``'s last finished epoch with its saved settings and state.
        quiet: no progress bars.
    """
    out = Path(out)
    cfg, state = _settings(config or TrainConfig(), out, resume=resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    dataset, dataset_name = resolve_dataset(data, seed=cfg.seed, val_split=cfg.val_split)
    cfg = _recipe(cfg, dataset_name)
    assert cfg.epochs is not None and cfg.lr is not None
    _validate(cfg)
    if not models.is_known(cfg.arch):  # the named archs, or a CIFAR resnet<6n+2> / plain<6n+2>
        raise InputError(f"unknown architecture {cfg.arch!r}; choose one of: {', '.join(models.names())}")
    card, pre = _model_card(cfg, dataset, dataset_name, state)
    train_split = _Split(dataset.train, pre, "train", quiet=quiet)
    val_split = _Split(dataset.val, pre, "val", quiet=quiet)

    model, optimizer, start_epoch, history = _model_and_optimizer(cfg, card, pre, state, out)
    assert cfg.batch_size is not None
    begin = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        kept = epoch > start_epoch or state is not None  # a checkpoint from an earlier epoch is on disk
        history.append(_run_epoch(model, optimizer, train_split, val_split, cfg, epoch, out=out, kept=kept,
                                  quiet=quiet))
        card.metrics = _metrics(history)
        if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
            raise _diverged(out, f"the weights became NaN or infinite in epoch {epoch + 1}", lr=cfg.lr, kept=kept)
        _save_checkpoint(out, model=model, optimizer=optimizer, card=card, cfg=cfg, epoch=epoch + 1,
                         history=history)
    seconds = time.perf_counter() - begin
    if start_epoch >= cfg.epochs:
        raise InputError(f"nothing to train: {out} already finished {start_epoch} epochs; raise --epochs")
    metrics = _metrics(history)
    return TrainResult(checkpoint=out, arch=cfg.arch, best_val_top1=metrics["best_val_top1"],
                       final_val_top1=metrics["val_top1"], epochs_run=cfg.epochs - start_epoch, seconds=seconds,
                       history=history)


def _settings(cfg: TrainConfig, out: Path, *, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The run's settings and, with ``resume``, the checkpoint's saved state; the saved recipe wins, except for a
    longer run asked for explicitly."""
    if not resume:
        return cfg, None
    if not out.exists():
        raise InputError(f"--resume: no checkpoint at {out}; train without --resume first")
    state = torch.load(out, map_location="cpu", weights_only=False)
    saved = TrainConfig(**state["config"])
    _warn_ignored_on_resume(cfg, saved)
    # a checkpoint trained on train/ + val/ folders records no split: one given now is used, not ignored
    cfg = TrainConfig(**{**asdict(saved), "epochs": cfg.epochs or saved.epochs,
                         "val_split": saved.val_split if saved.val_split is not None else cfg.val_split})
    return cfg, state


def _model_card(cfg: TrainConfig, dataset: Dataset, dataset_name: str,
                state: dict[str, Any] | None) -> tuple[ModelCard, Preprocess]:
    """The model card the checkpoint carries, and how images are fed (a resumed checkpoint's, whatever this
    folder looks like)."""
    pre = default_preprocess(cfg.arch, dataset_name, size=cfg.size, channels=3)
    if state is not None:  # the checkpoint defines the model and how it is fed
        pre = Preprocess.from_dict(state["card"]["preprocess"])
    card = ModelCard(
        arch=cfg.arch, class_names=list(dataset.classes), preprocess=pre, model_options=dict(cfg.model_options),
        dataset=_dataset_record(dataset, dataset_name), seed=cfg.seed,
        versions={"edgeres": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
    )
    return card, pre


def _model_and_optimizer(cfg: TrainConfig, card: ModelCard, pre: Preprocess, state: dict[str, Any] | None,
                         out: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, int, list[dict[str, float]]]:
    """A seeded new model and its SGD optimizer, or both restored from ``state``; with the epoch to start from and
    the history so far."""
    torch.manual_seed(cfg.seed)
    model = models.create(cfg.arch, num_classes=card.num_classes, in_channels=pre.channels, **cfg.model_options)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    if state is None:
        return model, optimizer, 0, []
    if state["card"]["arch"] != cfg.arch or state["card"]["class_names"] != card.class_names:
        raise ModelError(f"--resume: {out} was trained as {state['card']['arch']} on other classes; "
                         "use a new --out")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resuming %s from epoch %d of %d", out, state["epoch"], cfg.epochs)
    return model, optimizer, state["epoch"], state["history"]


def _run_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_split: _Split, val_split: _Split,
               cfg: TrainConfig, epoch: int, *, out: Path, kept: bool, quiet: bool) -> dict[str, float]:
    """One epoch of SGD over a shuffle seeded by the epoch, then top-1 on the validation split; returns the
    epoch's history entry. A non-finite loss stops the run (``kept``: an earlier checkpoint is on disk)."""
    padding = cfg.crop_padding if cfg.crop_padding is not None else train_split.pre.crop // 8
    steps = math.ceil(len(train_split) / cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(train_split), generator=gen)
    model.train()
    seen, loss_sum, correct = 0, 0.0, 0
    with Progress(len(train_split), f"epoch {epoch + 1}/{cfg.epochs}", unit="img", quiet=quiet) as bar:
        for step, (idx, images) in enumerate(train_split.batches(order, cfg.batch_size)):
            xb = _augment(images, padding=padding, hflip=bool(cfg.hflip), gen=gen)
            yb = train_split.labels[idx]
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg, epoch, step, steps)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            value = loss.item()
            if not math.isfinite(value):
                raise _diverged(out, f"the loss became {value} at epoch {epoch + 1}, step {step + 1}", lr=cfg.lr,
                                kept=kept)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(idx)
            loss_sum += value * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            bar.update(len(idx), loss=loss_sum / seen, acc=correct / seen)
        val_top1 = evaluate(model, val_split)
        bar.postfix["val_top1"] = f"{100 * val_top1:.1f}%"
    return {"epoch": epoch + 1, "loss": loss_sum / seen, "train_top1": correct / seen, "val_top1": val_top1}


def _diverged(out: Path, what: str, *, lr: float, kept: bool) -> ModelError:
    """The error that stops a diverging run before a NaN checkpoint is written."""
    where = f"{out} keeps the last finished epoch" if kept else f"nothing was written to {out}"
    return ModelError(f"training diverged: {what} (peak lr {lr:g}); {where}. Lower --lr (e.g. {lr / 10:g}) and "
                      "train again")


def _validate(cfg: TrainConfig) -> None:
    """Refuse settings that would train nothing useful (torch would raise a traceback or silently diverge)."""
    assert cfg.lr is not None and cfg.batch_size is not None
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise InputError(f"--lr must be a positive number, got {cfg.lr}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise InputError(f"--weight-decay must be 0 or a positive number, got {cfg.weight_decay}")
    if not 0 <= cfg.momentum < 1:
        raise InputError(f"momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {cfg.batch_size}")


def _warn_ignored_on_resume(asked: TrainConfig, saved: TrainConfig) -> None:
    """Resuming keeps the saved recipe: say which options given now differ from it and are ignored."""
    defaults = asdict(TrainConfig())
    for name, value in asdict(asked).items():
        if name == "val_split" and saved.val_split is None:
            continue  # used, see train()
        if name != "epochs" and value != defaults[name] and value != getattr(saved, name):
            log.warning("--resume keeps the checkpoint's %s=%r; ignoring %r", name, getattr(saved, name), value)


def _metrics(history: list[dict[str, float]]) -> dict[str, float]:
    return {"val_top1": history[-1]["val_top1"], "best_val_top1": max(h["val_top1"] for h in history),
            "epochs": history[-1]["epoch"]}


def _dataset_record(dataset: Dataset, name: str) -> dict[str, Any]:
    record: dict[str, Any] = {"name": name, "root": str(Path(dataset.root).resolve()),
                              "train_images": len(dataset.train.samples), "val_images": len(dataset.val.samples)}
    if dataset.calibration:
        record["calibration"] = [str(Path(p).resolve()) for p in dataset.calibration]
    return record


def _save_checkpoint(out: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, card: ModelCard,
                     cfg: TrainConfig, epoch: int, history: list[dict[str, float]]) -> None:
    from edgeres.card import card_for_file

    payload = {"format": "edgeres-checkpoint-1", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "card": card_for_file(card, out.parent).to_dict(), "config": asdict(cfg), "epoch": epoch, "history": history}
    import io

    buffer = io.BytesIO()  # torch's own file writer turns a full disk into "iostream error": write it ourselves
    torch.save(payload, buffer)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the model of an edgeres checkpoint in eval mode, with its card."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelError(f"{path} is not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "card" not in state or "model" not in state:
        raise ModelError(f"{path} is not an edgeres checkpoint (no model card); train it with `edgeres train`, "
                         "or export torchvision weights with `edgeres export --arch NAME`")
    from edgeres.card import card_from_file

    card = card_from_file(ModelCard.from_dict(state["card"]), path.parent)
    model = models.create(card.arch, num_classes=card.num_classes, in_channels=card.in_channels,
                          **card.model_options)
    model.load_state_dict(state["model"])
    return model.eval(), card
