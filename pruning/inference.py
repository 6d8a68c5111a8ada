"""The form a deployment runs: eval mode, each BatchNorm folded into the conv or linear layer before it.

Latency figures and the TorchScript/ONNX exports use this form, so a pruned model and its dense
baseline are timed as they would ship. Folding removes one memory-bound pass over every conv's
output; that pass shrinks only with the channel count while a conv's MACs shrink with its input and
output channels, so leaving it in understates what pruning buys.
"""

from __future__ import annotations

import copy
import logging

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
