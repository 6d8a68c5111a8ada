"""Building environments: from nothing (a small CNN on digits), from a config file, or from a model and data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from envs.layer_pruning import LayerPruningEnv, PolicyEvaluator
from pruning.baseline import get_baseline
from pruning.config import RunConfig, load_config
from pruning.data import DataBundle, load_data
from pruning.errors import UserError
from pruning.evaluate import EvalSettings, Evaluator
from pruning.latency_table import LatencyTable
from pruning.runtime import resolve_device, seed_everything
from pruning.units import UnitGraph, configured_units

DEFAULT_OVERRIDES = [
    "data.name=digits", "model.name=vgg_small", "model.kwargs={widths: [16, 16, M, 32, 32, M, 64]}",
    "train.epochs=10", "train.batch_size=64", "train.lr=0.05", "train.augment=false", "eval.bn_batches=4",
    "eval.bn_batch_size=64", "prune.importance=l1",
]


def check_env_settings(cfg: RunConfig) -> None:
    """Env settings valid alone but not together, checked where an env is built (a bench variant may set one for the
    runs whose overrides set the other)."""
    if cfg.env.latency_features and cfg.env.latency_weight == 0:
        raise UserError("env.latency_features: the features describe the latency the reward prices; "
                        "set env.latency_weight > 0 (and env.latency_table)")


def env_kwargs(cfg: RunConfig) -> dict[str, Any]:
    check_env_settings(cfg)
    e = cfg.env
    kwargs: dict[str, Any] = dict(macs_target=e.macs_target, r_min=e.r_min, r_max=e.r_max, reward=e.reward,
                                  reward_lambda=e.reward_lambda, round_to=cfg.prune.round_to, budget=e.budget,
                                  remove_blocks=e.remove_blocks)
    if e.latency_weight > 0:
        if e.latency_table is None:
            raise UserError("env.latency_table: env.latency_weight > 0 needs a table; `prunepilot latency-table CONFIG "
                            "--out FILE` measures one (a search measures its own when none is given)")
        kwargs.update(latency_table=LatencyTable.load(e.latency_table), latency_weight=e.latency_weight,
                      latency_target=e.latency_target, latency_features=e.latency_features)
    return kwargs


def load_run_data(cfg: RunConfig) -> DataBundle:
    return load_data(cfg.data.name, cfg.data.path, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)


def build_env(cfg: RunConfig, model: nn.Module, data: DataBundle, graph: UnitGraph | None = None,
              evaluator: PolicyEvaluator | None = None, deferred: bool = False, **overrides: Any) -> LayerPruningEnv:
    """An environment over `model` on `data` with the config's env and eval settings (keywords override)."""
    graph = graph or configured_units(model, data.input_shape, cfg.prune)
    if evaluator is None and not deferred:
        evaluator = Evaluator(model, data, graph, EvalSettings.from_config(cfg))
    return LayerPruningEnv(graph, evaluator, deferred=deferred, **{**env_kwargs(cfg), **overrides})


def make_env(config: str | Path | RunConfig | None = None, overrides: list[str] | None = None,
             deferred: bool = False, show_progress: bool = False, **env_overrides: Any) -> LayerPruningEnv:
    """Entry point of `prunepilot/LayerPruning-v0`.

    With no arguments: a small VGG on scikit-learn digits, trained in seconds on first use and cached.
    With a config path (or RunConfig): that config's model, data and baseline.
    """
    if isinstance(config, RunConfig):
        cfg = config
    elif config is None:
        cfg = load_config(None, DEFAULT_OVERRIDES + list(overrides or []))
    else:
        cfg = load_config(config, overrides)
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    data = load_run_data(cfg).to(device)
    with torch.random.fork_rng():
        base = get_baseline(cfg, data, device, generator, show_progress=show_progress)
    return build_env(cfg, base.model, data, deferred=deferred, **env_overrides)
