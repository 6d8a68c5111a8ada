"""Speed-up table across the model zoo: MACs reduction vs measured CPU latency reduction.

Latency depends on layer shapes, not on weight values, so each model is pruned one-shot
(uniform policy at each MACs target, L1 ranking) from its cached dense baseline when there is one,
else from its initial weights; dense and pruned are timed in the same process, in alternating rounds.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch

from pruning.apply import prune_structured
from pruning.baseline import architecture, baseline_path, build_from_arch
from pruning.checkpoint import load_checkpoint
from pruning.config import RunConfig
from pruning.cost import count_macs, count_params, paired_latency
from pruning.data import DataBundle
from pruning.policy import uniform_for_macs
from pruning.units import discover_units


def zoo_model(cfg: RunConfig, data: DataBundle, name: str) -> tuple[torch.nn.Module, str]:
    """The model's cached dense baseline for this config if trained, else its initial weights."""
    model_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": name, "kwargs": {}})})
    model = build_from_arch(architecture(model_cfg, data))
    path = baseline_path(model_cfg, data)
    if path.is_file():
        model.load_state_dict(load_checkpoint(path)["state_dict"])
        return model.eval(), "trained baseline"
    return model.eval(), "initial weights"


def zoo_rows(cfg: RunConfig, data: DataBundle, repeats: int) -> list[dict]:
    rows = []
    shape = data.input_shape
    for name in cfg.bench.zoo:
        model, weights = zoo_model(cfg, data, name)
        graph = discover_units(model, shape, "structured")
        dense_macs, dense_params = count_macs(model, shape), count_params(model)
        for target in cfg.bench.macs_targets:
            policy = uniform_for_macs(graph, target, cfg.prune.round_to, cfg.prune.max_ratio)
            pruned = prune_structured(copy.deepcopy(model), graph, policy.kept(graph, cfg.prune.round_to), "l1").eval()
            row = {"model": name, "weights": weights, "macs_target": target,
                   "macs_reduction": dense_macs / count_macs(pruned, shape),
                   "params_reduction": dense_params / count_params(pruned)}
            for batch in (1, 64):
                dense_ms, pruned_ms = paired_latency(model, pruned, shape, batch, repeats)
                row.update({f"dense_b{batch}_ms": dense_ms, f"pruned_b{batch}_ms": pruned_ms,
                            f"speedup_b{batch}": dense_ms / pruned_ms})
            row["speedup_over_macs_reduction_b64"] = row["speedup_b64"] / row["macs_reduction"]
            rows.append(row)
    return rows


def display_zoo(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": frame["model"], "MACs target": [f"{100 * t:.0f}%" for t in frame["macs_target"]],
        "MACs reduction": [f"x{v:.2f}" for v in frame["macs_reduction"]],
        "params reduction": [f"x{v:.2f}" for v in frame["params_reduction"]],
        "b1 ms dense → pruned": [f"{d:.2f} → {p:.2f}" for d, p in zip(frame["dense_b1_ms"], frame["pruned_b1_ms"])],
        "speed-up b1": [f"x{v:.2f}" for v in frame["speedup_b1"]],
        "b64 ms dense → pruned": [f"{d:.1f} → {p:.1f}" for d, p in zip(frame["dense_b64_ms"], frame["pruned_b64_ms"])],
        "speed-up b64": [f"x{v:.2f}" for v in frame["speedup_b64"]],
        "speed-up / MACs reduction (b64)": [f"{v:.2f}" for v in frame["speedup_over_macs_reduction_b64"]],
        "weights": frame["weights"]})
