"""The CIFAR-10 ResNets of He et al. 2015, §4.2, and their plain twins.

A 3x3 stem convolution with 16 filters, then three stages of ``n`` basic blocks on 32x32, 16x16 and 8x8 feature
maps with 16, 32 and 64 filters, global average pooling and a fully connected layer: ``6n + 2`` weighted
layers (``resnet20`` is n=3, ``resnet110`` is n=18). Where a stage halves the map and doubles the filters the
shortcut is option A (the paper's CIFAR choice: strided identity plus zero-padded channels, no parameters) or
option B (1x1 projection and BatchNorm). The plain twins have no shortcuts at all.
"""
from __future__ import annotations

import re
from enum import Enum
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgeres.errors import ModelError
from edgeres.models.resnet import BasicBlock, check_int_option, conv1x1, conv3x3, init_weights

__all__ = [
    "Shortcut", "ShortcutA", "CifarResNet",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "plain20", "plain32", "plain44", "plain56", "plain110", "cifar_depth_factory",
]


class Shortcut(str, Enum):
    """How a residual block's shortcut matches a change of shape (He et al. 2015, §3.3)."""

    A = "A"  # parameter-free: subsample by striding, pad the new channels with zeros
    B = "B"  # 1x1 convolution + BatchNorm projection where the shape changes, identity elsewhere


class _SubsampleAndPad(torch.autograd.Function):
    """``x[:, :, ::s, ::s]`` followed by ``extra`` zero channels, with its own ONNX symbolic.

    Plain ``F.pad`` exports (TorchScript exporter, opset >= 11) as a ten-node subgraph that computes the pads at
    run time; this symbolic writes one ``Slice`` over both spatial axes and one ``Pad`` with constant pads, which
    ONNX Runtime, TensorRT and INT8 calibrators all take as they are.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, stride: int, extra: int) -> torch.Tensor:
        ctx.in_shape = x.shape
        ctx.stride = stride
        return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, extra))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad_in = grad.new_zeros(ctx.in_shape)
        grad_in[:, :, ::ctx.stride, ::ctx.stride] = grad[:, :ctx.in_shape[1]]
        return grad_in, None, None

    @staticmethod
    def symbolic(g: Any, x: Any, stride: int, extra: int) -> Any:
        def const(values: list[int]) -> Any:
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

        big = torch.iinfo(torch.int64).max
        sliced = g.op("Slice", x, const([0, 0]), const([big, big]), const([2, 3]), const([stride, stride]))
        # ONNX pads: all begins (N, C, H, W), then all ends; the zeros go after the existing channels.
        return g.op("Pad", sliced, const([0, 0, 0, 0, 0, extra, 0, 0]), mode_s="constant")


class ShortcutA(nn.Module):
    """Option A shortcut: keep every ``stride``-th pixel and append ``extra_channels`` zero channels.

    The identity maps onto the first channels of the block's output; the new channels get no shortcut. It has
    no parameters and exports to ONNX as one ``Slice`` and one ``Pad``.
    """

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SubsampleAndPad.apply(x, self.stride, self.extra_channels)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class CifarResNet(nn.Module):
    """The §4.2 network: ``6n + 2`` layers on 32x32 inputs (any size that survives two halvings works).

    Args:
        depth_n: blocks per stage (``n``); depth is ``6n + 2``.
        num_classes: outputs of the final fully connected layer.
        in_channels: input image channels (3 colour, 1 grayscale).
        residual: False builds the plain twin (no shortcuts, no ``downsample`` modules).
        shortcut: :class:`Shortcut` option where a stage changes shape.
        zero_init_residual: start each block's last BatchNorm at gamma 0.
    """

    def __init__(self, depth_n: int, *, num_classes: int = 10, in_channels: int = 3, residual: bool = True,
                 shortcut: Shortcut = Shortcut.A, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.shortcut = shortcut
        self.inplanes = 16
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, depth_n)
        self.layer2 = self._make_layer(32, depth_n, stride=2)
        self.layer3 = self._make_layer(64, depth_n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_weights(self, zero_init_residual=zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample: nn.Module | None = None
        if self.residual and (stride != 1 or self.inplanes != planes):
            if self.shortcut is Shortcut.A:
                downsample = ShortcutA(stride, planes - self.inplanes)
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, residual=self.residual)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(BasicBlock(planes, planes, residual=self.residual))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _shortcut(value: Shortcut | str) -> Shortcut:
    try:
        return Shortcut(value.upper() if isinstance(value, str) else value)
    except ValueError:
        choices = ", ".join(repr(s.value) for s in Shortcut)
        raise ModelError(f"shortcut must be one of {choices}, got {value!r}") from None


def _cifar_resnet(depth_n: int, *, num_classes: int, in_channels: int, residual: bool = True,
                  shortcut: Shortcut | str = Shortcut.A, zero_init_residual: bool = False) -> CifarResNet:
    return CifarResNet(
        depth_n,
        num_classes=check_int_option("num_classes", num_classes),
        in_channels=check_int_option("in_channels", in_channels),
        residual=residual,
        shortcut=_shortcut(shortcut),
        zero_init_residual=zero_init_residual,
    )


def resnet20(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut | str = Shortcut.A,
             zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-20 (n=3), 0.27M parameters with option A and 10 classes.

    Args:
        num_classes: outputs of the final fully connected layer.
        in_channels: input image channels (3 colour, 1 grayscale).
        shortcut: ``"A"`` (zero-padded identity, no parameters) or ``"B"`` (projection) where shapes change.
        zero_init_residual: start each block's last BatchNorm at gamma 0.
    """
    return _cifar_resnet(3, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut,
                         zero_init_residual=zero_init_residual)


def resnet32(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut | str = Shortcut.A,
             zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-32 (n=5), 0.46M parameters with option A and 10 classes (options as resnet20)."""
    return _cifar_resnet(5, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut,
                         zero_init_residual=zero_init_residual)


def resnet44(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut | str = Shortcut.A,
             zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-44 (n=7), 0.66M parameters with option A and 10 classes (options as resnet20)."""
    return _cifar_resnet(7, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut,
                         zero_init_residual=zero_init_residual)


def resnet56(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut | str = Shortcut.A,
             zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-56 (n=9), 0.85M parameters with option A and 10 classes (options as resnet20)."""
    return _cifar_resnet(9, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut,
                         zero_init_residual=zero_init_residual)


def resnet110(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut | str = Shortcut.A,
              zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-110 (n=18), 1.7M parameters with option A and 10 classes (options as resnet20)."""
    return _cifar_resnet(18, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut,
                         zero_init_residual=zero_init_residual)


def cifar_depth_factory(name: str) -> Callable[..., CifarResNet] | None:
    """The factory of ``resnet<D>`` / ``plain<D>`` for any depth ``D = 6n + 2`` (``resnet8``, ``plain14``, ...),
    with the options of :func:`resnet20` / :func:`plain20`; None when ``name`` is not of that form."""
    match = re.fullmatch(r"(resnet|plain)(\d+)", name)
    if match is None or (int(match[2]) - 2) % 6 or int(match[2]) < 8:
        return None
    n = (int(match[2]) - 2) // 6
    if match[1] == "plain":
        def plain(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
            return _cifar_resnet(n, num_classes=num_classes, in_channels=in_channels, residual=False)
        factory: Callable[..., CifarResNet] = plain
    else:
        def residual(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut | str = Shortcut.A,
                     zero_init_residual: bool = False) -> CifarResNet:
            return _cifar_resnet(n, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut,
                                 zero_init_residual=zero_init_residual)
        factory = residual
    factory.__name__ = factory.__qualname__ = name
    return factory


def plain20(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-20: ResNet-20's stack without shortcuts (the paper's Figure 6, left)."""
    return _cifar_resnet(3, num_classes=num_classes, in_channels=in_channels, residual=False)


def plain32(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-32: ResNet-32's stack without shortcuts."""
    return _cifar_resnet(5, num_classes=num_classes, in_channels=in_channels, residual=False)


def plain44(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-44: ResNet-44's stack without shortcuts."""
    return _cifar_resnet(7, num_classes=num_classes, in_channels=in_channels, residual=False)


def plain56(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-56: ResNet-56's stack without shortcuts."""
    return _cifar_resnet(9, num_classes=num_classes, in_channels=in_channels, residual=False)


def plain110(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Plain-110: ResNet-110's stack without shortcuts."""
    return _cifar_resnet(18, num_classes=num_classes, in_channels=in_channels, residual=False)
