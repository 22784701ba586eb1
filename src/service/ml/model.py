"""The MNIST CNN, and a name -> class registry so checkpoints name their architecture."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class MnistCNN(nn.Module):
    """conv 32 -> conv 64 -> max-pool -> dropout -> fc 128 -> dropout -> fc 10, log-softmax."""

    version = 1

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mnist-cnn": MnistCNN}


def architecture_version(name: str) -> int:
    return int(getattr(ARCHITECTURES[name], "version", 1))


def build_model(name: str = "mnist-cnn", **kwargs: object) -> nn.Module:
    """Instantiate a registered architecture by name."""
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {name!r}; known: {known}") from None
    return factory(**kwargs)
