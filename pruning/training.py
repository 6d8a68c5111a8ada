"""Training, fine-tuning (optionally distilled from a dense teacher) and accuracy evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pruning.data import DataBundle, augment_batch, iterate_batches


@dataclass(frozen=True)
class Recipe:
    """How to train: the dense baseline uses the config's `train` section, fine-tuning a short variant."""

    epochs: float
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    augment: bool | str = True
    """True: crop and flip; "crop": the crop alone; False: neither (`train.augment`)."""
    distill: float = 0.0
    distill_temperature: float = 4.0


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` in eval mode on in-memory tensors."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for xb, yb in iterate_batches(x, y, batch_size):
        correct += (model(xb.to(device, non_blocking=True)).argmax(1) == yb.to(device)).sum().item()
    return correct / max(1, len(y))


def _scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int):
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total_steps,
                                                   pct_start=0.15, anneal_strategy="linear",
                                                   div_factor=10.0, final_div_factor=100.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss, scaled by T^2 so its gradient size does not depend on T."""
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean") * temperature ** 2


def train(model: nn.Module, data: DataBundle, recipe: Recipe, generator: torch.Generator,
          teacher: nn.Module | None = None, description: str = "train", show_progress: bool = True) -> list[float]:
    """Train `model` in place on the training split for `recipe.epochs` (fractions allowed); return per-step losses."""
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(data.y_train) / recipe.batch_size)
    total_steps = int(round(recipe.epochs * steps_per_epoch))
    if total_steps <= 0:
        return []
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov and recipe.momentum > 0, weight_decay=recipe.weight_decay)
    scheduler = _scheduler(optimizer, recipe, total_steps)
    if teacher is not None:
        teacher.eval()
    losses: list[float] = []
    bar = tqdm(total=total_steps, desc=description, unit="step", disable=not show_progress, leave=False)
    while len(losses) < total_steps:
        model.train()
        for xb, yb in iterate_batches(data.x_train, data.y_train, recipe.batch_size, shuffle=True, generator=generator):
            if len(losses) >= total_steps:
                break
            if recipe.augment:
                xb = augment_batch(xb, generator, flip=recipe.augment is True)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=recipe.label_smoothing)
            if teacher is not None and recipe.distill > 0:
                with torch.no_grad():
                    teacher_logits = teacher(xb)
                loss = (1 - recipe.distill) * loss + recipe.distill * distillation_loss(
                    logits, teacher_logits, recipe.distill_temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(1)
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")
    bar.close()
    model.eval()
    return losses
