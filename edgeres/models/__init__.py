"""The ResNet family and its plain twins, by name.

Two files hold the networks: :mod:`edgeres.models.resnet` (the ImageNet nets, torchvision-compatible state dicts,
plus ``plain18``/``plain34``) and :mod:`edgeres.models.cifar` (the paper's §4.2 CIFAR nets ``resnet20`` ...
``resnet110`` and ``plain20`` ... ``plain110``). This module names them for the CLI::

    model = edgeres.models.create("resnet20", num_classes=10, in_channels=1)
    edgeres.models.names()                   # ['plain110', 'plain18', ..., 'resnet56']
    edgeres.models.default_input_size("resnet50")   # 224
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from edgeres.errors import ModelError
from edgeres.models.cifar import (
    CifarResNet, Shortcut, ShortcutA, cifar_depth_factory, plain20, plain32, plain44, plain56, plain110,
    resnet20, resnet32, resnet44, resnet56, resnet110,
)
from edgeres.models.resnet import (
    BasicBlock, Bottleneck, ResNet, StrideOn, plain18, plain34, resnet18, resnet34, resnet50, resnet101,
    resnet152,
)

log = logging.getLogger(__name__)

__all__ = [
    "create", "names", "is_known", "default_input_size", "options",
    "ResNet", "CifarResNet", "BasicBlock", "Bottleneck", "ShortcutA", "Shortcut", "StrideOn",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "plain20", "plain32", "plain44", "plain56", "plain110",
]


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    input_size: int  # the side of the square input the family was designed for


_IMAGENET = (resnet18, resnet34, resnet50, resnet101, resnet152, plain18, plain34)
_CIFAR = (resnet20, resnet32, resnet44, resnet56, resnet110, plain20, plain32, plain44, plain56, plain110)
_REGISTRY: dict[str, _Entry] = {
    **{f.__name__: _Entry(f, 224) for f in _IMAGENET},
    **{f.__name__: _Entry(f, 32) for f in _CIFAR},
}


def names() -> list[str]:
    """The named architectures, sorted. :func:`create` also accepts ``resnet<D>`` / ``plain<D>`` for any other
    CIFAR depth ``D = 6n + 2`` (see :func:`is_known`)."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    entry = _REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if entry is None and isinstance(name, str):  # resnet8, plain14, ...: the CIFAR family at any depth 6n + 2
        factory = cifar_depth_factory(name.lower())
        entry = _Entry(factory, 32) if factory is not None else None
    if entry is None:
        raise ModelError(f"unknown architecture {name!r}; choose one of: {', '.join(names())}")
    return entry


def is_known(name: str) -> bool:
    """Whether :func:`create` builds ``name``: one of :func:`names`, or a CIFAR ``resnet<6n+2>`` / ``plain<6n+2>``."""
    try:
        _entry(name)
    except ModelError:
        return False
    return True


def options(name: str) -> list[str]:
    """The keyword options architecture ``name`` accepts (e.g. ``['in_channels', 'num_classes', 'shortcut']``).

    Raises:
        ModelError: ``name`` is not one of :func:`names`.
    """
    return sorted(inspect.signature(_entry(name).factory).parameters)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with fresh weights.

    Args:
        name: one of :func:`names` (case-insensitive), e.g. ``"resnet20"`` or ``"resnet50"``.
        **kwargs: the factory's keyword options, e.g. ``num_classes``, ``in_channels``, ``shortcut`` (CIFAR
            family), ``stride_on`` (bottleneck nets), ``zero_init_residual`` (residual nets).

    Returns:
        The model, in training mode.

    Raises:
        ModelError: an unknown name, an option this architecture does not take, or a bad option value.
    """
    entry = _entry(name)
    accepted = options(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelError(
            f"{name} does not take option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}"
        )
    log.debug("creating %s with %s", name, kwargs)
    return entry.factory(**kwargs)


def default_input_size(name: str) -> int:
    """The input side the architecture was designed for: 32 for the CIFAR family, 224 for the ImageNet family.

    Raises:
        ModelError: ``name`` is not one of :func:`names`.
    """
    return _entry(name).input_size
