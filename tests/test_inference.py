"""The inference form that latency figures and exports use: BN folded, outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.export import export_onnx, export_torchscript
from pruning.inference import inference_form
from pruning.models import MODELS, build_model


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _with_trained_bn_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Non-trivial running statistics, so that a wrong fold would change the outputs."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 3 + 1)
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_folds_all_its_batchnorms_and_keeps_its_outputs(name: str) -> None:
    shape = (1, 28, 28)
    model = _with_trained_bn_statistics(build_model(name, 1, 10, shape), shape)
    had = _batchnorms(model)
    folded = inference_form(model)
    x = torch.randn(8, *shape)
    with torch.no_grad():
        expected, got = model.eval()(x), folded(x)
    assert _batchnorms(folded) == 0 and (had > 0 or name == "lenet5")  # LeNet-5 has no BN to fold
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


def test_the_given_model_is_left_as_it_was() -> None:
    model = build_model("resnet20", 1, 10, (1, 28, 28)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inference_form(model)
    assert model.training and _batchnorms(model) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class DataDependent(nn.Module):
    """A forward pass torch.fx cannot trace symbolically: it branches on a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_an_untraceable_model_comes_back_unfolded_in_eval_mode() -> None:
    model = _with_trained_bn_statistics(DataDependent(), (1, 8, 8))
    form = inference_form(model)
    assert not form.training and _batchnorms(form) == 1
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(form(x), model.eval()(x))


def test_exports_carry_no_batchnorm(tmp_path) -> None:
    shape = (1, 28, 28)
    model = _with_trained_bn_statistics(build_model("resnet20", 1, 10, shape), shape)
    assert export_torchscript(model, tmp_path / "m.ts", shape) < 1e-4
    assert "batch_norm" not in str(torch.jit.load(str(tmp_path / "m.ts")).inlined_graph)
    assert export_onnx(model, tmp_path / "m.onnx", shape) < 1e-3
    import onnx

    assert "BatchNormalization" not in {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}


def test_the_timing_form_on_a_cpu_is_folded_and_channels_last_with_the_same_outputs() -> None:
    from pruning.inference import timing_form

    shape = (1, 28, 28)
    model = _with_trained_bn_statistics(build_model("resnet20", 1, 10, shape), shape)
    form = timing_form(model)
    convs = [m for m in form.modules() if isinstance(m, nn.Conv2d)]
    assert _batchnorms(form) == 0 and convs
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs if c.weight.shape[-1] > 1)
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, nn.Conv2d))  # the given one unchanged
    x = torch.randn(4, *shape)  # a plain NCHW batch, as a caller gives it
    with torch.no_grad():
        assert torch.allclose(form(x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_paired_timing_gives_the_speedup_with_its_spread_over_rounds() -> None:
    from pruning.cost import compare_latency

    def net(width: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))

    torch.manual_seed(0)
    wide, narrow = net(96), net(12)
    for model in (wide, narrow):
        model(torch.zeros(1, 3, 32, 32))  # materialise the lazy layer
    timed = compare_latency(wide, narrow, (3, 32, 32), batch_size=16, repeats=12, rounds=4)
    assert (timed.batch_size, timed.rounds, timed.threads) == (16, 4, torch.get_num_threads())
    # a ratio of medians lies between the smallest and the largest of the per-round ratios
    assert 0 < timed.speedup_low <= timed.speedup <= timed.speedup_high
    assert timed.speedup > 2  # 64x fewer MACs in the second conv: no machine noise hides that
    # the fastest pass of each model is no slower than its median, and its speed-up tells the same story
    assert 0 < timed.dense_min_ms <= timed.dense_ms and 0 < timed.pruned_min_ms <= timed.pruned_ms
    assert timed.speedup_fastest == timed.dense_min_ms / timed.pruned_min_ms > 2
