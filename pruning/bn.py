"""Adaptive BatchNorm (EagleEye, Li et al. 2020): re-estimate BN statistics after pruning.

A pruned network's BN running statistics describe the dense network's activations; a few
forward passes in train mode on training data fix that, and make the validation accuracy of
a pruned-but-not-fine-tuned candidate a good predictor of its fine-tuned accuracy.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Reset every BN layer's running stats and re-estimate them as an exact average over `batches`.

    No batch (or only empty ones) keeps the statistics the model has: resetting them with nothing to re-estimate
    from would leave every layer broken."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    batches = [xb for xb in batches if len(xb)]
    if not bns or not batches:
        model.eval()
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for xb in batches:
        model(xb)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()
