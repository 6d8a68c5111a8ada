"""Applying kept counts to a model: structured (channels physically removed) or unstructured (weights zeroed).

Both work in place on the model they are given; callers prune a copy. Rankings come from an
importance criterion evaluated on the model as it is now, so the progressive pass re-estimates
importance at every step simply by calling these again.
"""

from __future__ import annotations

import copy
import math

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from pruning.errors import UserError, first_line
from pruning.importance import channel_importance, weight_scores
from pruning.units import UnitGraph, build_dependency_graph, kept_count


def out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def channel_scores(model: nn.Module, graph: UnitGraph, scorer: tp.importance.Importance,
                   dg: tp.DependencyGraph | None = None) -> dict[str, torch.Tensor]:
    """Per unit, the importance of each of its current channels (group importance over coupled layers)."""
    dg = dg or build_dependency_graph(model, graph.input_shape)
    modules = dict(model.named_modules())
    scores = {}
    for unit in graph.units:
        module = modules.get(unit.name)
        if module is None:  # inside a removed block: nothing left to rank
            continue
        pruner = dg.get_pruner_of_module(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(out_channels(module))))
        score = scorer(group)
        if score is None:  # torch-pruning returns None when no layer of the group has what the criterion needs
            raise ValueError(f"{type(scorer).__name__} could not score unit {unit.name!r} (missing gradients?)")
        scores[unit.name] = score.detach().cpu()
    return scores


def channel_rankings(model: nn.Module, graph: UnitGraph, criterion: str,
                     dg: tp.DependencyGraph | None = None) -> dict[str, torch.Tensor]:
    """Per unit, its channel indices from least to most important."""
    scores = channel_scores(model, graph, channel_importance(criterion), dg)
    return {name: torch.argsort(score, stable=True) for name, score in scores.items()}


def prune_structured(model: nn.Module, graph: UnitGraph, kept: dict[str, int], criterion: str = "l1",
                     rankings: dict[str, torch.Tensor] | None = None, dg: tp.DependencyGraph | None = None) -> nn.Module:
    """Remove channels so that each unit keeps `kept[name]`; lowest-ranked channels go first.

    `rankings` (from `channel_rankings`) may be precomputed once on the dense model and reused
    for every one-shot evaluation; they are indices into the unit's current channels.
    """
    if remove_blocks(model, graph, kept):
        dg = None  # the graph of the model before its blocks went names modules it no longer has
    dg = dg or build_dependency_graph(model, graph.input_shape)
    modules = dict(model.named_modules())
    if rankings is None:
        rankings = channel_rankings(model, graph, criterion, dg)
    for unit in graph.units:
        module = modules.get(unit.name)
        if module is None:  # inside a removed block
            continue
        n_remove = out_channels(module) - kept.get(unit.name, out_channels(module))
        if n_remove <= 0:
            continue
        idxs = sorted(rankings[unit.name][:n_remove].tolist())
        pruner = dg.get_pruner_of_module(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, idxs)
        if not dg.check_pruning_group(group):
            raise ValueError(f"torch-pruning refused to prune {n_remove} channels of unit {unit.name!r}")
        group.prune()
    return model


def check_pruned_forward(model: nn.Module, graph: UnitGraph, round_to: int = 1) -> None:
    """Prune a copy by one step per unit (one channel, or `round_to`) and run it once: a model that torch-pruning
    cannot cut, or whose forward breaks on fewer channels (`x.view(n, 512)`, a GroupNorm's groups), otherwise
    failed with a traceback at the first evaluation, or inside a Ray trial."""
    kept = {}
    for unit in graph.units:
        fewer = kept_count(unit.channels, min(1.0, round_to / unit.channels), round_to)
        if fewer < unit.channels:
            kept[unit.name] = fewer
    if not kept:
        return
    probe = copy.deepcopy(model).eval()
    device = next(probe.parameters()).device
    try:
        prune_structured(probe, graph, kept, "l1")  # outside no_grad: torch-pruning traces with autograd
    except Exception as exc:  # noqa: BLE001 - a layer torch-pruning cannot cut: say so, not a dump
        raise UserError(f"model.name: torch-pruning cannot remove channels from this model ({first_line(exc)}); one "
                        "of its layers, or the way they connect, is not supported by structured pruning: prune it "
                        "with prune.mode=unstructured, or replace that layer") from None
    try:
        with torch.no_grad():
            probe(torch.zeros(1, *graph.input_shape, device=device))
    except Exception as exc:  # noqa: BLE001 - the user's forward failed on fewer channels: say so, not a dump
        advice = divisibility_hint(model, round_to) or (
            "a forward that hard-codes channel or feature counts (x.view(n, 512), torch.reshape to fixed sizes) cannot "
            "be pruned: use torch.flatten(x, 1) or shapes read from the tensor")
        raise UserError(f"model.name: the model fails once its channels are pruned ({first_line(exc)}); {advice}") \
            from None


def divisibility_hint(model: nn.Module, round_to: int) -> str:
    """What to give prune.round_to when GroupNorm layers (which need channels divisible by their groups) are why a
    pruned model fails; '' when none asks for more than `round_to` gives."""
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.GroupNorm) and m.num_groups > 1}
    per_channel = [name for name, m in norms.items() if m.num_groups == m.num_channels]
    if per_channel:  # no rounding keeps a multiple of all its channels but all of them
        return (f"its GroupNorm layers with one channel per group ({', '.join(per_channel[:3])}"
                f"{' ...' if len(per_channel) > 3 else ''}) break at any pruned width: give them fewer groups (a "
                "divisor of the channels, e.g. nn.GroupNorm(1, C))")
    groups = {name: m.num_groups for name, m in norms.items() if round_to % m.num_groups}
    if not groups:
        return ""
    multiple = math.lcm(round_to, *groups.values())
    listed = ", ".join(f"{name} ({count} groups)" for name, count in list(groups.items())[:3])
    return (f"its GroupNorm layers keep a channel count divisible by their groups: {listed}"
            f"{' ...' if len(groups) > 3 else ''}; prune with prune.round_to={multiple} so that every unit keeps a "
            f"multiple of {multiple} channels")


def remove_blocks(model: nn.Module, graph: UnitGraph, kept: dict[str, int]) -> list[str]:
    """Replace by the identity every residual block whose inner unit keeps 0 channels; returns the blocks removed now.

    Only a removable block's inner unit (`UnitGraph.removable`) may keep 0: its branch would then add only its
    last BatchNorm's constant shift to the shortcut, and removing the block drops that shift with its convs, add
    and activation. The block is then the identity on its (post-ReLU) input; adaptive BN and the accuracy the
    evaluation measures say what the lost shift costs. A block removed before (an earlier progressive step) is
    left as it is.
    """
    modules = dict(model.named_modules())
    removed = []
    for unit in graph.units:
        if kept.get(unit.name, 1) != 0:
            continue
        block = graph.removable.get(unit.name)
        if block is None:
            raise ValueError(f"unit {unit.name!r} is not the inside of a removable residual block; it cannot keep 0 channels")
        if block not in modules or isinstance(modules[block], nn.Identity):
            continue
        parent, _, child = block.rpartition(".")
        setattr(modules[parent] if parent else model, child, nn.Identity())
        removed.append(block)
    return removed


def weight_score_table(model: nn.Module, graph: UnitGraph, criterion: str) -> dict[str, torch.Tensor]:
    """Per layer, the criterion's score of every weight (computed once on the dense model for one-shot pruning)."""
    modules = dict(model.named_modules())
    return {u.name: weight_scores(criterion, getattr(modules[u.name], "weight_orig", modules[u.name].weight))
            for u in graph.units}


def prune_unstructured(model: nn.Module, graph: UnitGraph, kept: dict[str, int], criterion: str = "l1",
                       permanent: bool = True, scores: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Zero the lowest-scored weights so each layer keeps `kept[name]` non-zero weights.

    With permanent=False the zeros are held by torch's pruning masks (for fine-tuning);
    `make_permanent` folds them into the weights afterwards.
    """
    modules = dict(model.named_modules())
    for unit in graph.units:
        module = modules[unit.name]
        weight = getattr(module, "weight_orig", module.weight)  # under a mask, scores and grads live on weight_orig
        n_remove = weight.numel() - kept.get(unit.name, weight.numel())
        if n_remove <= 0:
            continue
        score = (scores[unit.name] if scores is not None else weight_scores(criterion, weight)).flatten()
        if hasattr(module, "weight_mask"):  # already pruned: masked weights must stay pruned
            score = score.masked_fill(module.weight_mask.flatten() == 0, -1.0)
        mask = torch.ones_like(score)
        mask[torch.argsort(score, stable=True)[:n_remove]] = 0.0
        mask = mask.view_as(weight)
        if hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
        torch_prune.custom_from_mask(module, "weight", mask)
    if permanent:
        make_permanent(model)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold torch pruning masks into the weights (zeros stay zeros, the reparametrisation goes)."""
    for module in model.modules():
        if hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
    return model


def current_kept(model: nn.Module, graph: UnitGraph) -> dict[str, int]:
    """What each unit keeps now: channels (structured) or non-zero weights (unstructured)."""
    modules = dict(model.named_modules())
    if graph.mode == "structured":
        return {u.name: out_channels(modules[u.name]) if u.name in modules else 0 for u in graph.units}
    return {u.name: int((modules[u.name].weight != 0).sum()) for u in graph.units}
