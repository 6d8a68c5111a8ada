"""User-side fixtures loaded by name ('tests.fixtures:...'), as a user's own module would be."""

import numpy as np
import torch
from torch import nn


def tiny_dataset():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 255, (90, 6, 6)), rng.integers(0, 3, 90), rng.integers(0, 255, (30, 6, 6)),
            rng.integers(0, 3, 30))


def tiny_cnn(in_channels: int, num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


# ---- user models that PrunePilot must refuse, or take with care (tests/test_user_models.py)
def not_a_module(in_channels: int, num_classes: int) -> str:
    return "resnet"


def two_extra_logits(in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes + 2))


class _WithFeatures(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


def logits_and_features(in_channels: int, num_classes: int) -> nn.Module:
    return _WithFeatures(in_channels, num_classes)


class _Attention(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        return self.fc(self.attn(tokens, tokens, tokens)[0].mean(1))


def with_attention(in_channels: int, num_classes: int) -> nn.Module:
    return _Attention(in_channels, num_classes)


def factory_that_raises(in_channels: int, num_classes: int) -> nn.Module:
    raise ValueError("weights file missing")


def classifier_only(in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def grouped_conv(in_channels: int, num_classes: int) -> nn.Module:
    """ResNeXt-style: a conv of 4 groups between two plain ones."""
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes))


class _FixedView(nn.Module):
    """Flattens with a hard-coded feature count, as many hand-written CNNs do."""

    def __init__(self, in_channels: int, num_classes: int, size: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.features = 8 * size * size
        self.hidden = nn.Linear(self.features, 16)
        self.out = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(torch.relu(self.conv(x)).view(x.shape[0], self.features))))


def fixed_view(in_channels: int, num_classes: int) -> nn.Module:
    return _FixedView(in_channels, num_classes)


def group_norm_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """GroupNorm keeps working only on a channel count divisible by its groups (4 here): prune.round_to=4."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def per_channel_group_norm_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """GroupNorm with as many groups as channels: no pruned width keeps it working."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.GroupNorm(8, 8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


class _PixelShuffled(nn.Module):
    """A sub-pixel upsampling (PixelShuffle) between convs: torch-pruning cannot follow it."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.up = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.PixelShuffle(2))
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(self.up(x)), 1), 1))


def pixel_shuffled(in_channels: int, num_classes: int) -> nn.Module:
    return _PixelShuffled(in_channels, num_classes)
