"""Predicted latency of a pruned model from a table of measured layer latencies (NetAdapt's look-up table).

MACs miss what decides CPU latency at equal MACs: a 4-channel conv runs far below the CPU's peak, so
two policies with the same MACs can differ in latency by tens of percent. Timing every proposed
model inside a search would be slow, and noisy wherever trials share cores. Instead every conv and
linear layer is timed alone once, as deployed (bias in place of the folded BN; channels-last on a
CPU), for every (input, output) channel count a policy can give it. A policy's latency is the sum of
its layers' entries plus the rest of the model (ReLU, residual adds, pooling, per-op dispatch): a fixed
part plus a part proportional to the activations kept, fitted to two whole models measured the same
way, the dense one and the one pruned as far as every unit can go. The table is saved with the run,
so the same table and seed give the same search.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning.apply import prune_structured
from pruning.checkpoint import atomic_write_text
from pruning.cost import measure_latency
from pruning.errors import UserError
from pruning.units import UnitGraph, kept_count

FORMAT = 1


@dataclass(frozen=True)
class TableLayer:
    """How one conv/linear layer's size follows the policy: the units that set its input and output channels."""

    geometry: str
    """Kind, kernel, stride, padding, groups and input size: layers with equal geometry share entries."""
    in_unit: str | None
    out_unit: str | None
    in_channels: int
    out_channels: int
    out_area: int
    depthwise: bool


@dataclass
class LatencyTable:
    """Measured layer latencies of one model (`fingerprint`) at one batch size and thread count."""

    fingerprint: str
    batch_size: int
    threads: int
    round_to: int
    device: str
    layers: dict[str, TableLayer]
    entries: dict[str, dict[str, float]]
    """geometry -> "in,out" channel counts -> median ms."""
    dense_ms: float
    """The whole dense model as deployed (`pruning.cost.measure_latency`)."""
    rest_fixed_ms: float
    rest_activation_ms: float
    """What runs outside convs and linears: rest_fixed_ms + rest_activation_ms * the fraction of activations kept."""

    def layer_channels(self, kept: dict[str, int]) -> dict[str, tuple[int, int]]:
        """(input, output) channels of every layer when each unit keeps `kept[unit]` channels."""
        channels = {}
        for name, layer in self.layers.items():
            cout = kept.get(layer.out_unit, layer.out_channels) if layer.out_unit else layer.out_channels
            cin = cout if layer.depthwise else (kept.get(layer.in_unit, layer.in_channels) if layer.in_unit
                                                else layer.in_channels)
            channels[name] = (cin, cout)
        return channels

    def activation_fraction(self, kept: dict[str, int]) -> float:
        """Conv/linear outputs kept, as a fraction of dense: what ReLUs, adds and pooling still touch (nothing of
        a removed residual block's: its last conv's output channels are the stream's, but the block is gone)."""
        channels = self.layer_channels(kept)
        kept_total = 0
        for name, layer in self.layers.items():
            cin, cout = channels[name]
            if cin > 0:  # cin 0: inside a removed residual block
                kept_total += cout * layer.out_area
        return kept_total / sum(layer.out_channels * layer.out_area for layer in self.layers.values())

    def predict_ms(self, kept: dict[str, int]) -> float:
        """Predicted latency (ms) of the model pruned to `kept` (missing units are whole)."""
        total = 0.0
        for name, (cin, cout) in self.layer_channels(kept).items():
            if cin == 0 or cout == 0:  # inside a removed residual block
                continue
            try:
                total += self.entries[self.layers[name].geometry][f"{cin},{cout}"]
            except KeyError:
                raise UserError(f"env.latency_table: no entry for layer {name} with {cin} input and {cout} output "
                                f"channels; the table was measured with round_to={self.round_to}") from None
        return total + self.rest_fixed_ms + self.rest_activation_ms * self.activation_fraction(kept)

    def ratio(self, kept: dict[str, int]) -> float:
        """Predicted latency of the pruned model as a fraction of the dense model's."""
        return self.predict_ms(kept) / self.predict_ms({})

    def check(self, graph: UnitGraph, round_to: int) -> None:
        """Raise if this table was measured for another model or another channel rounding."""
        if self.fingerprint != graph.fingerprint:
            raise UserError(f"env.latency_table: measured for another model (fingerprint {self.fingerprint}, "
                            f"this model's is {graph.fingerprint}); measure one with `prunepilot latency-table`")
        if self.round_to != round_to:
            raise UserError(f"env.latency_table: measured with round_to={self.round_to}, but prune.round_to is {round_to}")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps({"format": FORMAT, **asdict(self)}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"env.latency_table: file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"env.latency_table: {path} is not a JSON latency table ({exc})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise UserError(f"env.latency_table: {path} is not a latency table of format {FORMAT} "
                            f"(write one with `prunepilot latency-table`)")
        try:
            layers = {name: TableLayer(**layer) for name, layer in body["layers"].items()}
            return cls(**{**{k: v for k, v in body.items() if k != "format"}, "layers": layers})
        except (KeyError, TypeError) as exc:
            raise UserError(f"env.latency_table: {path} is missing or has a malformed field ({exc})") from None


def kept_options(channels: int, r_min: float, r_max: float, round_to: int) -> list[int]:
    """Every channel count a unit of `channels` can keep for ratios in [r_min, r_max], and the whole unit."""
    counts = {kept_count(channels, float(r), round_to) for r in np.linspace(r_min, r_max, 4 * channels + 1)}
    return sorted(counts | {channels})


def _geometry(module: nn.Module, in_hw: tuple[int, int], depthwise: bool) -> str:
    if isinstance(module, nn.Conv2d):
        return (f"conv k{module.kernel_size[0]}x{module.kernel_size[1]} s{module.stride[0]} p{module.padding[0]} "
                f"d{module.dilation[0]} {'dw ' if depthwise else ''}{in_hw[0]}x{in_hw[1]}")
    return "linear"


def _layer_module(geometry_of: nn.Module, cin: int, cout: int, depthwise: bool) -> nn.Module:
    if isinstance(geometry_of, nn.Conv2d):
        return nn.Conv2d(cin, cout, geometry_of.kernel_size, geometry_of.stride, geometry_of.padding,
                         geometry_of.dilation, groups=cin if depthwise else 1, bias=True)
    return nn.Linear(cin, cout)


@torch.no_grad()
def _time_module(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    for _ in range(2):
        module(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(x)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


Wanted = dict[str, tuple[nn.Module, tuple[int, int], bool, set[tuple[int, int]]]]
"""geometry -> (a layer of that geometry, its input size, depthwise, the (in, out) channel pairs to time)."""


def _plan(model: nn.Module, graph: UnitGraph, options: dict[str, list[int]]) -> tuple[dict[str, TableLayer], Wanted]:
    """Each layer's place in the table, and the channel pairs to time per geometry (shared by equal layers)."""
    modules = dict(model.named_modules())
    layers: dict[str, TableLayer] = {}
    wanted: Wanted = {}
    for name, shape in graph.shapes.items():
        module, depthwise = modules[name], name in graph.depthwise
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not depthwise:
            raise UserError(f"env.latency_table: layer {name} is a grouped conv (groups={module.groups}); latency "
                            "tables time plain and depthwise convs only")
        cin_dense = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
        cout_dense = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        out_unit, in_unit = graph.out_unit.get(name), graph.in_unit.get(name)
        geometry = _geometry(module, shape.in_hw, depthwise)
        layers[name] = TableLayer(geometry, in_unit, out_unit, cin_dense, cout_dense,
                                  shape.out_hw[0] * shape.out_hw[1], depthwise)
        outs = options[out_unit] if out_unit else [cout_dense]
        ins = outs if depthwise else (options[in_unit] if in_unit else [cin_dense])
        pairs = {(c, c) for c in outs} if depthwise else {(i, o) for i in ins for o in outs}
        wanted.setdefault(geometry, (module, shape.in_hw, depthwise, set()))[3].update(pairs)
    return layers, wanted


def _time_entries(wanted: Wanted, device: torch.device, batch_size: int, repeats: int,
                  rounds: int) -> dict[str, dict[str, float]]:
    """Median ms of every planned layer alone, rounds interleaved over all entries."""
    channels_last = device.type == "cpu"
    timed: dict[tuple[str, int, int], list[float]] = {}
    for _ in range(rounds):
        for geometry, (module, in_hw, depthwise, pairs) in wanted.items():
            for cin, cout in sorted(pairs):
                layer = _layer_module(module, cin, cout, depthwise).to(device).eval()
                if isinstance(module, nn.Conv2d):
                    x = torch.randn(batch_size, cin, *in_hw, device=device)
                    if channels_last:
                        layer, x = layer.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
                else:
                    x = torch.randn(batch_size, cin, device=device)
                timed.setdefault((geometry, cin, cout), []).append(_time_module(layer, x, repeats))
    entries: dict[str, dict[str, float]] = {}
    for (geometry, cin, cout), values in timed.items():
        entries.setdefault(geometry, {})[f"{cin},{cout}"] = statistics.median(values)
    return entries


def _fit_rest(table: LatencyTable, model: nn.Module, graph: UnitGraph, smallest: dict[str, int], repeats: int,
              rounds: int) -> None:
    """Set the table's dense_ms and its rest line from the dense and the smallest whole model, timed in rounds."""
    models = {"dense": model, "smallest": prune_structured(copy.deepcopy(model), graph, smallest)}
    measured: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, whole in models.items():
            measured[name].append(measure_latency(whole, graph.input_shape, table.batch_size, repeats).median_ms)
    dense_ms, smallest_ms = statistics.median(measured["dense"]), statistics.median(measured["smallest"])
    fraction = table.activation_fraction(smallest)
    rest_dense, rest_small = dense_ms - table.predict_ms({}), smallest_ms - table.predict_ms(smallest)
    slope = max(0.0, (rest_dense - rest_small) / (1.0 - fraction)) if fraction < 1.0 else 0.0
    table.dense_ms, table.rest_activation_ms, table.rest_fixed_ms = dense_ms, slope, max(0.0, rest_dense - slope)


def measure_latency_table(model: nn.Module, graph: UnitGraph, batch_size: int = 64, round_to: int = 1,
                          r_min: float = 0.0, r_max: float = 0.9, repeats: int = 7, rounds: int = 3) -> LatencyTable:
    """Time every conv/linear layer of `model` alone at every channel count a policy can give it.

    Each entry is the median of `rounds` medians of `repeats` calls, the rounds interleaved over all
    entries so that drifting machine load falls on each alike. Structured mode only: unstructured
    sparsity leaves dense kernels as they are, so a table could not tell policies apart.
    """
    if graph.mode != "structured":
        raise UserError("env.latency_table: latency tables need prune.mode=structured (zeroed weights leave "
                        "dense kernels as slow as before)")
    device = next(model.parameters()).device
    options = {u.name: kept_options(u.channels, r_min, r_max, round_to) for u in graph.units}
    layers, wanted = _plan(model, graph, options)
    table = LatencyTable(graph.fingerprint, batch_size, torch.get_num_threads(), round_to, device.type, layers,
                         _time_entries(wanted, device, batch_size, repeats, rounds), 0.0, 0.0, 0.0)
    _fit_rest(table, model, graph, {name: counts[0] for name, counts in options.items()}, repeats, rounds)
    return table
