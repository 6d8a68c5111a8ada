"""Latency of every comparison run's pruned model against its dense baseline, measured on a quiet machine.

Runs execute side by side, so the latency each run measured for itself shares the CPU with
another run. After the grid, this process times each pruned model and its dense baseline again,
alternating the two in rounds at batch 1 and 64, with nothing else running.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from pruning.checkpoint import load_checkpoint
from pruning.cost import compare_latency
from pruning.export import load_pruned


def run_models(folder: Path, dense_models: dict[str, torch.nn.Module]
               ) -> tuple[torch.nn.Module, torch.nn.Module, tuple[int, ...]] | None:
    """(dense baseline, final pruned model, input shape) of one finished run; None before its final pass.
    `dense_models` caches baselines by path, as runs share them."""
    if not (folder / "model.pt").is_file():
        return None
    dense_path = json.loads((folder / "summary.json").read_text())["baseline_checkpoint"]
    if dense_path not in dense_models:
        dense_models[dense_path] = load_pruned(dense_path).eval()
    shape = tuple(load_checkpoint(folder / "model.pt")["arch"]["input_shape"])
    return dense_models[dense_path], load_pruned(folder / "model.pt").eval(), shape


def quiet_latency(frame: pd.DataFrame, folders: dict[str, Path], repeats: int) -> pd.DataFrame:
    """`frame` with its latency and speed-up columns replaced by measurements taken here, in one process."""
    frame = frame.copy()
    dense_models: dict[str, torch.nn.Module] = {}
    for index, row in frame.iterrows():
        models = run_models(folders[row["run"]], dense_models)
        if models is None:
            continue
        dense, pruned, shape = models
        for batch in (1, 64):
            timed = compare_latency(dense, pruned, shape, batch, repeats)
            frame.loc[index, f"dense_latency_b{batch}_ms"] = timed.dense_ms
            frame.loc[index, f"latency_b{batch}_ms"] = timed.pruned_ms
            frame.loc[index, f"speedup_b{batch}"] = timed.speedup
            frame.loc[index, f"speedup_b{batch}_low"] = timed.speedup_low
            frame.loc[index, f"speedup_b{batch}_high"] = timed.speedup_high
            frame.loc[index, f"speedup_b{batch}_fastest"] = timed.speedup_fastest
        frame.loc[index, "latency_threads"] = torch.get_num_threads()
    if "speedup_b64" in frame and "macs_ratio" in frame:
        frame["speedup_over_macs_reduction_b64"] = frame["speedup_b64"] * frame["macs_ratio"]
    return frame
