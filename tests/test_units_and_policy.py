import copy
import json
import math

import numpy as np
import pytest
import torch

from pruning.apply import current_kept, prune_structured
from pruning.cost import count_macs
from pruning.errors import UserError
from pruning.models import build_model
from pruning.policy import SparsityPolicy, fit_to_macs, uniform_for_macs
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
    assert back.profile == policy.profile and back.profile["conv1"] == (0.0, "residual-group")
    back.validate(graph, 0.9)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["ratios"].update({"no.such.layer": 0.1}), "unknown unit"),
    (lambda p: p["ratios"].update({"conv1": 0.95}), r"must lie in \[0, 0.9\]"),
    (lambda p: p["ratios"].update({"conv1": -0.1}), r"must lie in"),
    (lambda p: p["ratios"].update({"conv1": float("nan")}), r"must lie in"),
    (lambda p: p.update({"model_fingerprint": "0123456789abcdef"}), "made for another model"),
    (lambda p: p.update({"mode": "unstructured"}), "cannot prune with prune.mode=structured"),
])
def test_policy_validation_errors(tmp_path, graphs, edit, message):
    _, graph = graphs["resnet20"]
    payload = SparsityPolicy.uniform(graph, 0.3).to_dict()
    edit(payload)
    (tmp_path / "p.json").write_text(json.dumps(payload))
    with pytest.raises(UserError, match=message):
        SparsityPolicy.load(tmp_path / "p.json").validate(graph, 0.9, source="p.json")


def test_a_policy_in_the_other_mode_of_its_own_model_names_the_mode(graphs):
    """prune.mode=unstructured with a structured search's policy read 'made for another model'."""
    model, graph = graphs["resnet20"]
    with pytest.raises(UserError, match="p.json: a policy made with prune.mode=structured cannot prune with prune.mode=unstructured"):
        SparsityPolicy.uniform(graph, 0.3).validate(discover_units(model, SHAPE, "unstructured"), source="p.json")


@pytest.mark.parametrize("profile", [[1, 2], {"conv1": {"depth": 1.5, "kind": "conv"}}, {"conv1": {"kind": "conv"}},
                                     {"conv1": {"depth": 0.5, "kind": 3}}, {"conv1": 0.5}])
def test_policy_profile_errors_name_the_field(tmp_path, graphs, profile):
    _, graph = graphs["resnet20"]
    payload = SparsityPolicy.uniform(graph, 0.3).to_dict() | {"profile": profile}
    (tmp_path / "p.json").write_text(json.dumps(payload))
    with pytest.raises(UserError, match=r"p.json: field `profile` must map unit names"):
        SparsityPolicy.load(tmp_path / "p.json")


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


def test_resampled_policy_keeps_each_unit_kind(graphs):
    """Residual groups take residual-group ratios, inner convs inner-conv ratios, at the same relative depth."""
    _, g20 = graphs["resnet20"]
    _, g56 = graphs["resnet56"]
    source = SparsityPolicy.from_ratios(g20, [0.1 if u.kind == "residual-group" else 0.6 for u in g20.units])
    moved = source.resampled(g56, note="x")
    assert moved.model_fingerprint == g56.fingerprint and moved.meta["resampled_from"] == g20.fingerprint
    assert {u.kind: moved.ratios[u.name] for u in g56.units} == {"residual-group": pytest.approx(0.1),
                                                                  "conv": pytest.approx(0.6)}
    # a plain depth profile blurs the two: ResNet-56's stage-2 residual group sits between ResNet-20's units
    naive = SparsityPolicy.from_depth_profile(g56, *source.depth_profile(g20))
    assert 0.1 < naive.ratios["layer2.0.conv2"] < 0.6
    assert source.resampled(g56, by_kind=False).ratios == pytest.approx(naive.ratios)  # the file alone suffices
    # rising ratios with depth stay rising within each kind
    rising = SparsityPolicy.from_ratios(g20, np.linspace(0.0, 0.6, len(g20.units))).resampled(g56)
    for kind in ("conv", "residual-group"):
        assert np.all(np.diff([rising.ratios[u.name] for u in g56.units if u.kind == kind]) >= -1e-12)


def test_a_policy_without_profile_cannot_be_resampled(graphs):
    _, g20 = graphs["resnet20"]
    _, g56 = graphs["resnet56"]
    bare = SparsityPolicy.from_dict({k: v for k, v in SparsityPolicy.uniform(g20, 0.3).to_dict().items() if k != "profile"})
    with pytest.raises(UserError, match="best.json: no unit profile"):
        bare.resampled(g56, source="best.json")
    partial = SparsityPolicy.uniform(g20, 0.3)
    del partial.profile["conv1"]
    with pytest.raises(UserError, match=r"best.json: field `profile` lacks unit\(s\) \['conv1'\]"):
        partial.resampled(g56, source="best.json")


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_fit_to_macs_meets_target_and_keeps_the_shape(graphs, target):
    _, graph = graphs["resnet56"]
    shape = np.linspace(0.0, 0.3, len(graph.units))
    fitted = fit_to_macs(SparsityPolicy.from_ratios(graph, shape, note="x"), graph, target, round_to=4, max_ratio=0.8)
    assert target - 0.03 < fitted.macs_ratio(graph, 4) <= target and fitted.meta == {"note": "x"}
    vector = fitted.vector(graph)
    inside = (vector > 0) & (vector < 0.8)
    assert inside.sum() > len(vector) // 2  # one common offset: unclipped ratios keep their differences
    assert np.allclose(np.diff(vector[inside]), np.diff(shape[inside]))  # shape rises, so `inside` is one run


def _torch_macs(model, shape) -> float:
    """MACs by torch's own counter (FlopCounterMode counts 2 FLOPs per multiply-add of conv, linear and matmul)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name", ZOO)
def test_macs_agree_with_torchs_flop_counter_dense_pruned_and_predicted(graphs, name):
    """The MACs every reward, budget and report uses, checked against a counter we did not write, on the dense
    model, on a physically pruned copy (blocks removed where the model has them) and as predicted from kept counts."""
    model, graph = graphs[name]
    assert count_macs(model, SHAPE) == graph.dense_macs == _torch_macs(model, SHAPE)
    rng = np.random.default_rng(0)
    kept = {u.name: int(rng.integers(1, u.channels + 1)) for u in graph.units}
    removed = [u.name for u in graph.units if u.name in graph.removable][::2]
    kept.update({unit: 0 for unit in removed})
    pruned = prune_structured(copy.deepcopy(model), graph, kept)
    assert count_macs(pruned, SHAPE) == _torch_macs(pruned, SHAPE) == pytest.approx(graph.macs(kept), rel=1e-12)
    assert _torch_macs(pruned, SHAPE) < 0.8 * graph.dense_macs


class InterruptedOnce(torch.nn.Module):
    """A forward that a Ctrl-C interrupts the first time it runs."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.calls = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4, 3), []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        if len(self.calls) == 1:
            raise KeyboardInterrupt
        return self.fc(self.conv(x).mean((2, 3)))


def test_a_ctrl_c_during_tracing_stops_the_job_and_the_model_is_traced_on_one_batch():
    """torch-pruning's tracing ran `model(*inputs)` under a bare `except:`: a Ctrl-C in it was swallowed and the
    model traced again, so a search went on into Tune (a cluster search waiting for a node never stopped)."""
    model = InterruptedOnce()
    with pytest.raises(KeyboardInterrupt):
        discover_units(model, (1, 8, 8), "structured")
    assert model.calls == [(1, 1, 8, 8)]
    model.calls.append("past the interrupt")
    discover_units(model, (1, 8, 8), "structured")
    assert all(shape == (1, 1, 8, 8) for shape in model.calls[2:])  # never the unbatched (1, 8, 8) first
