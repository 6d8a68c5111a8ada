"""Removing whole residual blocks (`env.remove_blocks`): which blocks qualify, the surgery and its cost model,
the policy rules, the environment's action mapping and budget, the latency table, and the progressive pass."""

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from envs.layer_pruning import LayerPruningEnv
from pruning.apply import current_kept, prune_structured, remove_blocks
from pruning.cost import count_macs, count_params
from pruning.errors import UserError
from pruning.export import export_onnx, load_pruned, save_pruned
from pruning.latency_table import measure_latency_table
from pruning.models import build_model
from pruning.policy import SparsityPolicy, fit_to_macs
from pruning.progressive import ProgressiveSettings, progressive_prune
from pruning.training import Recipe, train
from pruning.units import discover_units, kept_count

SHAPE = (1, 28, 28)
RESIDUAL = ["resnet20", "resnet56", "mobilenetv2_small"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    out = {}
    for name in [*RESIDUAL, "lenet5", "vgg_small"]:
        model = build_model(name, 1, 10, SHAPE).eval()
        out[name] = (model, discover_units(model, SHAPE))
    return out


def removing(graph, blocks_every: int = 2, ratio: float = 0.3) -> SparsityPolicy:
    """A policy that removes every `blocks_every`-th removable block and prunes every other unit at `ratio`."""
    removable = [u.name for u in graph.units if u.name in graph.removable]
    gone = set(removable[::blocks_every])
    return SparsityPolicy.from_ratios(graph, [1.0 if u.name in gone else ratio for u in graph.units])


def test_removable_blocks_are_the_blocks_with_an_identity_shortcut(models):
    _, resnet20 = models["resnet20"]
    # layer2.0 and layer3.0 change width and stride: their projection shortcut is a conv, so they must stay
    assert resnet20.removable == {f"{block}.conv1": block for block in ("layer1.0", "layer1.1", "layer1.2", "layer2.1",
                                                                         "layer2.2", "layer3.1", "layer3.2")}
    assert len(models["resnet56"][1].removable) == 25  # 3 stages x 9 blocks, less the 2 with projections
    _, mobilenet = models["mobilenetv2_small"]
    assert mobilenet.removable == {"features.3.block.0.0": "features.3", "features.5.block.0.0": "features.5",
                                   "features.7.block.0.0": "features.7"}
    assert models["lenet5"][1].removable == {} and models["vgg_small"][1].removable == {}


@pytest.mark.parametrize("name", RESIDUAL)
def test_a_removed_block_is_gone_and_costs_what_the_cost_model_predicts(models, name):
    model, graph = models[name]
    policy = removing(graph)
    kept = policy.kept(graph, round_to=4)
    gone = [graph.removable[unit] for unit, count in kept.items() if count == 0]
    assert gone
    pruned = prune_structured(copy.deepcopy(model), graph, kept, "l1").eval()
    modules = dict(pruned.named_modules())
    assert all(isinstance(modules[block], nn.Identity) for block in gone)
    assert current_kept(pruned, graph) == kept
    assert math.isclose(count_macs(pruned, SHAPE), graph.macs(kept), rel_tol=1e-9)
    assert count_params(pruned) < count_params(prune_structured(
        copy.deepcopy(model), graph, {**kept, **{u: 1 for u, c in kept.items() if c == 0}}, "l1"))
    x = torch.randn(3, *SHAPE)
    assert pruned(x).shape == (3, 10)


def test_a_removed_block_reloads_and_exports(models, tmp_path):
    model, graph = models["resnet20"]
    pruned = prune_structured(copy.deepcopy(model), graph, removing(graph).kept(graph, 4), "l1").eval()
    arch = {"name": "resnet20", "kwargs": {}, "in_channels": 1, "num_classes": 10, "input_shape": list(SHAPE)}
    save_pruned(tmp_path / "pruned.pt", pruned, graph, arch, "digest")
    reloaded = load_pruned(tmp_path / "pruned.pt")
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))
    assert export_onnx(pruned, tmp_path / "pruned.onnx", SHAPE) < 1e-4


def test_removing_a_block_with_no_branch_left_keeps_the_model_function(models):
    """A block whose inner unit has no effect (its last BN outputs zeros) is the identity on its post-ReLU input:
    removing it changes no output. The test zeroes the block's branch and compares with the block removed."""
    model, graph = models["resnet20"]
    silenced = copy.deepcopy(model)
    block = dict(silenced.named_modules())["layer2.1"]
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    kept = {u.name: u.channels for u in graph.units} | {"layer2.1.conv1": 0}
    removed = prune_structured(copy.deepcopy(silenced), graph, kept, "l1").eval()
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(removed(x), silenced.eval()(x), atol=1e-5)


def test_only_the_inside_of_a_removable_block_may_take_ratio_one(models):
    _, graph = models["resnet20"]
    ratios = {u.name: 0.2 for u in graph.units}
    SparsityPolicy.from_ratios(graph, [1.0 if n == "layer1.1.conv1" else 0.2 for n in graph.names]).validate(graph, 0.8)
    with pytest.raises(UserError, match=r"unit 'conv1' must lie in \[0, 0.8\], got 1.0"):
        SparsityPolicy({**ratios, "conv1": 1.0}, graph.fingerprint, "structured").validate(graph, 0.8)
    with pytest.raises(UserError, match=r"'layer1.1.conv1' must lie in \[0, 0.8\] \(or 1 to remove its residual block\)"):
        SparsityPolicy({**ratios, "layer1.1.conv1": 0.9}, graph.fingerprint, "structured").validate(graph, 0.8)
    model, _ = models["resnet20"]
    with pytest.raises(ValueError, match="'layer2.0.conv1' is not the inside of a removable residual block"):
        remove_blocks(copy.deepcopy(model), graph, {"layer2.0.conv1": 0})


def test_fit_to_macs_keeps_removed_blocks_removed(models):
    _, graph = models["resnet20"]
    policy = removing(graph, ratio=0.0)
    fitted = fit_to_macs(policy, graph, 0.4, round_to=4, max_ratio=0.8)
    assert fitted.macs_ratio(graph, 4) <= 0.4
    assert {n for n, r in fitted.ratios.items() if r == 1.0} == {n for n, r in policy.ratios.items() if r == 1.0}
    assert all(r <= 0.8 for n, r in fitted.ratios.items() if policy.ratios[n] < 1.0)


# ------------------------------------------------------------------------------------------------- environment
def block_step(graph, r_max, round_to):
    """The most MACs (fraction of dense) removing one block takes beyond pruning its inside at r_max."""
    dense = {u.name: u.channels for u in graph.units}
    return max((graph.macs({**dense, u: kept_count(graph.unit(u).channels, r_max, round_to)})
                - graph.macs({**dense, u: 0})) / graph.dense_macs for u in graph.removable)


def rounding_step(graph, round_to):
    dense = {u.name: u.channels for u in graph.units}
    return max(1 - graph.macs({**dense, u.name: u.channels - min(round_to, u.channels - 1)}) / graph.dense_macs
               for u in graph.units)


@settings(max_examples=50, deadline=None)
@given(name=st.sampled_from(RESIDUAL), target=st.sampled_from([0.25, 0.5, 0.75]), round_to=st.sampled_from([1, 4]),
       actions=st.lists(st.floats(-1, 1), min_size=30, max_size=30), budget=st.sampled_from(["exact", "cap"]),
       action_range=st.sampled_from(["absolute", "feasible"]))
def test_episodes_that_may_remove_blocks_meet_the_budget(models, name, target, round_to, actions, budget, action_range):
    _, graph = models[name]
    try:
        env = LayerPruningEnv(graph, deferred=True, macs_target=target, r_max=0.8, round_to=round_to, budget=budget,
                              action_range=action_range, remove_blocks=True)
    except UserError:
        assume(False)
    env.reset()
    for a in actions[: env.n_units]:
        *_, info = env.step(np.array([a], dtype=np.float32))
    policy = info["policy"]
    macs_ratio = policy.macs_ratio(graph, round_to)
    assert macs_ratio <= target + 1e-9
    for unit, ratio in policy.ratios.items():
        assert 0.0 <= ratio <= 0.8 or (ratio == 1.0 and unit in graph.removable), (unit, ratio)
    if budget == "exact":  # at most one rounding step of one unit, or one block, below the target
        assert macs_ratio >= target - rounding_step(graph, round_to) - block_step(graph, 0.8, round_to)


def test_a_full_action_removes_a_block_only_where_allowed(models):
    _, graph = models["resnet20"]
    for allowed in (True, False):
        env = LayerPruningEnv(graph, deferred=True, macs_target=0.9, budget="cap", remove_blocks=allowed)
        policy, _ = env.rollout(lambda _obs, _t: np.ones(1))
        removed = {n for n, r in policy.ratios.items() if r == 1.0}
        assert removed == (set(graph.removable) if allowed else set())
        assert all(r == 0.8 for n, r in policy.ratios.items() if n not in removed)
    env = LayerPruningEnv(graph, deferred=True, macs_target=0.9, budget="cap", remove_blocks=True)
    env.reset()
    env.step(np.zeros(1))  # the stem: not removable, [-1, 1] onto [0, 0.8]
    # the first block's inside: [-1, 1] onto [0, 1], and a ratio in (0.8, 1) goes to the nearer of 0.8 and 1
    assert env.action_to_ratio(-1.0) == 0.0 and env.action_to_ratio(0.7) == 0.8 and env.action_to_ratio(0.85) == 1.0
    assert env.action_to_ratio(0.2) == pytest.approx(0.6) and env.ratio_to_action(1.0) == 1.0


def test_a_model_without_removable_blocks_ignores_the_setting(models):
    _, graph = models["vgg_small"]
    env = LayerPruningEnv(graph, deferred=True, macs_target=0.5, remove_blocks=True)
    assert not env.remove_blocks and env.unit_max == [env.r_max] * env.n_units


def test_the_latency_table_prices_a_removed_block_as_gone(models):
    model, graph = models["resnet20"]
    table = measure_latency_table(model, graph, batch_size=2, round_to=4, r_max=0.8, repeats=1, rounds=1)
    dense = {u.name: u.channels for u in graph.units}
    removed = {**dense, "layer2.1.conv1": 0}
    inside = [name for name in table.layers if name.startswith("layer2.1.")]
    assert inside and all(0 in table.layer_channels(removed)[name] for name in inside)
    areas = {name: layer.out_channels * layer.out_area for name, layer in table.layers.items()}
    expected = 1 - sum(areas[name] for name in inside) / sum(areas.values())
    assert table.activation_fraction(removed) == pytest.approx(expected)
    thin = kept_count(32, 0.8, 4)  # the least the block's inside keeps without the block going
    thinnest = {**dense, "layer2.1.conv1": thin}
    # removing the block saves exactly its two convs at their thinnest and their outputs' activations
    saved = (table.entries[table.layers["layer2.1.conv1"].geometry][f"32,{thin}"]
             + table.entries[table.layers["layer2.1.conv2"].geometry][f"{thin},32"]
             + table.rest_activation_ms * (table.activation_fraction(thinnest) - table.activation_fraction(removed)))
    assert saved > 0
    assert table.predict_ms(thinnest) - table.predict_ms(removed) == pytest.approx(saved)


# ------------------------------------------------------------------------------------------------- final pass
def test_the_progressive_pass_removes_the_blocks_at_its_last_step(digits):
    torch.manual_seed(0)
    model = build_model("resnet20", 1, 10, digits.input_shape)
    train(model, digits, Recipe(epochs=2, batch_size=64, lr=0.05, augment=False), torch.Generator().manual_seed(0),
          show_progress=False)
    graph = discover_units(model, digits.input_shape)
    policy = SparsityPolicy.from_ratios(graph, [1.0 if n in ("layer1.1.conv1", "layer3.2.conv1") else 0.25
                                                for n in graph.names])
    settings_ = ProgressiveSettings(steps=2, finetune_epochs=0.25, final_epochs=0.5, lr=0.01, batch_size=64,
                                    criterion="taylor", bn_batches=2, augment=False, round_to=4)
    after_step = []
    pruned, steps = progressive_prune(model, digits, graph, policy, settings_, torch.Generator().manual_seed(0),
                                      show_progress=False, on_step=lambda _: after_step.append(current_kept(model, graph)))
    assert 0 < after_step[0]["layer1.1.conv1"] < 16 and 0 < after_step[0]["layer3.2.conv1"] < 64  # shrunk, not gone
    modules = dict(pruned.named_modules())
    assert [isinstance(modules[b], nn.Identity) for b in ("layer1.1", "layer3.2", "layer1.0")] == [True, True, False]
    assert current_kept(pruned, graph) == policy.kept(graph, 4)
    assert steps[0].macs_ratio > steps[1].macs_ratio == pytest.approx(policy.macs_ratio(graph, 4))
    assert steps[-1].val_accuracy_finetuned > 0.5  # ten classes: the model still works without the blocks


@pytest.mark.parametrize("searcher", ["tpe", "random"])
def test_the_ray_searchers_draw_ratio_one_only_for_removable_blocks(models, tmp_path, searcher):
    from pruning.config import load_config
    from search.ray_backend import search_algorithm

    model, graph = models["resnet20"]
    cfg = load_config(None, [f"search.searcher={searcher}", "env.remove_blocks=true"])
    env = LayerPruningEnv(graph, deferred=True, macs_target=0.5, remove_blocks=True)
    _, space, _ = search_algorithm(cfg, env, model, graph, tmp_path / "agent")
    upper = {name: domain.upper for name, domain in space["ratios"].items()}
    assert upper == {u.name: 1.0 if u.name in graph.removable else env.r_max for u in graph.units}
