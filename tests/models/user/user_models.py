"""Networks as users write them, for the "your own model" tests (factories for --model FILE:NAME)."""

from __future__ import annotations

import torch
from torch import nn


def build(n_in: int = 40, n_classes: int = 4, width: int = 32) -> nn.Module:
    """A flat-feature MLP with batch norm and dropout, as a Sequential."""
    return nn.Sequential(
        nn.Linear(n_in, width),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(width, width // 2, bias=False),
        nn.BatchNorm1d(width // 2),
        nn.ReLU(),
        nn.Linear(width // 2, n_classes),
    )


class SmallCNN(nn.Module):
    """A CNN with batch norm and global average pooling, with an ordinary forward."""

    def __init__(self, in_ch: int = 1, n_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Conv1dNet(nn.Module):
    """A 1-D convolutional network over (channels, length) signals."""

    def __init__(self, in_ch: int = 2, n_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(4)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(4, 8, 3)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 * 6, n_classes)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.conv2(x))
        return self.softmax(self.fc(self.flatten(x)))


def with_gelu() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 16), nn.GELU(), nn.Linear(16, 4))


def raises() -> nn.Module:
    raise ValueError("this factory is broken on purpose")


def not_a_module() -> dict:
    return {"fc": 1}


NOT_CALLABLE = 3
