"""Cost of a model: MACs and parameters (dense and non-zero), and measured latency.

MACs count convolutions and linear layers, the layers pruning changes (BN, ReLU and
pooling add well under 1% on the zoo). The same per-layer figures feed the analytic cost
model in `pruning.units`, so a policy's predicted MACs equal the pruned model's measured MACs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from pruning.inference import timing_form

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerShape:
    """What one conv/linear layer sees on a single input."""

    macs: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


def layer_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerShape]:
    """MACs and spatial sizes of every conv/linear layer for one input, by forward hooks."""
    shapes: dict[str, LayerShape] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0]
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                macs = output.shape[2] * output.shape[3] * module.out_channels * (module.in_channels // module.groups) * k
                shapes[name] = LayerShape(int(macs), (x.shape[2], x.shape[3]), (output.shape[2], output.shape[3]))
            else:
                rows = x.numel() // x.shape[-1]
                shapes[name] = LayerShape(int(rows * module.in_features * module.out_features), (1, 1), (1, 1))
        return record

    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        device = next(iter(model.parameters()), torch.empty(0)).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def count_macs(model: nn.Module, input_shape: tuple[int, ...], dense: bool = True) -> float:
    """Conv/linear MACs for one input; with dense=False each layer counts only its non-zero weights."""
    shapes = layer_shapes(model, input_shape)
    if dense:
        return float(sum(s.macs for s in shapes.values()))
    modules = dict(model.named_modules())
    total = 0.0
    for name, shape in shapes.items():
        weight = modules[name].weight
        total += shape.macs * float((weight != 0).sum()) / weight.numel()
    return total


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    if nonzero:
        return int(sum((p != 0).sum().item() for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


@dataclass(frozen=True)
class Latency:
    batch_size: int
    median_ms: float
    p90_ms: float
    threads: int
    repeats: int
    min_ms: float = float("nan")
    """The fastest pass: other load on the machine only ever slows a pass down, so this estimates the uncontended
    cost where the median gives what a loaded machine does. Neither is steady where the CPU's own speed drifts
    (this project's 2-core VM moved both by up to 40% between two re-timings)."""


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, repeats: int = 30,
                    warmup: int = 5) -> Latency:
    """Median wall time of one forward pass of the model as deployed (BN folded, channels-last on a CPU;
    see `pruning.inference`) after warm-up, CUDA synchronised when on a GPU."""
    return time_forward(timing_form(model, input_shape), input_shape, batch_size, repeats, warmup)


@dataclass(frozen=True)
class PairedLatency:
    """Two models timed in alternating rounds at one batch size: medians, and the speed-up's spread over rounds."""

    batch_size: int
    dense_ms: float
    pruned_ms: float
    speedup_low: float
    """The smallest of the per-round speed-ups (dense ms / pruned ms of one round)."""
    speedup_high: float
    rounds: int
    threads: int
    dense_min_ms: float = float("nan")
    """The fastest pass of each model over all rounds (`Latency.min_ms`)."""
    pruned_min_ms: float = float("nan")

    @property
    def speedup(self) -> float:
        """Median dense ms over median pruned ms."""
        return self.dense_ms / self.pruned_ms

    @property
    def speedup_fastest(self) -> float:
        """Fastest dense pass over fastest pruned pass: the speed-up without the slow passes other load causes."""
        return self.dense_min_ms / self.pruned_min_ms


def compare_latency(dense: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                    repeats: int = 30, rounds: int = 5) -> PairedLatency:
    """Two models as deployed (`timing_form`), timed in alternating rounds so that drifting machine load (other
    tenants, frequency changes) falls on both alike; the per-round speed-ups show how far one figure can be trusted."""
    dense, pruned = timing_form(dense, input_shape), timing_form(pruned, input_shape)
    per_round = max(3, repeats // rounds)
    first: list[Latency] = []
    second: list[Latency] = []
    for _ in range(rounds):
        first.append(time_forward(dense, input_shape, batch_size, per_round))
        second.append(time_forward(pruned, input_shape, batch_size, per_round))
    ratios = [a.median_ms / b.median_ms for a, b in zip(first, second)]
    return PairedLatency(batch_size, statistics.median(t.median_ms for t in first),
                         statistics.median(t.median_ms for t in second), min(ratios), max(ratios), rounds,
                         torch.get_num_threads(), min(t.min_ms for t in first), min(t.min_ms for t in second))


def paired_latency(dense: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                   repeats: int = 30, rounds: int = 5) -> tuple[float, float]:
    """Median latency (ms) of two models as deployed, timed in alternating rounds (`compare_latency`);
    returns (first, second)."""
    timed = compare_latency(dense, pruned, input_shape, batch_size, repeats, rounds)
    return timed.dense_ms, timed.pruned_ms


@torch.no_grad()
def time_forward(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, repeats: int,
                 warmup: int = 5) -> Latency:
    """Median wall time of one forward pass of `model` exactly as given (no folding, mode unchanged)."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.randn(batch_size, *input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(warmup):
        model(x)
    sync()
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return Latency(batch_size, statistics.median(times), times[int(0.9 * (len(times) - 1))], torch.get_num_threads(),
                   repeats, times[0])
