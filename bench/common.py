"""Shared pieces of the benchmarks: the run's baseline and a results writer."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from pruning.baseline import get_baseline
from pruning.checkpoint import atomic_write_text
from pruning.config import RunConfig, load_config
from pruning.data import load_data
from pruning.runtime import resolve_device, seed_everything, set_threads

RESULTS = Path(__file__).parents[1] / "results" / "bench"


def load_run(config: str, overrides: list[str] | None = None) -> tuple[RunConfig, object, object]:
    """(config, data, baseline) for a config, training the baseline if it is not cached."""
    cfg = load_config(config, overrides)
    set_threads(cfg.threads)
    generator = seed_everything(cfg.seed)
    data = load_data(cfg.data.name, cfg.data.path, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)
    return cfg, data, get_baseline(cfg, data, resolve_device(cfg.device), generator, show_progress=False)


def write_results(name: str, payload: dict, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
                                      "torch": torch.__version__, "processor": platform.processor() or platform.machine()}}
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=2, default=str))
    atomic_write_text(RESULTS / f"{name}.md", markdown)
    return RESULTS / f"{name}.md"
