import copy

import pytest
import torch
from torch import nn

from pruning.apply import channel_rankings, current_kept, prune_structured, prune_unstructured
from pruning.cost import count_macs, count_params
from pruning.importance import CRITERIA, accumulate_gradients, weight_scores
from pruning.models import build_model
from pruning.policy import SparsityPolicy
from pruning.schedule import cubic_schedule
from pruning.units import discover_units

SHAPE = (1, 8, 8)


def tiny_vgg():
    torch.manual_seed(0)
    return build_model("vgg_small", 1, 10, SHAPE, widths=(8, 8, "M", 16)).eval()


def kill_channels(model: nn.Module, layer: str, channels: list[int]) -> None:
    """Zero some output channels (weights and BN scale) so that every sane criterion ranks them last."""
    conv = dict(model.named_modules())[layer]
    bn = dict(model.named_modules())[layer.rsplit(".", 1)[0] + ".1"]
    with torch.no_grad():
        conv.weight[channels] = 0
        bn.weight[channels] = 0
        bn.bias[channels] = 0


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_channel_criterion_ranks_dead_channels_last(digits, criterion):
    model = tiny_vgg()
    kill_channels(model, "features.0.0", [1, 5])
    graph = discover_units(model, SHAPE)
    if criterion == "taylor":
        accumulate_gradients(model, digits, batches=2)
    ranking = channel_rankings(model, graph, criterion)["features.0.0"]
    assert set(ranking[:2].tolist()) == {1, 5}


def test_taylor_needs_gradients_and_uses_them(digits):
    weight = torch.nn.Parameter(torch.ones(4, 3))
    with pytest.raises(ValueError, match="needs gradients"):
        weight_scores("taylor", weight)
    weight.grad = torch.tensor([[0.0, 1, 2]] * 4)
    assert torch.equal(weight_scores("taylor", weight)[0], torch.tensor([0.0, 1, 2]))


def test_lamp_scores_follow_magnitude_within_a_layer():
    weight = torch.tensor([0.1, -3.0, 0.5, 2.0])
    lamp = weight_scores("lamp", weight)
    assert torch.equal(lamp.argsort(), weight.abs().argsort())
    assert lamp.max() == pytest.approx(1.0)  # the largest weight's score is w^2 / w^2


@pytest.mark.parametrize("criterion", CRITERIA)
def test_structured_pruning_removes_channels_physically(digits, criterion):
    model = tiny_vgg()
    graph = discover_units(model, SHAPE)
    pruned = copy.deepcopy(model)
    if criterion == "taylor":
        accumulate_gradients(pruned, digits, batches=2)
    kept = SparsityPolicy.uniform(graph, 0.5).kept(graph)
    prune_structured(pruned, graph, kept, criterion)
    assert dict(pruned.named_modules())["features.0.0"].weight.shape[0] == 4
    assert count_params(pruned) < count_params(model)
    assert count_macs(pruned, SHAPE) == pytest.approx(graph.macs(kept))
    assert pruned(digits.x_val[:4]).shape == (4, 10)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_unstructured_pruning_zeroes_weights_permanently(digits, criterion):
    model = tiny_vgg()
    graph = discover_units(model, SHAPE, "unstructured")
    pruned = copy.deepcopy(model)
    if criterion == "taylor":
        accumulate_gradients(pruned, digits, batches=2)
    kept = SparsityPolicy.uniform(graph, 0.6).kept(graph)
    prune_unstructured(pruned, graph, kept, criterion)
    assert current_kept(pruned, graph) == kept
    assert not any(hasattr(m, "weight_mask") for m in pruned.modules())  # masks folded into the weights
    assert count_params(pruned) == count_params(model)  # same shapes
    ratio = count_params(model) / count_params(pruned, nonzero=True)
    assert 2.0 < ratio < 2.6  # 60% of conv/linear weights gone; biases and BN stay


def test_unstructured_masks_hold_during_fine_tuning(digits):
    model = tiny_vgg()
    graph = discover_units(model, SHAPE, "unstructured")
    prune_unstructured(model, graph, SparsityPolicy.uniform(graph, 0.5).kept(graph), "l1", permanent=False)
    before = current_kept(model, graph)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(digits.x_train[:32]), digits.y_train[:32]).backward()
    optimizer.step()
    assert current_kept(model, graph) == before


def test_cubic_schedule_is_front_loaded_and_exact():
    values = cubic_schedule(0.6, 4)
    assert values[0] == 0 and values[-1] == pytest.approx(0.6) and len(values) == 5
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(s > 0 for s in steps) and all(a > b for a, b in zip(steps, steps[1:]))  # prunes fast, then slowly
    assert values[1] > 0.6 / 4  # ahead of a linear schedule after the first step
    with pytest.raises(ValueError, match="steps >= 1"):
        cubic_schedule(0.5, 0)
