"""The model zoo (LeNet-5, VGG-style, CIFAR-style ResNets, MobileNetV2-small) and user models.

All take `in_channels` and `num_classes`, so every model works on 1-channel Fashion-MNIST as
well as 3-channel data. Shortcuts that change shape use 1x1 convolutions (ResNet option B),
which torch-pruning couples with the residual path.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
from torch import nn

from pruning.errors import UserError, first_line


class LeNet5(nn.Module):
    """LeNet-5 as in LeCun et al. 1998 (ReLU, max pooling), the seed article's model."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.LazyLinear(120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class VGGSmall(nn.Module):
    """A VGG-style stack of 3x3 conv-BN-ReLU blocks with max pooling, then a linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 widths: tuple[Any, ...] = (32, 32, "M", 64, 64, "M", 128, 128, "M")):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(_conv_bn(channels, int(width)))
                channels = int(width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (6n+2 layers, widths 16/32/64) with projection shortcuts."""

    def __init__(self, depth: int = 20, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise UserError(f"model.depth: CIFAR ResNet depth must be 6n+2 (20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Small(nn.Module):
    """MobileNetV2 (Sandler et al.) cut to five stages for 28x28 inputs: depthwise convs, linear bottlenecks."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 1), (6, 96, 1, 1))

    def __init__(self, in_channels: int = 1, num_classes: int = 10, last_channels: int = 256):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3)]
        cin = 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn(cin, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _resnet(depth: int) -> Callable[..., nn.Module]:
    return lambda **kw: CifarResNet(depth=depth, **kw)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "vgg_small": VGGSmall,
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
    "mobilenetv2_small": MobileNetV2Small,
}


def model_factory(name: str, field: str = "model.name") -> Callable[..., nn.Module]:
    """The zoo model `name`, or a user model's 'module:factory'; `field` names the setting in errors, so that a
    bench can check its zoo and transfer model before hours of other runs."""
    factory = MODELS.get(name)
    if factory is not None:
        return factory
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UserError(f"{field}: unknown model {name!r}; expected one of {sorted(MODELS)} or 'module:factory'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{field}: cannot import {name!r} ({exc})") from None


# Layers whose channels torch-pruning would cut without our cost model counting them (so MACs and the budget
# would be wrong), or cut in ways that break them (attention heads): refused rather than half-supported.
UNSUPPORTED_LAYERS = (nn.MultiheadAttention, nn.RNNBase, nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d,
                      nn.ConvTranspose2d, nn.ConvTranspose3d)


def _where(exc: BaseException) -> str:
    """`file:line` of the innermost frame of `exc`: a user model's failure is named without a traceback dump."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return f" at {frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame is not None else ""


def check_user_model(model: object, name: str, num_classes: int, input_shape: tuple[int, int, int],
                     field: str = "model.name") -> None:
    """A factory's model must be a module that maps one input to `num_classes` logits from layers we can prune
    and count; anything else failed deep in training, or pruned and reported figures that were not true."""
    if not isinstance(model, nn.Module):
        raise UserError(f"{field}: {name} returned a {type(model).__name__}; expected a torch.nn.Module")
    unsupported = [(n, type(m).__name__) for n, m in model.named_modules() if isinstance(m, UNSUPPORTED_LAYERS)]
    if unsupported:
        listed = ", ".join(f"{n} ({kind})" for n, kind in unsupported[:3]) + (" ..." if len(unsupported) > 3 else "")
        raise UserError(f"{field}: {name} has layers PrunePilot cannot prune or count: {listed}; it prunes the "
                        f"channels of Conv2d and Linear layers (with their norms), and would cut these without "
                        f"counting their MACs")
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros(1, *input_shape))
    except Exception as exc:  # noqa: BLE001 - any failure of a user's forward on the data's shape is theirs
        raise UserError(f"{field}: {name} cannot take inputs shaped {tuple(input_shape)} "
                        f"({first_line(exc)}{_where(exc)})") from None
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, num_classes):
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else f"a {type(output).__name__}"
        raise UserError(f"{field}: {name} gives {got} for one input; expected logits shaped (1, {num_classes}), "
                        f"one per class of the data")


def build_model(name: str, in_channels: int, num_classes: int, input_shape: tuple[int, int, int] | None = None,
                **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, or a user model from 'module:factory' (called with the same keywords)."""
    factory = model_factory(name)
    try:
        model = factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise UserError(f"model.kwargs: {name} rejected its arguments ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a user's factory failing is a user error: say where, not a dump
        raise UserError(f"model.name: {name} failed ({type(exc).__name__}: {exc}{_where(exc)})") from None
    if input_shape is not None:  # also materialises lazy layers, so that parameter counts and pruning see real shapes
        shown, field = (f"{name} with {kwargs}", "model.name/model.kwargs") if kwargs else (name, "model.name")
        check_user_model(model, shown, num_classes, input_shape, field)
    return model
