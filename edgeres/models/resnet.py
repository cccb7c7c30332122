"""The ImageNet ResNets (He et al. 2015, §3.4 and Table 1) and their plain twins, torchvision-compatible.

Reading order follows torchvision's ``models/resnet.py``: two conv helpers, the basic and bottleneck blocks, the
network, one private builder, then thin public factories. Module names match torchvision's (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layerN.0.downsample.0/1``, ``fc``), so a torchvision ``state_dict`` loads with
``strict=True`` into the residual nets. The plain twins (``plain18``, ``plain34``) are the same stacks without
shortcuts, for the paper's degradation comparison (Figure 4); they have no ``downsample`` modules.
"""
from __future__ import annotations

from enum import Enum

import torch
from torch import nn

from edgeres.errors import ModelError


__all__ = [
    "StrideOn", "BasicBlock", "Bottleneck", "ResNet",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
]


class StrideOn(str, Enum):
    """Which convolution of a bottleneck block carries the stage's stride 2."""

    CONV3X3 = "3x3"  # "ResNet v1.5", torchvision's default: better accuracy, same parameters
    CONV1X1 = "1x1"  # the paper's original: the first 1x1 reduce convolution subsamples


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the first one carries the stride. ``residual=False`` makes the plain block."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 *, residual: bool = True, stride_on: StrideOn = StrideOn.CONV3X3) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4). ``residual=False`` makes the plain block."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 *, residual: bool = True, stride_on: StrideOn = StrideOn.CONV3X3) -> None:
        super().__init__()
        # v1.5 puts the stride on the 3x3 conv (torchvision); the paper put it on the first 1x1.
        stride_1x1, stride_3x3 = (1, stride) if stride_on is StrideOn.CONV3X3 else (stride, 1)
        self.conv1 = conv1x1(inplanes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max pool, four stages (64, 128, 256, 512 planes), global average pool, fc.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``[3, 4, 6, 3]``.
        num_classes: outputs of the final fully connected layer.
        in_channels: input image channels (3 colour, 1 grayscale).
        residual: False builds the plain twin (no shortcuts, no ``downsample`` modules).
        stride_on: where a bottleneck stage's stride sits; ignored by basic blocks.
        zero_init_residual: start each block's last BatchNorm at gamma 0, so residual blocks begin as identities.
    """

    def __init__(self, block: Block, layers: list[int], *, num_classes: int = 1000, in_channels: int = 3,
                 residual: bool = True, stride_on: StrideOn = StrideOn.CONV3X3,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.stride_on = stride_on
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self, zero_init_residual=zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if self.residual and (stride != 1 or self.inplanes != planes * block.expansion):
            # Projection shortcut (option B of the paper) wherever the shape changes, as torchvision does.
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, residual=self.residual,
                        stride_on=self.stride_on)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, residual=self.residual, stride_on=self.stride_on))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def init_weights(model: nn.Module, *, zero_init_residual: bool) -> None:
    """He (fan-out) init for convolutions, BN at gamma 1 / beta 0; optionally the last BN of a block at 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            last_bn = getattr(m, "last_bn", None)
            if callable(last_bn) and getattr(m, "residual", False):
                nn.init.constant_(last_bn().weight, 0)


def check_int_option(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``; raise :class:`ModelError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _stride_on(value: StrideOn | str) -> StrideOn:
    try:
        return StrideOn(value)
    except ValueError:
        choices = ", ".join(repr(s.value) for s in StrideOn)
        raise ModelError(f"stride_on must be one of {choices}, got {value!r}") from None


def _resnet(block: Block, layers: list[int], *, num_classes: int, in_channels: int, residual: bool = True,
            stride_on: StrideOn | str = StrideOn.CONV3X3, zero_init_residual: bool = False) -> ResNet:
    return ResNet(
        block, layers,
        num_classes=check_int_option("num_classes", num_classes),
        in_channels=check_int_option("in_channels", in_channels),
        residual=residual,
        stride_on=_stride_on(stride_on),
        zero_init_residual=zero_init_residual,
    )


def resnet18(*, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18: basic blocks ``[2, 2, 2, 2]``, 11,689,512 parameters with 1000 classes."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels,
                   zero_init_residual=zero_init_residual)


def resnet34(*, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34: basic blocks ``[3, 4, 6, 3]``, 21,797,672 parameters with 1000 classes."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels,
                   zero_init_residual=zero_init_residual)


def resnet50(*, num_classes: int = 1000, in_channels: int = 3, stride_on: StrideOn | str = StrideOn.CONV3X3,
             zero_init_residual: bool = False) -> ResNet:
    """ResNet-50: bottlenecks ``[3, 4, 6, 3]``, 25,557,032 parameters with 1000 classes.

    Args:
        num_classes: outputs of the final fully connected layer.
        in_channels: input image channels (3 colour, 1 grayscale).
        stride_on: ``"3x3"`` (v1.5, torchvision) or ``"1x1"`` (the paper) for the stage's stride-2 conv.
        zero_init_residual: start each block's last BatchNorm at gamma 0.
    """
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels,
                   stride_on=stride_on, zero_init_residual=zero_init_residual)


def resnet101(*, num_classes: int = 1000, in_channels: int = 3, stride_on: StrideOn | str = StrideOn.CONV3X3,
              zero_init_residual: bool = False) -> ResNet:
    """ResNet-101: bottlenecks ``[3, 4, 23, 3]``, 44,549,160 parameters with 1000 classes (options as resnet50)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, in_channels=in_channels,
                   stride_on=stride_on, zero_init_residual=zero_init_residual)


def resnet152(*, num_classes: int = 1000, in_channels: int = 3, stride_on: StrideOn | str = StrideOn.CONV3X3,
              zero_init_residual: bool = False) -> ResNet:
    """ResNet-152: bottlenecks ``[3, 8, 36, 3]``, 60,192,808 parameters with 1000 classes (options as resnet50)."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes, in_channels=in_channels,
                   stride_on=stride_on, zero_init_residual=zero_init_residual)


def plain18(*, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """Plain-18: ResNet-18's stack with no shortcuts (the paper's Table 2 / Figure 4 baseline)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels, residual=False)


def plain34(*, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """Plain-34: ResNet-34's stack with no shortcuts (the paper's Figure 3, middle)."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels, residual=False)
