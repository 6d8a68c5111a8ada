"""The one evaluation function used by the environment, the trials, the baselines and the benchmarks.

policy -> pruned copy of the dense model -> adaptive BN on fixed training batches -> accuracy on
the validation split (never test) + MACs/params (+ latency on request).

Everything that does not depend on the policy is done once in `Evaluator.__init__`: the
BN-calibration batches are fixed tensors, the validation tensors stay where they are, and
channel rankings of the dense model (gradients included, for Taylor) are computed once.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pruning.apply import channel_rankings, prune_structured, prune_unstructured, weight_score_table
from pruning.bn import recalibrate_batchnorm
from pruning.config import RunConfig
from pruning.cost import count_params, measure_latency
from pruning.data import DataBundle
from pruning.importance import accumulate_gradients, needs_gradients
from pruning.policy import SparsityPolicy
from pruning.training import evaluate_accuracy
from pruning.units import UnitGraph


@dataclass
class EvalSettings:
    """What the evaluation needs beyond the policy (from the config's prune and eval sections)."""

    criterion: str = "l1"
    round_to: int = 1
    bn_batches: int = 20
    bn_batch_size: int = 128
    val_batch_size: int = 1000
    val_limit: int | None = None
    taylor_batches: int = 8
    latency_repeats: int = 30

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "EvalSettings":
        return cls(criterion=cfg.prune.importance, round_to=cfg.prune.round_to, bn_batches=cfg.eval.bn_batches,
                   bn_batch_size=cfg.eval.bn_batch_size, val_batch_size=cfg.eval.val_batch_size,
                   val_limit=cfg.eval.val_limit, taylor_batches=cfg.prune.taylor_batches,
                   latency_repeats=cfg.eval.latency_repeats)


@dataclass
class EvalResult:
    accuracy: float
    macs: float
    params: int
    macs_ratio: float
    params_ratio: float
    kept: dict[str, int]
    seconds: float
    latency_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class Evaluator:
    """Scores policies for one dense model on one dataset; cheap to call many times."""

    def __init__(self, model: nn.Module, data: DataBundle, graph: UnitGraph, settings: EvalSettings):
        self.settings = settings
        self.graph = graph
        self.device = next(model.parameters()).device
        self.dense = copy.deepcopy(model).eval()
        self.input_shape = tuple(data.x_train.shape[1:])
        n_val = settings.val_limit or len(data.y_val)
        self.x_val, self.y_val = data.x_val[:n_val], data.y_val[:n_val]
        # fixed calibration batches: the same policy always gets the same statistics (and the same score)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(data.y_train), generator=generator)[: settings.bn_batches * settings.bn_batch_size]
        self.bn_batches = [data.x_train[idx.to(data.x_train.device)].to(self.device)
                           for idx in order.split(settings.bn_batch_size) if len(idx)]  # bn_batches=0: none
        self.dense_params = count_params(self.dense)
        self.dense_accuracy = evaluate_accuracy(self.dense, self.x_val, self.y_val, settings.val_batch_size)
        scored = copy.deepcopy(self.dense)
        if needs_gradients(settings.criterion):
            accumulate_gradients(scored, data, settings.taylor_batches)
        self.rankings = channel_rankings(scored, graph, settings.criterion) if graph.mode == "structured" else None
        self.weight_scores = weight_score_table(scored, graph, settings.criterion) if graph.mode == "unstructured" else None

    def to(self, device: torch.device | str) -> "Evaluator":
        """This evaluator on `device` (a copy when it moves): built once, then shipped to workers as it is."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = copy.copy(self)
        moved.device = device
        moved.dense = copy.deepcopy(self.dense).to(device)
        moved.x_val, moved.y_val = self.x_val.to(device), self.y_val.to(device)
        moved.bn_batches = [batch.to(device) for batch in self.bn_batches]
        if self.weight_scores is not None:
            moved.weight_scores = {name: score.to(device) for name, score in self.weight_scores.items()}
        return moved

    def on_images(self, x: torch.Tensor, y: torch.Tensor) -> "Evaluator":
        """This evaluator scoring on other images, with the same dense model, BN calibration batches and channel
        rankings: a policy's two scores then differ by the images alone (how `bench.heldout` re-scores a search)."""
        other = copy.copy(self)
        other.x_val, other.y_val = x.to(self.device), y.to(self.device)
        other.dense_accuracy = evaluate_accuracy(self.dense, other.x_val, other.y_val, self.settings.val_batch_size)
        return other

    def prune_copy(self, policy: SparsityPolicy) -> tuple[nn.Module, dict[str, int]]:
        """A pruned copy of the dense model (no BN recalibration yet) and its kept counts."""
        kept = policy.kept(self.graph, self.settings.round_to)
        model = copy.deepcopy(self.dense)
        if self.graph.mode == "structured":
            prune_structured(model, self.graph, kept, self.settings.criterion, self.rankings)
        else:
            prune_unstructured(model, self.graph, kept, self.settings.criterion, scores=self.weight_scores)
        model.zero_grad(set_to_none=True)
        return model, kept

    def evaluate(self, policy: SparsityPolicy, latency: bool = False) -> EvalResult:
        start = time.perf_counter()
        model, kept = self.prune_copy(policy)
        recalibrate_batchnorm(model, self.bn_batches)
        accuracy = evaluate_accuracy(model, self.x_val, self.y_val, self.settings.val_batch_size)
        macs = self.graph.macs(kept)
        params = count_params(model, nonzero=self.graph.mode == "unstructured")
        result = EvalResult(accuracy, macs, params, macs / self.graph.dense_macs, params / self.dense_params,
                            kept, time.perf_counter() - start)
        if latency:
            for batch in (1, 64):
                result.latency_ms[f"b{batch}"] = measure_latency(model, self.input_shape, batch,
                                                                 self.settings.latency_repeats).median_ms
        return result
