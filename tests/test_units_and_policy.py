import json
import math

import numpy as np
import pytest
import torch

from pruning.apply import current_kept, prune_structured
from pruning.cost import count_macs
from pruning.errors import UserError
from pruning.models import build_model
from pruning.policy import SparsityPolicy, uniform_for_macs
from pruning.units import discover_units, kept_count

SHAPE = (1, 28, 28)
ZOO = ["lenet5", "vgg_small", "resnet20", "resnet56", "mobilenetv2_small"]


@pytest.fixture(scope="module")
def graphs():
    out = {}
    for name in ZOO:
        model = build_model(name, 1, 10, SHAPE)
        out[name] = (model, discover_units(model, SHAPE, "structured"))
    return out


def test_residual_adds_are_one_unit(graphs):
    _, graph = graphs["resnet20"]
    stem = graph.unit("conv1")
    assert stem.kind == "residual-group"
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stem.out_layers)
    assert len(graph.units) == 12 and graph.names[0] == "conv1"


def test_depthwise_follows_its_expansion_conv(graphs):
    model, graph = graphs["mobilenetv2_small"]
    unit = graph.unit("features.2.block.0.0")
    assert unit.kind == "depthwise-group" and "features.2.block.1.0" in unit.out_layers


@pytest.mark.parametrize("name", ZOO)
def test_predicted_macs_equal_measured_after_pruning(graphs, name):
    model, graph = graphs[name]
    rng = np.random.default_rng(0)
    policy = SparsityPolicy.from_ratios(graph, rng.uniform(0, 0.8, len(graph.units)))
    kept = policy.kept(graph, round_to=4)
    pruned = prune_structured(__import__("copy").deepcopy(model), graph, kept, "l1")
    assert current_kept(pruned, graph) == kept
    assert math.isclose(count_macs(pruned, SHAPE), graph.macs(kept), rel_tol=1e-9)
    assert pruned(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_kept_count_rules():
    assert kept_count(16, 0.0) == 16 and kept_count(16, 1.0) == 1 and kept_count(16, 0.5) == 8
    for channels in (5, 16, 64):
        for ratio in np.linspace(0, 1, 21):
            kept = kept_count(channels, ratio, round_to=4)
            assert 1 <= kept <= channels
            assert channels <= 4 or kept % 4 == 0


def test_policy_json_round_trip(tmp_path, graphs):
    _, graph = graphs["resnet20"]
    policy = SparsityPolicy.from_ratios(graph, np.linspace(0.1, 0.6, len(graph.units)), note="x")
    policy.save(tmp_path / "p.json")
    back = SparsityPolicy.load(tmp_path / "p.json")
    assert back.ratios == policy.ratios and back.model_fingerprint == graph.fingerprint and back.meta == {"note": "x"}
    back.validate(graph, 0.9)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["ratios"].update({"no.such.layer": 0.1}), "unknown unit"),
    (lambda p: p["ratios"].update({"conv1": 0.95}), r"must lie in \[0, 0.9\]"),
    (lambda p: p["ratios"].update({"conv1": -0.1}), r"must lie in"),
    (lambda p: p["ratios"].update({"conv1": float("nan")}), r"must lie in"),
    (lambda p: p.update({"model_fingerprint": "0123456789abcdef"}), "made for another model"),
    (lambda p: p.update({"mode": "unstructured"}), "cannot prune in structured mode"),
])
def test_policy_validation_errors(tmp_path, graphs, edit, message):
    _, graph = graphs["resnet20"]
    payload = SparsityPolicy.uniform(graph, 0.3).to_dict()
    edit(payload)
    (tmp_path / "p.json").write_text(json.dumps(payload))
    with pytest.raises(UserError, match=message):
        SparsityPolicy.load(tmp_path / "p.json").validate(graph, 0.9, source="p.json")


def test_policy_file_errors(tmp_path):
    with pytest.raises(UserError, match="policy file not found"):
        SparsityPolicy.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        SparsityPolicy.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"ratios": {}}')
    with pytest.raises(UserError, match="not a sparsity policy"):
        SparsityPolicy.load(tmp_path / "other.json")


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_uniform_for_macs_meets_target_tightly(graphs, target):
    _, graph = graphs["resnet20"]
    policy = uniform_for_macs(graph, target, round_to=1)
    assert policy.macs_ratio(graph) <= target
    assert policy.macs_ratio(graph) > target - 0.03  # the smallest ratio that meets it, not an overshoot


def test_depth_profile_moves_between_models(graphs):
    _, g20 = graphs["resnet20"]
    _, g56 = graphs["resnet56"]
    source = SparsityPolicy.from_ratios(g20, np.linspace(0.0, 0.6, len(g20.units)))
    depths, ratios = source.depth_profile(g20)
    moved = SparsityPolicy.from_depth_profile(g56, depths, ratios)
    vector = moved.vector(g56)
    assert moved.model_fingerprint == g56.fingerprint and len(vector) == len(g56.units)
    assert vector[0] == pytest.approx(0.0) and vector[-1] == pytest.approx(0.6) and np.all(np.diff(vector) >= 0)
