"""The engine's jobs behind the CLI: train, prune, sweep, sensitivity."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import torch

from pruning.baseline import Baseline, get_baseline
from pruning.config import RunConfig, load_config
from pruning.data import DataBundle, load_data
from pruning.runtime import resolve_device, seed_everything, set_threads

log = logging.getLogger("prunepilot")


@dataclass
class Context:
    cfg: RunConfig
    device: torch.device
    generator: torch.Generator
    data: DataBundle
    show_progress: bool


def prepare(args: argparse.Namespace) -> Context:
    """Validate the config, then set device, seed and threads and load the data once."""
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    generator = seed_everything(cfg.seed)
    data = load_data(cfg.data.name, cfg.data.path, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)
    log.info("%s | device %s | %d threads", data.summary(), device, torch.get_num_threads())
    return Context(cfg, device, generator, data.to(device), not getattr(args, "quiet", False))


def baseline_of(ctx: Context, retrain: bool = False) -> Baseline:
    base = get_baseline(ctx.cfg, ctx.data, ctx.device, ctx.generator, retrain=retrain, show_progress=ctx.show_progress)
    log.info("dense %s: val %.4f test %.4f (%s%s)", ctx.cfg.model.name, base.val_accuracy, base.test_accuracy,
             "trained now, cached at " if base.trained_now else "loaded from ", base.checkpoint)
    return base


def train_job(args: argparse.Namespace) -> int:
    baseline_of(prepare(args), retrain=args.retrain)
    return 0
