"""Global-first analyses (the seed article's hierarchy): uniform sweeps and per-unit sensitivity."""

from __future__ import annotations

from typing import Callable

from pruning.evaluate import Evaluator
from pruning.policy import SparsityPolicy


def uniform_sweep(evaluator: Evaluator, ratios: list[float],
                  progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Adaptive-BN validation accuracy, MACs and params of the uniform policy at each ratio."""
    rows = []
    for i, ratio in enumerate(ratios):
        result = evaluator.evaluate(SparsityPolicy.uniform(evaluator.graph, ratio))
        rows.append({"ratio": ratio, "accuracy": result.accuracy, "macs_ratio": result.macs_ratio,
                     "params_ratio": result.params_ratio, "macs": result.macs, "params": result.params})
        if progress:
            progress(i + 1, len(ratios))
    return rows


def largest_ratio_above(rows: list[dict], accuracy_floor: float) -> dict | None:
    """The sweep row with the largest ratio whose accuracy is at least `accuracy_floor` (None if none is)."""
    passing = [r for r in rows if r["accuracy"] >= accuracy_floor]
    return max(passing, key=lambda r: r["ratio"]) if passing else None


def sensitivity(evaluator: Evaluator, ratios: list[float],
                progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Accuracy drop when one unit alone is pruned at each ratio, the others left dense."""
    graph = evaluator.graph
    base = evaluator.dense_accuracy
    rows, total = [], len(graph.units) * len(ratios)
    for unit in graph.units:
        for ratio in ratios:
            result = evaluator.evaluate(SparsityPolicy(dict.fromkeys(graph.names, 0.0) | {unit.name: ratio},
                                                       graph.fingerprint, graph.mode))
            rows.append({"unit": unit.name, "index": unit.index, "ratio": ratio, "accuracy": result.accuracy,
                         "drop": base - result.accuracy, "macs_ratio": result.macs_ratio})
            if progress:
                progress(len(rows), total)
    return rows
