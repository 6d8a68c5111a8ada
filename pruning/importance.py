"""Importance criteria: which channels (structured) or weights (unstructured) go first.

Channel criteria are torch-pruning's group importances, so coupled layers score together.
Taylor is the seed article's first-order criterion |w * dL/dw| on gradients accumulated
over a few training batches (`accumulate_gradients`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from pruning.data import DataBundle, iterate_batches

Criterion = Literal["l1", "l2", "taylor", "lamp"]
CRITERIA: tuple[str, ...] = ("l1", "l2", "taylor", "lamp")


def channel_importance(criterion: str) -> tp.importance.Importance:
    """A torch-pruning group importance for `criterion`."""
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    if criterion == "lamp":
        return tp.importance.LAMPImportance(p=2)
    raise ValueError(f"`criterion` must be one of {CRITERIA}, got {criterion!r}")


def weight_scores(criterion: str, weight: torch.Tensor) -> torch.Tensor:
    """Per-weight scores for unstructured pruning (higher = keep)."""
    if criterion == "taylor":
        if weight.grad is None:
            raise ValueError("taylor importance needs gradients: call accumulate_gradients first")
        return (weight.detach() * weight.grad).abs()
    if criterion == "lamp":  # LAMP (Lee et al. 2021): w^2 over the sum of w^2 of all weights at least as large
        sq = weight.detach().flatten() ** 2
        sorted_sq, order = sq.sort()
        tail = sorted_sq.flip(0).cumsum(0).flip(0)
        scores = torch.empty_like(sq)
        scores[order] = sorted_sq / tail.clamp_min(1e-12)
        return scores.view_as(weight)
    if criterion in ("l1", "l2"):
        return weight.detach().abs() if criterion == "l1" else weight.detach() ** 2
    raise ValueError(f"`criterion` must be one of {CRITERIA}, got {criterion!r}")


def needs_gradients(criterion: str) -> bool:
    return criterion == "taylor"


def accumulate_gradients(model: nn.Module, data: DataBundle, batches: int, batch_size: int = 128) -> None:
    """Sum dL/dw over the first `batches` training batches into `.grad` (eval mode: BN statistics untouched)."""
    device = next(model.parameters()).device
    model.eval()
    model.zero_grad(set_to_none=True)
    for xb, yb in iterate_batches(data.x_train, data.y_train, batch_size, limit=batches):
        F.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
