"""The architecture names edgeres builds, without importing torch: the CLI lists them when it starts, and
importing torch there made every command (and ``--help``) wait ~2 s. :mod:`edgeres.models` holds the networks
and a test keeps the two lists equal."""
from __future__ import annotations

IMAGENET = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34")
CIFAR = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
         "plain20", "plain32", "plain44", "plain56", "plain110")


def names() -> list[str]:
    """The named architectures, sorted (as :func:`edgeres.models.names`)."""
    return sorted(IMAGENET + CIFAR)
