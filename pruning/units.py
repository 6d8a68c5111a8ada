"""Prunable units of a model and the analytic cost model over them.

Structured mode: a unit is one torch-pruning dependency group (channels that must go
together: a residual add couples every conv writing into it, a depthwise conv follows its
expansion conv). Unstructured mode: a unit is one conv/linear layer's weights.
Units are named after their first conv/linear in module order and listed in that order,
so names are stable and the list walks the network from input to output.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import torch
import torch_pruning as tp
from torch import nn

from pruning.cost import PRUNABLE_TYPES, LayerShape, layer_shapes
from pruning.errors import UserError

if TYPE_CHECKING:
    from pruning.config import PruneConfig

Mode = Literal["structured", "unstructured"]


@dataclass(frozen=True)
class Unit:
    """One decision of a policy: its features feed the agent's layer embedding."""

    name: str
    index: int
    kind: str
    """conv, pointwise, depthwise-group, residual-group, linear."""
    channels: int
    """Prunable output channels (structured) or weights (unstructured)."""
    in_channels: int
    kernel: int
    stride: int
    in_hw: tuple[int, int]
    macs: int
    """Dense MACs of every layer whose size this unit changes (its outputs and its consumers' inputs)."""
    out_layers: tuple[str, ...]
    in_layers: tuple[str, ...]


@dataclass
class UnitGraph:
    """The prunable units of one model plus what is needed to predict MACs for any kept channel counts."""

    mode: Mode
    units: list[Unit]
    input_shape: tuple[int, ...]
    shapes: dict[str, LayerShape]
    out_unit: dict[str, str] = field(default_factory=dict)
    in_unit: dict[str, str] = field(default_factory=dict)
    depthwise: set[str] = field(default_factory=set)
    fingerprint: str = ""
    removable: dict[str, str] = field(default_factory=dict)
    """Unit name -> the residual block it is the inside of (`removable_blocks`): at ratio 1 the whole block goes."""
    grouped_whole: set[str] = field(default_factory=set)
    """Layers whose channels are kept whole because they couple to a grouped (not depthwise) conv."""

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    @property
    def dense_macs(self) -> float:
        return float(sum(s.macs for s in self.shapes.values()))

    def unit(self, name: str) -> Unit:
        return self.units[self.names.index(name)]

    @cached_property
    def _macs_terms(self) -> list[tuple[float, str, str]]:
        """(dense MACs, unit that sizes its outputs, unit that sizes its inputs) per layer, in `shapes` order."""
        return [(shape.macs, self.out_unit.get(layer, ""), "" if layer in self.depthwise else self.in_unit.get(layer, ""))
                for layer, shape in self.shapes.items()]

    def macs(self, kept: dict[str, int]) -> float:
        """Predicted conv/linear MACs when each unit keeps `kept[name]` of its channels (or weights).

        On every budget clamp of every episode (tens of calls per step): the per-layer terms are listed once.
        """
        keep = {u.name: kept.get(u.name, u.channels) / u.channels for u in self.units}
        total = 0.0
        for macs, out_unit, in_unit in self._macs_terms:
            factor = keep.get(out_unit, 1.0)
            if in_unit:
                factor *= keep.get(in_unit, 1.0)
            total += macs * factor
        return total

    def kept(self, unit: Unit, ratio: float, round_to: int = 1) -> int:
        """What `unit` keeps at `ratio`: 0 for a removable block's inner unit at ratio 1 (the block goes), else
        `kept_count`. The one rule every policy, budget clamp and pruning step goes through."""
        if ratio >= 1.0 - 1e-9 and unit.name in self.removable:
            return 0
        return kept_count(unit.channels, ratio, round_to)


def kept_count(channels: int, ratio: float, round_to: int = 1) -> int:
    """Channels kept when pruning `ratio` of `channels`: never below 1, a multiple of `round_to` when possible.

    The single rounding rule shared by the cost model, structured pruning and the progressive pass.
    """
    keep = channels - math.floor(ratio * channels + 1e-9)
    if round_to > 1 and channels > round_to:
        keep = int(round(keep / round_to)) * round_to
        keep = min(channels, max(round_to, keep))
    return max(1, min(channels, keep))


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The last linear layer: its outputs are the classes, never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def forward_batch(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The forward torch-pruning traces with: the model called once, on the batch as its one argument (see
    build_dependency_graph)."""
    return model(batch)


def build_dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """Torch-pruning's tracing, given the forward: without one it runs `model(*inputs)` under a bare `except:`
    and retries with `model(inputs)`, so a Ctrl-C during the first forward was swallowed (a search went on into
    Tune) and every trace ran the model twice (first on one unbatched image)."""
    device = next(model.parameters()).device
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape, device=device),
                                                 forward_fn=forward_batch)


def _fingerprint(mode: str, shapes: dict[str, LayerShape], modules: dict[str, nn.Module], units: list[Unit]) -> str:
    digest = hashlib.sha1(mode.encode())
    for name in shapes:
        digest.update(f"{name}:{tuple(modules[name].weight.shape)}".encode())
    for unit in units:
        digest.update(f"{unit.name}:{unit.channels}".encode())
    return digest.hexdigest()[:16]


def _kind(module: nn.Module, n_out_layers: int) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if n_out_layers > 2:
        return "residual-group"
    if module.kernel_size == (1, 1):
        return "pointwise"
    return "conv"


def _layer_features(module: nn.Module) -> tuple[int, int, int]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.kernel_size[0], module.stride[0]
    return module.in_features, 1, 1


def discover_units(model: nn.Module, input_shape: tuple[int, ...], mode: Mode = "structured",
                   round_to: int = 1, check_forward: bool = True) -> UnitGraph:
    """Find the prunable units of `model` (which is not modified); in structured mode, check that it still runs
    with each unit pruned by one step of `round_to` channels (prune.round_to), unless it is rebuilt to counts
    known to work (`check_forward=False`: a saved pruned model)."""
    shapes = layer_shapes(model, input_shape)
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    names = {m: n for n, m in modules.items()}
    graph = UnitGraph(mode, [], tuple(input_shape), shapes)
    graph.depthwise = {n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups > 1
                       and m.groups == m.in_channels == m.out_channels}
    if mode == "unstructured":
        for name in shapes:
            module = modules[name]
            cin, k, s = _layer_features(module)
            graph.units.append(Unit(name, 0, "linear" if isinstance(module, nn.Linear) else "conv",
                                    module.weight.numel(), cin, k, s, shapes[name].in_hw, shapes[name].macs,
                                    (name,), ()))
    else:
        dg = build_dependency_graph(model, input_shape)
        for group in dg.get_all_groups(ignored_layers=classifier_layers(model), root_module_types=PRUNABLE_TYPES):
            if any(_is_grouped_conv(dep.target.module) for dep, _ in group):
                # kept whole: cutting a grouped conv's channels unevenly across its groups breaks it
                graph.grouped_whole |= {names[dep.target.module] for dep, _ in group
                                        if names.get(dep.target.module) in shapes}
                continue
            outs, ins = set(), set()
            for dep, _ in group:
                target = names.get(dep.target.module)
                if target not in shapes:
                    continue
                (outs if dg.is_out_channel_pruning_fn(dep.handler) else ins).add(target)
            outs_sorted = tuple(sorted(outs, key=order.__getitem__))
            ins_sorted = tuple(sorted(ins - outs, key=order.__getitem__))
            head = outs_sorted[0]
            module = modules[head]
            kind = "depthwise-group" if any(o in graph.depthwise for o in outs_sorted) else _kind(module, len(outs_sorted))
            cin, k, s = _layer_features(module)
            macs = sum(shapes[n].macs for n in set(outs_sorted) | set(ins_sorted))
            graph.units.append(Unit(head, 0, kind, len(group[0].idxs), cin, k, s, shapes[head].in_hw, macs,
                                    outs_sorted, ins_sorted))
            for layer in outs_sorted:
                graph.out_unit[layer] = head
            for layer in ins_sorted:
                graph.in_unit[layer] = head
    if not graph.units:  # a policy over nothing "pruned" to 100% of dense MACs and reported that as done
        raise UserError(f"the model has no prunable channels ({mode}): it needs a Conv2d or a Linear layer before "
                        f"its last Linear (the classifier, whose outputs are the classes, is never pruned)")
    graph.units.sort(key=lambda u: order[u.name])
    graph.units = [Unit(**{**u.__dict__, "index": i}) for i, u in enumerate(graph.units)]
    if mode == "unstructured":
        graph.out_unit = {u.name: u.name for u in graph.units}
    graph.fingerprint = _fingerprint(mode, shapes, modules, graph.units)
    if mode == "structured":
        graph.removable = removable_blocks(model, graph)
    if mode == "structured" and check_forward:
        from pruning.apply import check_pruned_forward  # apply builds on this module
        check_pruned_forward(model, graph, round_to)
    return graph


def configured_units(model: nn.Module, input_shape: tuple[int, ...], prune: PruneConfig) -> UnitGraph:
    """The units a run's `prune` section asks for (its mode and round_to), so every command sees the same graph."""
    return discover_units(model, input_shape, prune.mode, prune.round_to)


def _is_grouped_conv(module: nn.Module) -> bool:
    """A conv of several groups that is not depthwise (ResNeXt-style): its channels are pruned as a whole or not."""
    return isinstance(module, nn.Conv2d) and 1 < module.groups and not (
        module.groups == module.in_channels == module.out_channels)


def _common_parent(names: list[str]) -> str:
    """The deepest module name that is a proper prefix of every name in `names` ("" when they share none)."""
    parts = [name.split(".") for name in names]
    common = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return ".".join(common[: min(len(p) for p in parts) - 1]) if common else ""


def _layers_under(graph: UnitGraph, module: str) -> set[str]:
    return {name for name in graph.shapes if name.startswith(module + ".")}


def removable_blocks(model: nn.Module, graph: UnitGraph) -> dict[str, str]:
    """The units that are the inside of a residual block with an identity shortcut, and that block's name.

    Pruning every channel of such a unit leaves its block's branch with nothing to add to the identity, so
    the block itself can go (ResNet's BasicBlock without a projection, MobileNetV2's residual bottlenecks).
    A block qualifies when (1) it is the outermost module holding the unit's layers alone, (2) it holds no
    other conv or linear layer (no projection shortcut), (3) the layers its branch ends in write into
    channels coupled with layers outside the block (the residual add), and (4) its output has its input's
    shape. Removing it means replacing it by the identity (`pruning.apply.remove_blocks`).
    """
    candidates: dict[str, str] = {}
    for unit in graph.units:
        if unit.kind in ("residual-group", "linear") or not unit.in_layers:
            continue
        layers = set(unit.out_layers) | set(unit.in_layers)
        block = _common_parent(sorted(layers))
        if not block or _layers_under(graph, block) != layers:
            continue
        while "." in block and _layers_under(graph, block.rsplit(".", 1)[0]) == layers:
            block = block.rsplit(".", 1)[0]  # the outermost module that holds these layers alone: the block itself
        coupled = all(any(not other.startswith(block + ".") for other in graph.unit(graph.out_unit[layer]).out_layers)
                      for layer in unit.in_layers if layer in graph.out_unit)
        if coupled and all(layer in graph.out_unit for layer in unit.in_layers):
            candidates[unit.name] = block
    if not candidates:
        return {}
    modules = dict(model.named_modules())
    same_shape: dict[str, bool] = {}
    hooks = [modules[block].register_forward_hook(
        lambda module, inputs, output, block=block: same_shape.__setitem__(
            block, isinstance(output, torch.Tensor) and tuple(output.shape) == tuple(inputs[0].shape)))
        for block in set(candidates.values())]
    was_training = model.training
    try:
        model.eval()
        device = next(iter(model.parameters()), torch.empty(0)).device
        with torch.no_grad():
            model(torch.zeros(1, *graph.input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: block for name, block in candidates.items() if same_shape.get(block)}
