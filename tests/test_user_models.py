"""A user's own model ('module:factory'): what it must give, and the kinds PrunePilot refuses or keeps whole."""

import re

import pytest
import torch

from pruning.apply import prune_structured
from pruning.errors import UserError
from pruning.inference import runs_channels_last, timing_form
from pruning.models import build_model
from pruning.units import discover_units
from tests.test_cli import run_cli, tiny_config  # noqa: F401 - a fixture

SHAPE = (1, 10, 10)


@pytest.mark.parametrize("factory, message", [
    ("not_a_module", r"model.name: tests.fixtures:not_a_module returned a str; expected a torch.nn.Module"),
    ("two_extra_logits", r"gives \(1, 6\) for one input; expected logits shaped \(1, 4\), one per class"),
    ("logits_and_features", r"gives a tuple for one input; expected logits shaped \(1, 4\)"),
    ("with_attention", r"has layers PrunePilot cannot prune or count: attn \(MultiheadAttention\)"),
    ("factory_that_raises", r"tests.fixtures:factory_that_raises failed \(ValueError: weights file missing at "
                            r".*tests/fixtures.py:\d+\)"),
])
def test_a_user_model_that_cannot_be_pruned_or_scored_is_refused_when_built(factory, message):
    """Each went on before: extra logits trained and scored without a word, a tuple or a str failed with a
    traceback in training, and attention was cut to a width its heads cannot take (a traceback mid-search)."""
    with pytest.raises(UserError, match=message):
        build_model(f"tests.fixtures:{factory}", 1, 4, SHAPE)


def test_a_model_with_nothing_to_prune_is_refused():
    """It 'pruned' to 100% of dense MACs, and the report said done."""
    model = build_model("tests.fixtures:classifier_only", 1, 4, SHAPE)
    with pytest.raises(UserError, match=r"the model has no prunable channels \(structured\)"):
        discover_units(model, SHAPE)


def test_channels_that_a_grouped_conv_shares_are_kept_whole_and_the_rest_prune():
    """Pruning a 4-group conv's channels unevenly across its groups broke its forward (a traceback)."""
    model = build_model("tests.fixtures:grouped_conv", 1, 4, SHAPE).eval()
    graph = discover_units(model, SHAPE)
    assert graph.grouped_whole == {"0", "3", "6"}
    assert graph.names == ["6", "9"]
    prune_structured(model, graph, {"6": 16, "9": 12})
    assert (model[3].weight.shape, model[6].weight.shape[0], model[9].weight.shape[0]) == ((32, 4, 3, 3), 16, 12)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 4)


def test_a_forward_with_a_fixed_feature_count_is_refused_before_pruning():
    """`x.view(n, 800)` failed at the first pruned evaluation: a traceback, or a failed Ray trial."""
    model = build_model("tests.fixtures:fixed_view", 1, 4, SHAPE)
    with pytest.raises(UserError, match=r"the model fails once its channels are pruned \(RuntimeError: .*\); a forward "
                                        r"that hard-codes channel or feature counts"):
        discover_units(model, SHAPE)



def test_a_model_that_breaks_once_pruned_is_refused_with_what_would_prune_it():
    """Every such model was told that its forward hard-codes channel counts: a GroupNorm model (which prunes with
    prune.round_to at a multiple of its groups, but was refused at any round_to) and one that torch-pruning itself
    cannot cut."""
    group_norm = build_model("tests.fixtures:group_norm_cnn", 1, 4, SHAPE)
    with pytest.raises(UserError, match=re.escape(
            "(RuntimeError: Expected number of channels in input to be divisible by num_groups, but got input of "
            "shape [1, 7, 10, 10] and num_groups=4); its GroupNorm layers keep a channel count divisible by their "
            "groups: 1 (4 groups), 4 (4 groups); prune with prune.round_to=4 so that every unit keeps a multiple of 4 "
            "channels")):
        discover_units(group_norm, SHAPE)
    with pytest.raises(UserError, match=r"prune with prune.round_to=4 so"):
        discover_units(group_norm, SHAPE, round_to=2)
    assert [(u.name, u.channels) for u in discover_units(group_norm, SHAPE, round_to=4).units] == [("0", 8), ("3", 16)]
    with pytest.raises(UserError, match=re.escape("its GroupNorm layers with one channel per group (1) break at any "
                                                  "pruned width: give them fewer groups")):
        discover_units(build_model("tests.fixtures:per_channel_group_norm_cnn", 1, 4, SHAPE), SHAPE, round_to=8)
    with pytest.raises(UserError, match=r"model.name: torch-pruning cannot remove channels from this model \(IndexError: "
                                        r".*\); one of its layers, or the way they connect, is not supported"):
        discover_units(build_model("tests.fixtures:pixel_shuffled", 1, 4, SHAPE), SHAPE)


def test_a_group_norm_model_prunes_end_to_end_with_its_round_to(tmp_path, tiny_config):
    """Pruned, fine-tuned, saved and loaded back at multiples of its 4 groups (the reload used to probe it at one
    channel and fail after the whole pass)."""
    from pruning.export import load_pruned

    out = tmp_path / "gn"
    done = run_cli("prune", str(tiny_config), "model.name=tests.fixtures:group_norm_cnn", "prune.round_to=4",
                   "prune.macs_target=0.4", "--out", str(out), "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model = load_pruned(out / "model.pt")
    widths = [m.num_channels for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert all(width % 4 == 0 for width in widths) and sum(widths) < 8 + 16, widths
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 4)

def test_a_forward_that_fails_channels_last_is_trained_and_timed_contiguous():
    """`.view` on a conv output fails on the channels-last layout that CPU training and timing use."""
    model = build_model("tests.fixtures:fixed_view", 1, 4, SHAPE)
    assert not runs_channels_last(model, SHAPE)
    form = timing_form(model, SHAPE)
    assert form(torch.zeros(3, *SHAPE)).shape == (3, 4)
    assert runs_channels_last(build_model("resnet20", 1, 4, SHAPE), SHAPE)
    assert timing_form(build_model("resnet20", 1, 4, SHAPE), SHAPE).conv1.weight.is_contiguous(
        memory_format=torch.channels_last)


def test_user_models_through_the_command_line(tmp_path, tiny_config):
    fixed = run_cli("train", str(tiny_config), "model.name=tests.fixtures:fixed_view", "--out",
                    str(tmp_path / "fixed.pt"), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr  # trained contiguous: channels-last stopped it with a traceback
    refused = run_cli("prune", str(tiny_config), "model.name=tests.fixtures:fixed_view",
                      f"model.checkpoint={tmp_path / 'fixed.pt'}", "--out", str(tmp_path / "p1"), cwd=tmp_path)
    assert refused.returncode == 2 and "fails once its channels are pruned" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "p1").exists()
    # a target the kept-whole layers put out of reach was pruned to the closest reachable without a word
    unreachable = run_cli("prune", str(tiny_config), "model.name=tests.fixtures:grouped_conv", "prune.macs_target=0.05",
                          "--out", str(tmp_path / "p2"), cwd=tmp_path)
    assert unreachable.returncode == 2, unreachable.stderr
    assert "prune.macs_target: 0.05 cannot be reached: every unit pruned at prune.max_ratio" in unreachable.stderr
    assert "3 layer(s) have such channels: 0, 3, 6" in unreachable.stderr
    reachable = run_cli("prune", str(tiny_config), "model.name=tests.fixtures:grouped_conv", "--out",
                        str(tmp_path / "p3"), cwd=tmp_path)
    assert reachable.returncode == 0, reachable.stderr
    assert "Channels shared with a grouped (not depthwise) conv are kept whole, since pruning would break it: 0, 3, " \
           "6." in (tmp_path / "p3" / "report.md").read_text()


def test_a_user_model_beside_the_config_imports_from_the_working_folder(tmp_path, tiny_config, monkeypatch):
    """The `prunepilot` console script's sys.path lacked the working folder (unlike `python -m`), so a user's
    `mymodels:net` next to the config failed with 'No module named mymodels'."""
    from search.cli import main

    (tmp_path / "mymodels_pp.py").write_text("from tests.fixtures import tiny_cnn as net\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert main(["train", str(tiny_config), "model.name=mymodels_pp:net", "--out", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").is_file()


def test_an_edited_user_model_gets_a_baseline_of_its_own(tmp_path, tiny_config):
    """The baseline cache was keyed by the model's name: after an edit, a wider model failed to load the cached
    weights (a traceback), and another activation loaded the old model's weights without a word."""
    module = tmp_path / "edited_pp.py"
    versions = {
        "first": "from tests.fixtures import tiny_cnn as net\n",
        "wider": "from tests.fixtures import tiny_cnn\ndef net(in_channels, num_classes):\n"
                 "    return tiny_cnn(in_channels, num_classes, width=12)\n",
        "tanh": "from torch import nn\nfrom tests.fixtures import tiny_cnn\ndef net(in_channels, num_classes):\n"
                "    model = tiny_cnn(in_channels, num_classes)\n    model[2] = nn.Tanh()\n    return model\n",
        "forward": "import torch\nfrom torch import nn\nfrom tests.fixtures import tiny_cnn\n"
                   "class Net(nn.Sequential):\n    def forward(self, x):\n        return super().forward(x * 2)\n"
                   "def net(in_channels, num_classes):\n    return Net(*tiny_cnn(in_channels, num_classes))\n",
    }
    cached = {}
    for version, source in [*versions.items(), ("first again", versions["first"])]:
        module.write_text(source)
        result = run_cli("train", str(tiny_config), "model.name=edited_pp:net", "--out", str(tmp_path / "m.pt"),
                         cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        path = re.search(r"(?:cached at|loaded from) (\S+\.pt)", result.stderr).group(1)
        cached[version] = ("trained now" in result.stderr, path)
    assert [trained for trained, _ in cached.values()] == [True, True, True, True, False]
    assert len({path for _, path in cached.values()}) == 4 and cached["first again"][1] == cached["first"][1]
