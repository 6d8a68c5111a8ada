"""The Ray Tune trial: evaluate one proposed policy on a worker with the engine's shared evaluation.

Model weights and data arrive once through the object store (`tune.with_parameters`); each
worker process builds its `Evaluator` once and keeps it across trials (`reuse_actors=True`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from envs.layer_pruning import LayerPruningEnv
from pruning.baseline import build_from_arch
from pruning.data import DataBundle
from pruning.evaluate import EvalSettings, Evaluator
from pruning.runtime import resolve_device
from pruning.units import discover_units
from search.local import clamp_ratios

_WORKER_CACHE: dict[str, tuple[Evaluator, LayerPruningEnv]] = {}


@dataclass
class TrialPayload:
    """Everything a worker needs, shipped once per search through the object store."""

    key: str
    arch: dict
    state_dict: dict[str, torch.Tensor]
    data: DataBundle
    mode: str
    settings: EvalSettings
    env_kwargs: dict[str, Any]
    threads: int
    device: str


def _worker_state(payload: TrialPayload) -> tuple[Evaluator, LayerPruningEnv]:
    if payload.key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        device = resolve_device(payload.device)
        model = build_from_arch(payload.arch)
        model.load_state_dict(payload.state_dict)
        model = model.to(device).eval()
        data = payload.data.to(device)
        graph = discover_units(model, data.input_shape, payload.mode)
        evaluator = Evaluator(model, data, graph, payload.settings)
        _WORKER_CACHE[payload.key] = (evaluator, LayerPruningEnv(graph, evaluator, **payload.env_kwargs))
    return _WORKER_CACHE[payload.key]


def evaluate_policy_trial(config: dict, payload: TrialPayload) -> None:
    """One trial = one evaluation: clamp the proposed ratios to the budget, prune, adaptive BN, score."""
    import ray
    from ray import tune

    torch.set_num_threads(payload.threads)
    start = time.perf_counter()
    evaluator, env = _worker_state(payload)
    ready = time.perf_counter()
    policy = clamp_ratios(env, [config["ratios"][name] for name in env.graph.names])
    result = env.evaluate(policy)
    tune.report({
        "reward": env.reward(result), "accuracy": result.accuracy, "macs_ratio": result.macs_ratio,
        "macs": result.macs, "params": result.params, "ratios": dict(policy.ratios),
        "eval_seconds": time.perf_counter() - ready, "setup_seconds": ready - start,
        "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
    })
