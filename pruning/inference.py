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


def timing_form(model: nn.Module) -> nn.Module:
    """`inference_form`, and channels-last when its weights are on the CPU: how latency is timed."""
    form = inference_form(model)
    on_cpu = all(p.device.type == "cpu" for p in form.parameters())
    return form.to(memory_format=torch.channels_last) if on_cpu else form
