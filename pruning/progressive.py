"""The final pass: progressive prune-finetune from dense to a policy (the seed articles' prune, fine-tune, repeat).

K steps on the cubic schedule; at each step importance is re-estimated on the current
model (Taylor by default), the lowest-ranked channels go, and the model is fine-tuned
(optionally distilled from the dense teacher) before the next step; a longer fine-tune ends it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from pruning.apply import current_kept, make_permanent, prune_structured, prune_unstructured
from pruning.bn import recalibrate_batchnorm
from pruning.config import RunConfig
from pruning.cost import count_params
from pruning.data import DataBundle, iterate_batches
from pruning.importance import accumulate_gradients, needs_gradients
from pruning.policy import SparsityPolicy
from pruning.schedule import cubic_schedule
from pruning.training import Recipe, evaluate_accuracy, train
from pruning.units import UnitGraph


@dataclass(frozen=True)
class ProgressiveSettings:
    steps: int = 4
    finetune_epochs: float = 1.0
    final_epochs: float = 5.0
    lr: float = 0.01
    batch_size: int = 128
    criterion: str = "taylor"
    round_to: int = 1
    taylor_batches: int = 8
    distill: float = 0.0
    distill_temperature: float = 4.0
    bn_batches: int = 20
    augment: bool | str = True

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "ProgressiveSettings":
        p = cfg.prune
        return cls(steps=p.steps, finetune_epochs=p.finetune_epochs, final_epochs=p.final_epochs, lr=p.finetune_lr,
                   batch_size=cfg.train.batch_size, criterion=p.importance, round_to=p.round_to,
                   taylor_batches=p.taylor_batches, distill=p.distill, distill_temperature=p.distill_temperature,
                   bn_batches=cfg.eval.bn_batches, augment=cfg.train.augment)


@dataclass
class StepRecord:
    step: int
    schedule_fraction: float
    macs: float
    macs_ratio: float
    params: int
    val_accuracy_pruned: float
    """Right after pruning, with adaptive BN."""
    val_accuracy_finetuned: float
    finetune_epochs: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def step_targets(graph: UnitGraph, policy: SparsityPolicy, fraction: float, round_to: int) -> dict[str, int]:
    """Kept counts at one step: each unit at `fraction` of its final ratio, rounded like the final policy.

    A residual block the policy removes (ratio 1) shrinks with the schedule and goes at the last step; removing
    it at the first step instead was tried and did no better after the pass (results/bench/README.md, block removal)."""
    step = round_to if graph.mode == "structured" else 1
    return {u.name: graph.kept(u, policy.ratios.get(u.name, 0.0) * fraction, step) for u in graph.units}


def progressive_prune(model: nn.Module, data: DataBundle, graph: UnitGraph, policy: SparsityPolicy,
                      settings: ProgressiveSettings, generator: torch.Generator, teacher: nn.Module | None = None,
                      show_progress: bool = True, on_step: Callable[[StepRecord], None] | None = None
                      ) -> tuple[nn.Module, list[StepRecord]]:
    """Prune `model` in place to `policy` over `settings.steps` steps; return it and one record per step."""
    calibration = [xb for xb, _ in iterate_batches(data.x_train, data.y_train, 128, limit=settings.bn_batches)]
    records: list[StepRecord] = []
    fractions = cubic_schedule(1.0, settings.steps)
    for step in range(1, settings.steps + 1):
        start = time.perf_counter()
        targets = step_targets(graph, policy, fractions[step], settings.round_to)
        if needs_gradients(settings.criterion):
            accumulate_gradients(model, data, settings.taylor_batches, settings.batch_size)
        if graph.mode == "structured":
            prune_structured(model, graph, targets, settings.criterion)
        else:
            prune_unstructured(model, graph, targets, settings.criterion, permanent=False)
        model.zero_grad(set_to_none=True)
        recalibrate_batchnorm(model, calibration)
        pruned_acc = evaluate_accuracy(model, data.x_val, data.y_val)
        epochs = settings.final_epochs if step == settings.steps else settings.finetune_epochs
        recipe = Recipe(epochs=epochs, batch_size=settings.batch_size, lr=settings.lr, schedule="cosine",
                        augment=settings.augment,
                        distill=settings.distill if teacher is not None else 0.0,
                        distill_temperature=settings.distill_temperature)
        train(model, data, recipe, generator, teacher=teacher, description=f"fine-tune step {step}/{settings.steps}",
              show_progress=show_progress)
        kept = current_kept(model, graph)
        macs = graph.macs(kept)
        record = StepRecord(step, fractions[step], macs, macs / graph.dense_macs,
                            count_params(model, nonzero=graph.mode == "unstructured"), pruned_acc,
                            evaluate_accuracy(model, data.x_val, data.y_val), epochs, time.perf_counter() - start)
        records.append(record)
        if on_step is not None:
            on_step(record)
    if graph.mode == "unstructured":
        make_permanent(model)
    return model, records
