"""Each conv and linear layer of a pruned model timed in place, beside the latency table's entry for its shape.

A table (`pruning.latency_table`) times every layer alone; a model runs them in sequence, where caches, layout
and dispatch differ. When a policy's measured latency ratio disagrees with the table's prediction, this says
whether some layers' shapes cost more in place than alone (a shape-specific miss the table would need to learn)
or every layer costs about the same amount more (an offset that cancels in the ratio). Used by
`python -m bench.latency_model --layers`.
"""

from __future__ import annotations

import statistics
import time

import pandas as pd
import torch
from torch import nn

from pruning.inference import timing_form
from pruning.latency_table import LatencyTable


@torch.no_grad()
def in_place_ms(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, repeats: int) -> dict[str, float]:
    """Median ms of each conv/linear layer's forward inside whole forward passes of `model` as deployed.

    Timed by forward hooks, which add their own small cost to every layer alike; whole-model latency comes
    from `pruning.cost`, not from the sum of these.
    """
    form = timing_form(model, input_shape)
    layers = {n: m for n, m in form.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    device = next(iter(form.parameters())).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started: dict[str, float] = {}
    times: dict[str, list[float]] = {n: [] for n in layers}

    def before(name: str):
        def hook(module, inputs):
            sync()
            started[name] = time.perf_counter()
        return hook

    def after(name: str):
        def hook(module, inputs, output):
            sync()
            times[name].append((time.perf_counter() - started[name]) * 1000)
        return hook

    handles = [h for n, m in layers.items() for h in (m.register_forward_pre_hook(before(n)),
                                                       m.register_forward_hook(after(n)))]
    x = torch.randn(batch_size, *input_shape, device=device)
    try:
        for _ in range(3):
            form(x)
        for samples in times.values():
            samples.clear()
        for _ in range(repeats):
            form(x)
    finally:
        for handle in handles:
            handle.remove()
    return {n: statistics.median(t) for n, t in times.items() if t}


def layer_rows(policy: str, table: LatencyTable, kept: dict[str, int], measured: dict[str, float]) -> list[dict]:
    """One row per layer the pruned model still runs: its channels, the table's ms and the in-place ms."""
    rows = []
    for name, (cin, cout) in table.layer_channels(kept).items():
        if cin == 0 or cout == 0 or name not in measured:  # inside a removed residual block
            continue
        entry = table.entries[table.layers[name].geometry][f"{cin},{cout}"]
        rows.append({"policy": policy, "layer": name, "in_channels": cin, "out_channels": cout, "table_ms": entry,
                     "in_place_ms": measured[name], "excess_ms": measured[name] - entry})
    return rows


def summarise_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """Per policy: the layers' summed table and in-place ms, and how evenly the excess spreads over them."""
    grouped = frame.groupby("policy", sort=False)
    return pd.DataFrame({"layers": grouped.size(), "table_ms": grouped["table_ms"].sum(),
                         "in_place_ms": grouped["in_place_ms"].sum(),
                         "excess_ms_median": grouped["excess_ms"].median(),
                         "excess_ms_max": grouped["excess_ms"].max(),
                         "worst_layer": grouped.apply(lambda g: g.loc[g["excess_ms"].idxmax(), "layer"],
                                                      include_groups=False)}).reset_index()
