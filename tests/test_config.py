from pathlib import Path

import pytest

from pruning.config import RunConfig, SearchConfig, load_config, parse_override
from pruning.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_name_from_file(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  name: lenet5\n"))
    assert cfg.name == "c" and cfg.model.name == "lenet5" and cfg.prune.mode == "structured"


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(UserError, match=r"field `prune.stepz`: unknown key"):
        load_config(write(tmp_path, "prune:\n  stepz: 3\n"))


def test_wrong_type_is_named_with_value(tmp_path):
    with pytest.raises(UserError, match=r"field `train.epochs`.*'many'"):
        load_config(write(tmp_path, "train:\n  epochs: many\n"))


def test_out_of_range_ratio(tmp_path):
    with pytest.raises(UserError, match=r"prune.max_ratio"):
        load_config(write(tmp_path, "prune:\n  max_ratio: 1.5\n"))


@pytest.mark.parametrize("override", ["prune.finetune_epochs=.inf", "prune.final_epochs=inf", "env.latency_weight=inf",
                                      "agent.noise_sigma=nan"])
def test_infinite_or_nan_numbers_are_refused(tmp_path, override):
    """An infinite fine-tune ran until killed, an infinite latency weight made every reward -inf: all were taken."""
    with pytest.raises(UserError, match=rf"field `{override.split('=')[0]}`: Input should be a finite number"):
        load_config(write(tmp_path, "{}"), [override])


def test_overrides_are_typed_and_validated(tmp_path):
    cfg = load_config(write(tmp_path, "{}"), ["prune.steps=6", "data.name=digits", "prune.macs_target=0.25"])
    assert cfg.prune.steps == 6 and cfg.data.name == "digits" and cfg.prune.macs_target == 0.25
    with pytest.raises(UserError, match="prune.steps"):
        load_config(write(tmp_path, "{}"), ["prune.steps=0"])
    with pytest.raises(UserError, match="expected dotted.key=value"):
        parse_override("prune.steps")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(UserError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(UserError, match=r"c.yaml: the config is empty; give its sections"):  # not a 30-epoch ResNet-20
        load_config(write(tmp_path, "\n# nothing yet\n"))
    with pytest.raises(UserError, match=r"c.yaml: not a YAML config \(not UTF-8 text"):  # was a UnicodeDecodeError
        (tmp_path / "c.yaml").write_bytes(b"\xff\xfe")
        load_config(tmp_path / "c.yaml")


def test_a_key_given_twice_is_refused(tmp_path):
    """PyYAML keeps the last of two equal keys: the second macs_target replaced the first without a word."""
    with pytest.raises(UserError, match=r"key 'macs_target' given twice in one mapping \(first at line 2\)\n  in "
                                        r"\".*c.yaml\", line 3"):
        load_config(write(tmp_path, "prune:\n  macs_target: 0.5\n  macs_target: 0.3\n"))
    with pytest.raises(UserError, match=r"key 'prune' given twice"):
        load_config(write(tmp_path, "prune: {steps: 2}\nprune: {steps: 3}\n"))
    with pytest.raises(UserError, match=r"override 'model.kwargs=\{a: 1, a: 2\}': key 'a' given twice in one mapping"):
        load_config(write(tmp_path, "{}"), ["model.kwargs={a: 1, a: 2}"])
    cfg = load_config(write(tmp_path, "prune: {macs_target: 0.4}\nenv: {macs_target: 0.5}\n"))  # one key, two sections
    assert (cfg.prune.macs_target, cfg.env.macs_target) == (0.4, 0.5)


@pytest.mark.parametrize("override, field", [
    ("seed=-1", "seed"), ("search.seed=4294967296", "search.seed"), ("bench.seeds=[0,-1]", "bench.seeds.1"),
    ("bench.transfer_warm_seeds=[-2]", "bench.transfer_warm_seeds.0"),
])
def test_a_seed_numpy_would_refuse_mid_run_is_refused_at_load(tmp_path, override, field):
    """A negative seed used to pass the config and fail every benchmark run at its first numpy call."""
    with pytest.raises(UserError, match=rf"field `{field}`"):
        load_config(write(tmp_path, "{}"), [override])


@pytest.mark.parametrize("overrides, message", [
    (["data.name=digits", "data.path=/nowhere"], "data.path: dataset 'digits' reads no files"),
    (["data.name=synthetic", "data.path=/nowhere"], "data.path: dataset 'synthetic' reads no files"),
    (["data.val_fraction=0.2"], "data.val_fraction: fashion-mnist holds out data.val_size images"),
])
def test_a_data_setting_the_dataset_would_ignore_is_refused(overrides, message):
    """Each used to load without a word: the digits from scikit-learn, fashion-mnist with 5000 validation images."""
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)
    assert load_config(None, ["data.name=digits", "data.val_fraction=0.2"]).data.val_fraction == 0.2
    assert load_config(None, ["data.val_size=6000", "data.path=/somewhere"]).data.val_size == 6000


def test_target_and_uniform_ratio_are_exclusive(tmp_path):
    with pytest.raises(UserError, match="not both"):
        load_config(write(tmp_path, "prune:\n  macs_target: 0.5\n  uniform_ratio: 0.3\n"))


def test_repeat_noise_growth_is_refused_for_agents_without_amc_noise(tmp_path):
    with pytest.raises(UserError, match=r"field `agent.repeat_noise_growth`: .*expected 1 with sac.*\(got 1.1\)"):
        load_config(write(tmp_path, "agent:\n  name: sac\n  repeat_noise_growth: 1.1\n"))
    assert load_config(write(tmp_path, "agent:\n  name: td3\n  repeat_noise_growth: 1.1\n")).agent.repeat_noise_growth == 1.1


def test_an_agent_searcher_runs_the_agent_it_names(tmp_path):
    """`search.searcher: td3` used to build agent.name's default, DDPG, and name the run td3."""
    assert load_config(None, ["search.searcher=td3"]).agent.name == "td3"
    assert load_config(None, ["agent.name=sac"]).search.searcher == "sac"  # agent.name alone: as before, that agent
    assert load_config(None, ["search.searcher=tpe", "agent.name=sac"]).agent.name == "sac"  # no agent runs
    assert RunConfig(search=SearchConfig(searcher="td3")).agent.name == "td3"
    # the agent's own checks read the searcher's agent, not the default one
    with pytest.raises(UserError, match=r"field `agent.repeat_noise_growth`: expected 1 with sac"):
        load_config(write(tmp_path, "search:\n  searcher: sac\nagent:\n  repeat_noise_growth: 1.1\n"))
    with pytest.raises(UserError, match=r"defaults: search.searcher is 'td3' but agent.name is 'sac': an agent search "
                                        r"runs the agent it names; set search.searcher alone"):
        load_config(None, ["search.searcher=td3", "agent.name=sac"])


@pytest.mark.parametrize("override, field", [
    ("agent.net_arch=[0]", "agent.net_arch.0"), ("agent.net_arch=[64,-1]", "agent.net_arch.1"),
    ("agent.gradient_steps=-5", "agent.gradient_steps"),
])
def test_agent_shapes_sb3_would_take_are_refused(override, field):
    """A 0-wide hidden layer built an agent that cannot learn; gradient_steps -5 ran as -1. Both ran a search."""
    with pytest.raises(UserError, match=rf"field `{field}`"):
        load_config(None, [override])
    assert load_config(None, ["agent.net_arch=[]", "agent.gradient_steps=0"]).agent.net_arch == []


def test_an_unknown_agent_is_refused_when_the_config_loads():
    """It used to pass the config and fail after the baseline and the floor sweep, leaving the run folder behind."""
    with pytest.raises(UserError, match=r"field `agent.name`: Input should be 'ddpg', 'td3', 'sac' or 'ppo' \(got 'dqn'\)"):
        load_config(None, ["agent.name=dqn"])


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))


def test_the_shipped_configs_are_found():
    """The test below is parametrized over this list: an empty one would make it pass by running nothing."""
    names = {p.relative_to(CONFIGS).as_posix() for p in SHIPPED_CONFIGS}
    assert {"demo.yaml", "bench/resnet20_search.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_shipped_config_loads_and_its_bench_methods_resolve(path):
    """A typo in a committed config (a key, a variant's override) fails here, not hours into a benchmark."""
    from bench.runner import check_methods

    check_methods(load_config(path))
