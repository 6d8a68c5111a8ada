"""The Ray Tune trial: evaluate one proposed policy on a worker with the engine's shared evaluation.

The driver builds the `Evaluator` once (dense model, validation split, fixed adaptive-BN batches,
channel rankings with their Taylor gradients) and it reaches the workers through the object store
(`tune.with_parameters`): a few MB instead of the whole dataset, and no worker recomputes rankings.
Each worker process keeps it on its device across trials (`reuse_actors=True`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from envs.layer_pruning import LayerPruningEnv
from pruning.evaluate import Evaluator
from pruning.runtime import resolve_device

_WORKER_CACHE: dict[str, tuple[Evaluator, LayerPruningEnv]] = {}


@dataclass
class TrialPayload:
    """Everything a worker needs, shipped once per search through the object store."""

    key: str
    evaluator: Evaluator
    env_kwargs: dict[str, Any]
    threads: int
    device: str


def _worker_state(payload: TrialPayload) -> tuple[Evaluator, LayerPruningEnv]:
    if payload.key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        evaluator = payload.evaluator.to(resolve_device(payload.device))
        _WORKER_CACHE[payload.key] = (evaluator, LayerPruningEnv(evaluator.graph, evaluator, **payload.env_kwargs))
    return _WORKER_CACHE[payload.key]


def evaluate_policy_trial(config: dict, payload: TrialPayload) -> None:
    """One trial = one evaluation: clamp the proposed ratios to the budget, prune, adaptive BN, score."""
    import ray
    from ray import tune

    torch.set_num_threads(payload.threads)
    start = time.perf_counter()
    evaluator, env = _worker_state(payload)
    ready = time.perf_counter()
    policy = env.play_ratios([config["ratios"][name] for name in env.graph.names])[0]
    result = env.evaluate(policy)
    tune.report({
        "reward": env.reward(result), "accuracy": result.accuracy, "macs_ratio": result.macs_ratio,
        "macs": result.macs, "params": result.params, "ratios": dict(policy.ratios),
        "eval_seconds": time.perf_counter() - ready, "setup_seconds": ready - start,
        "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), **latency_attr(env, result.kept),
    })


def latency_attr(env: LayerPruningEnv, kept: dict[str, int]) -> dict[str, float]:
    """The policy's predicted latency ratio, for the study and the evaluations table, when the env has a table."""
    ratio = env.latency_ratio(kept)
    return {} if ratio is None else {"latency_ratio": ratio}
