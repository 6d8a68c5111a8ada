"""Rule baselines that return a `SparsityPolicy` meeting the same MACs target as the agents.

They go through the same evaluation function as every searcher, so comparisons are on equal footing.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch_pruning as tp
from torch import nn

from agents.agent import MAX_EPISODES_PER_EVALUATION, Evaluation
from envs.layer_pruning import LayerPruningEnv
from pruning.apply import channel_scores
from pruning.errors import UserError
from pruning.policy import SparsityPolicy, uniform_for_macs
from pruning.units import UnitGraph


def uniform(graph: UnitGraph, macs_target: float, round_to: int = 1, max_ratio: float = 0.95) -> SparsityPolicy:
    """One shared ratio for every unit, the smallest that meets the target (bisection)."""
    return uniform_for_macs(graph, macs_target, round_to, max_ratio)


def global_threshold(model: nn.Module, graph: UnitGraph, macs_target: float, scorer: tp.importance.Importance,
                     round_to: int = 1, max_ratio: float = 0.95) -> SparsityPolicy:
    """Prune the globally least important channels until the target is met; ratios follow from one threshold."""
    if graph.mode != "structured":
        raise UserError("search.searcher: global_magnitude and lamp rank channels, so they need prune.mode=structured")
    scores = channel_scores(model, graph, scorer)
    thresholds = np.unique(np.concatenate([s.numpy() for s in scores.values()]))

    def policy_at(threshold: float) -> SparsityPolicy:
        ratios = []
        for unit in graph.units:
            removed = int((scores[unit.name] <= threshold).sum())
            ratios.append(min(max_ratio, removed / unit.channels))
        return SparsityPolicy.from_ratios(graph, ratios)

    low, high = -1, len(thresholds) - 1  # invariant: policy_at(thresholds[high]) meets the target (or nothing does)
    while high - low > 1:
        mid = (low + high) // 2
        if policy_at(float(thresholds[mid])).macs_ratio(graph, round_to) <= macs_target:
            high = mid
        else:
            low = mid
    return policy_at(float(thresholds[high]))


def global_magnitude(model: nn.Module, graph: UnitGraph, macs_target: float, round_to: int = 1,
                     max_ratio: float = 0.95) -> SparsityPolicy:
    """Global L2 magnitude, compared across layers without normalisation."""
    return global_threshold(model, graph, macs_target, tp.importance.GroupMagnitudeImportance(p=2, normalizer=None),
                            round_to, max_ratio)


def lamp(model: nn.Module, graph: UnitGraph, macs_target: float, round_to: int = 1,
         max_ratio: float = 0.95) -> SparsityPolicy:
    """LAMP scores (Lee et al. 2021; torch-pruning's LAMPImportance), comparable across layers."""
    return global_threshold(model, graph, macs_target, tp.importance.LAMPImportance(p=2), round_to, max_ratio)


def random_search(env: LayerPruningEnv, evaluations: int, seed: int = 0,
                  on_evaluation: Callable[[Evaluation], None] | None = None) -> list[Evaluation]:
    """EagleEye: random per-unit ratios (through the env's budget clamp), each scored with adaptive BN.

    A draw that repeats a scored policy costs nothing and does not count (as for every searcher).
    """
    rng = np.random.default_rng(seed)
    results: list[Evaluation] = []
    for draw in range(evaluations * MAX_EPISODES_PER_EVALUATION):
        if len(results) == evaluations:
            break
        env.reset(seed=seed + draw)
        done, reward, info = False, 0.0, {}
        while not done:
            _, reward, done, _, info = env.step(rng.uniform(-1.0, 1.0, 1).astype(np.float32))
        if info["repeat"]:
            continue
        evaluation = Evaluation(len(results), info["policy"], info["accuracy"], info["macs_ratio"], float(reward))
        results.append(evaluation)
        if on_evaluation:
            on_evaluation(evaluation)
    return results


RULES: dict[str, Callable[..., SparsityPolicy]] = {"uniform": lambda model, graph, *a: uniform(graph, *a),
                                                    "global_magnitude": global_magnitude, "lamp": lamp}


def rule_policy(name: str, model: nn.Module, graph: UnitGraph, macs_target: float, round_to: int = 1,
                max_ratio: float = 0.95) -> SparsityPolicy:
    return RULES[name](model, graph, macs_target, round_to, max_ratio)
