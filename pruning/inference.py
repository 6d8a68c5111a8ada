"""The form a deployment runs: eval mode, each BatchNorm folded into the conv or linear layer before it.

The TorchScript/ONNX exports use this form, and latency is timed on it (`timing_form`), so a pruned
model and its dense baseline are timed as they would ship. Folding removes one memory-bound pass over
every conv's output; that pass shrinks only with the channel count while a conv's MACs shrink with
its input and output channels, so leaving it in understates what pruning buys.

On a CPU the timing form is also channels-last. Whole models ran faster so, dense and pruned alike
(`python -m bench.latency_forms`); single convs are faster channels-last from about 20 channels (up to
~2x) and somewhat slower below 16 (`python -m bench.conv_layouts`).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

log = logging.getLogger("prunepilot")


def inference_form(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with BN folded (same outputs to float rounding); `model` is untouched.

    A model torch.fx cannot trace symbolically (data-dependent control flow) comes back as an
    unfolded eval-mode copy, with a debug log line saying so.
    """
    copied = copy.deepcopy(model).eval()
    try:
        return fuse(copied, inplace=True)
    except Exception as exc:  # noqa: BLE001 - any tracing failure leaves the model as it is
        log.debug("BN not folded for %s (torch.fx could not trace it: %s)", type(model).__name__, exc)
        return copied


def runs_channels_last(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """Whether `model`'s forward works channels-last: a user model's `x.view(n, -1)` on a conv output fails
    on that layout (training and timing then stopped with a traceback), so such a model stays contiguous."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    trial = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            trial(torch.zeros(2, *input_shape, device=device).to(memory_format=torch.channels_last))
    except RuntimeError as exc:
        log.info("%s runs contiguous, not channels-last (%s)", type(model).__name__, str(exc).splitlines()[0])
        return False
    return True


def timing_form(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """`inference_form`, and channels-last when its weights are on the CPU and (given `input_shape`) its
    forward runs so: how latency is timed."""
    form = inference_form(model)
    on_cpu = all(p.device.type == "cpu" for p in form.parameters())
    if on_cpu and (input_shape is None or runs_channels_last(form, input_shape)):
        return form.to(memory_format=torch.channels_last)
    return form
