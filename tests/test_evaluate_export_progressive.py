import copy

import pytest
import torch

from pruning.apply import current_kept
from pruning.bn import recalibrate_batchnorm
from pruning.checkpoint import load_checkpoint
from pruning.errors import UserError
from pruning.evaluate import EvalSettings, Evaluator
from pruning.export import export_onnx, export_torchscript, load_pruned, save_pruned
from pruning.policy import SparsityPolicy
from pruning.progressive import ProgressiveSettings, progressive_prune
from pruning.training import evaluate_accuracy
from pruning.units import discover_units

ARCH = {"name": "vgg_small", "kwargs": {"widths": [8, 8, "M", 16, 16, "M", 32]}, "in_channels": 1,
        "num_classes": 10, "input_shape": [1, 8, 8]}


@pytest.fixture(scope="module")
def evaluator(trained_vgg, digits):
    graph = discover_units(trained_vgg, digits.input_shape)
    return Evaluator(trained_vgg, digits, graph, EvalSettings(criterion="taylor", bn_batches=4, bn_batch_size=64))


def test_dense_policy_scores_the_dense_model(evaluator, trained_vgg, digits):
    result = evaluator.evaluate(SparsityPolicy.uniform(evaluator.graph, 0.0))
    assert result.macs_ratio == 1.0 and result.params_ratio == 1.0
    assert evaluator.dense_accuracy > 0.8
    assert abs(result.accuracy - evaluator.dense_accuracy) < 0.05  # BN recalibrated on other batches only


def test_evaluation_is_deterministic_and_leaves_the_dense_model_alone(evaluator, trained_vgg):
    before = copy.deepcopy(trained_vgg.state_dict())
    policy = SparsityPolicy.uniform(evaluator.graph, 0.5)
    first, second = evaluator.evaluate(policy), evaluator.evaluate(policy)
    assert first.accuracy == second.accuracy and first.kept == second.kept
    assert all(torch.equal(before[k], v) for k, v in trained_vgg.state_dict().items())
    assert first.macs_ratio < 0.5 and first.accuracy < evaluator.dense_accuracy


def test_adaptive_bn_helps_a_pruned_model(evaluator, digits):
    model, _ = evaluator.prune_copy(SparsityPolicy.uniform(evaluator.graph, 0.5))
    stale = evaluate_accuracy(model, digits.x_val, digits.y_val)
    recalibrate_batchnorm(model, evaluator.bn_batches)
    assert evaluate_accuracy(model, digits.x_val, digits.y_val) > stale


def test_no_adaptive_bn_scores_with_the_dense_statistics(trained_vgg, digits):
    """eval.bn_batches=0 (an ablation of adaptive BN) made one empty calibration batch: every BN layer's statistics
    were reset and left broken, and the dense policy scored 0.29 instead of the dense accuracy."""
    graph = discover_units(trained_vgg, digits.input_shape)
    plain = Evaluator(trained_vgg, digits, graph, EvalSettings(criterion="taylor", bn_batches=0, bn_batch_size=64))
    assert plain.bn_batches == []
    assert plain.evaluate(SparsityPolicy.uniform(graph, 0.0)).accuracy == plain.dense_accuracy
    model, _ = plain.prune_copy(SparsityPolicy.uniform(graph, 0.5))
    stale = evaluate_accuracy(model, digits.x_val, digits.y_val)  # pruned, with the dense model's statistics
    assert plain.evaluate(SparsityPolicy.uniform(graph, 0.5)).accuracy == stale
    recalibrate_batchnorm(model, [digits.x_train[:0]])  # an empty batch changes nothing either
    assert evaluate_accuracy(model, digits.x_val, digits.y_val) == stale


def test_latency_is_measured_on_request(evaluator):
    result = evaluator.evaluate(SparsityPolicy.uniform(evaluator.graph, 0.3), latency=True)
    assert set(result.latency_ms) == {"b1", "b64"} and all(v > 0 for v in result.latency_ms.values())


def test_pruned_checkpoint_reloads_to_the_same_outputs(evaluator, digits, tmp_path):
    model, _ = evaluator.prune_copy(SparsityPolicy.from_ratios(evaluator.graph, [0.5, 0.25, 0.75, 0.0, 0.5]))
    save_pruned(tmp_path / "m.pt", model, evaluator.graph, ARCH, digits.fingerprint)
    assert load_checkpoint(tmp_path / "m.pt")["kept_channels"] == current_kept(model, evaluator.graph)
    reloaded = load_pruned(tmp_path / "m.pt")
    x = digits.x_test[:16]
    assert torch.equal(reloaded(x), model.eval()(x))


def test_torchscript_and_onnx_exports_match_eager(evaluator, tmp_path):
    model, _ = evaluator.prune_copy(SparsityPolicy.uniform(evaluator.graph, 0.4))
    assert export_torchscript(model, tmp_path / "m.ts", (1, 8, 8)) < 1e-5
    assert export_onnx(model, tmp_path / "m.onnx", (1, 8, 8)) < 1e-4
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_bad_checkpoints_are_user_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt: not a readable weights-only checkpoint") as caught:
        load_checkpoint(tmp_path / "junk.pt")
    assert "weights_only` set to `False`" not in str(caught.value)  # torch's advice, unsafe for a file a user gives
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(UserError, match=r": is a folder; expected a checkpoint file \(.pt\)"):  # was "not found"
        load_checkpoint(tmp_path)


def test_weights_that_other_tools_saved_load_as_a_state_dict(tmp_path):
    """A user's own trained weights, as a training loop, Lightning or DDP saves them, were refused."""
    weights = {"0.weight": torch.ones(2, 1, 3, 3), "0.bias": torch.zeros(2)}
    saved = {"plain": weights, "lightning": {"epoch": 3, "state_dict": weights, "hyper_parameters": {"lr": 0.1}},
             "loop": {"model": weights, "optimizer": {"state": {}}, "epoch": 9},
             "ddp": {"model_state_dict": {f"module.{k}": v for k, v in weights.items()}}}
    for name, payload in saved.items():
        torch.save(payload, tmp_path / f"{name}.pt")
        loaded = load_checkpoint(tmp_path / f"{name}.pt")
        assert loaded["format"] == 0 and loaded["arch"] is None and loaded["state_dict"].keys() == weights.keys(), name
    torch.save({"epoch": 3, "model": "resnet"}, tmp_path / "none.pt")
    with pytest.raises(UserError, match=r"none.pt: not a PrunePilot checkpoint \(format 1\), a state_dict, nor a dict "
                                        r"holding one under state_dict, model_state_dict, model, net, weights"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_progressive_pass_reaches_the_policy_step_by_step(trained_vgg, digits, mode):
    graph = discover_units(trained_vgg, digits.input_shape, mode)
    policy = SparsityPolicy.from_ratios(graph, [0.5] * len(graph.units))
    settings = ProgressiveSettings(steps=3, finetune_epochs=0.5, final_epochs=1, lr=0.01, batch_size=64,
                                   criterion="taylor", bn_batches=4, augment=False)
    records = []
    model, steps = progressive_prune(copy.deepcopy(trained_vgg), digits, graph, policy, settings,
                                     torch.Generator().manual_seed(0), teacher=trained_vgg, show_progress=False,
                                     on_step=records.append)
    assert len(steps) == 3 and records == steps
    assert current_kept(model, graph) == policy.kept(graph)
    ratios = [s.macs_ratio for s in steps]
    assert ratios[0] > ratios[1] > ratios[2]  # gradual, not one shot
    assert steps[-1].val_accuracy_finetuned > 0.8
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
