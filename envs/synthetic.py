"""A fake evaluator with a known best per-unit profile: seconds to run, for testing that agents learn."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pruning.policy import SparsityPolicy
from pruning.units import UnitGraph


@dataclass
class SyntheticResult:
    accuracy: float
    macs: float
    macs_ratio: float
    params: int = 0
    kept: dict[str, int] = field(default_factory=dict)


class SyntheticEvaluator:
    """accuracy = 1 - mean squared distance between the policy's ratios and `optimum` (one ratio per unit)."""

    def __init__(self, graph: UnitGraph, optimum: np.ndarray, round_to: int = 1):
        if len(optimum) != len(graph.units):
            raise ValueError(f"`optimum` needs one ratio per unit ({len(graph.units)}), got {len(optimum)}")
        self.graph, self.optimum, self.round_to = graph, np.asarray(optimum, dtype=np.float64), round_to
        self.calls = 0

    def distance(self, policy: SparsityPolicy) -> float:
        return float(np.sqrt(np.mean((policy.vector(self.graph) - self.optimum) ** 2)))

    def evaluate(self, policy: SparsityPolicy) -> SyntheticResult:
        self.calls += 1
        kept = policy.kept(self.graph, self.round_to)
        macs = self.graph.macs(kept)
        return SyntheticResult(1.0 - self.distance(policy) ** 2, macs, macs / self.graph.dense_macs, kept=kept)
