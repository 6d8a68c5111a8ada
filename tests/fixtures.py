"""User-side fixtures loaded by name ('tests.fixtures:...'), as a user's own module would be."""

import numpy as np
from torch import nn


def tiny_dataset():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 255, (90, 6, 6)), rng.integers(0, 3, 90), rng.integers(0, 255, (30, 6, 6)),
            rng.integers(0, 3, 30))


def tiny_cnn(in_channels: int, num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
