"""Latency tables: they cover every policy the env can propose, agree with torch-pruning's surgery on each
layer's channels, round-trip through JSON, refuse another model, and enter the reward as configured."""

import copy
import json

import numpy as np
import pytest
from torch import nn

from agents.agent import PruningAgent
from agents.transfer_prior import SourceRewards
from envs.layer_pruning import FEATURES, LATENCY_FEATURES, LayerPruningEnv
from envs.rewards import latency_penalty
from envs.synthetic import SyntheticEvaluator
from pruning.apply import prune_structured
from pruning.config import AgentConfig, load_config
from pruning.errors import UserError
from pruning.latency_table import LatencyTable, kept_options, measure_latency_table
from pruning.models import build_model
from pruning.policy import unit_profile
from pruning.units import discover_units

SHAPE = (1, 28, 28)
ROUND_TO = 4


@pytest.fixture(scope="module")
def resnet():
    """ResNet-20 (shapes only: latency does not depend on weights), its units, and a quickly measured table."""
    model = build_model("resnet20", 1, 10, SHAPE).eval()
    graph = discover_units(model, SHAPE)
    table = measure_latency_table(model, graph, batch_size=4, round_to=ROUND_TO, r_max=0.9, repeats=1, rounds=1)
    return model, graph, table


def channel_product_table(table: LatencyTable) -> LatencyTable:
    """`table` with every entry input x output channels (in µs) and no rest: latency that falls with every channel
    pruned, so that a check of what the env reads from a table does not hang on one noisy timing (one repeat of a
    pruned layer can read slower than the whole one on a loaded machine)."""
    exact = copy.deepcopy(table)
    exact.entries = {geometry: {pair: float(np.prod([int(c) for c in pair.split(",")])) * 1e-3 for pair in timed}
                     for geometry, timed in table.entries.items()}
    exact.rest_fixed_ms = exact.rest_activation_ms = 0.0
    return exact


def random_policies(graph, table, count=20, target=0.3):
    env = LayerPruningEnv(graph, deferred=True, macs_target=target, round_to=ROUND_TO, latency_table=table)
    rng = np.random.default_rng(0)
    return [env.rollout(lambda _obs, _t: rng.uniform(-1, 1, 1))[0] for _ in range(count)]


def test_kept_options_are_every_count_a_ratio_in_range_gives():
    assert kept_options(16, 0.0, 0.8, 4) == [4, 8, 12, 16]
    assert kept_options(10, 0.0, 0.5, 1) == [5, 6, 7, 8, 9, 10]


def test_the_table_prices_every_policy_the_env_proposes(resnet):
    _, graph, table = resnet
    assert table.ratio({}) == pytest.approx(1.0)
    ratios = [table.ratio(policy.kept(graph, ROUND_TO)) for policy in random_policies(graph, table)]
    assert all(r > 0.0 for r in ratios)  # every layer's channel counts have an entry (no UserError)
    assert len(set(np.round(ratios, 6))) > 1  # equal MACs, different predicted latency


def test_each_layer_gets_the_channels_torch_pruning_leaves_it(resnet):
    model, graph, table = resnet
    for policy in random_policies(graph, table, count=3):
        kept = policy.kept(graph, ROUND_TO)
        pruned = prune_structured(copy.deepcopy(model), graph, kept, "l1")
        modules = dict(pruned.named_modules())
        for name, (cin, cout) in table.layer_channels(kept).items():
            layer = modules[name]
            real = (layer.in_channels, layer.out_channels) if isinstance(layer, nn.Conv2d) else \
                (layer.in_features, layer.out_features)
            assert (cin, cout) == real, name


def test_round_trip_and_refusals(resnet, tmp_path):
    _, graph, table = resnet
    path = table.save(tmp_path / "table.json")
    loaded = LatencyTable.load(path)
    kept = random_policies(graph, table, count=1)[0].kept(graph, ROUND_TO)
    assert loaded.predict_ms(kept) == table.predict_ms(kept)
    loaded.check(graph, ROUND_TO)
    with pytest.raises(UserError, match="env.latency_table: measured with round_to=4, but prune.round_to is 8"):
        loaded.check(graph, 8)
    other = discover_units(build_model("resnet32", 1, 10, SHAPE), SHAPE)
    with pytest.raises(UserError, match="env.latency_table: measured for another model"):
        LayerPruningEnv(other, deferred=True, round_to=ROUND_TO, latency_table=loaded)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json is not a JSON latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "policy.json").write_text(json.dumps({"format": "prunepilot.sparsity-policy/1"}))
    with pytest.raises(UserError, match="is not a latency table"):
        LatencyTable.load(tmp_path / "policy.json")
    with pytest.raises(UserError, match="file not found"):
        LatencyTable.load(tmp_path / "missing.json")


@pytest.mark.parametrize("target_at", [None, 0.5])
def test_predicted_latency_enters_the_reward(resnet, target_at):
    """The target sits at a quantile of the policies' measured ratios (`target_at`), so that the term acts on some
    of them however fast this machine ran the table."""
    _, graph, table = resnet
    fake = SyntheticEvaluator(graph, np.full(len(graph.units), 0.5), round_to=ROUND_TO)
    results = [fake.evaluate(policy) for policy in random_policies(graph, table, count=8)]
    ratios = [table.ratio(result.kept) for result in results]
    target = None if target_at is None else float(np.quantile(ratios, target_at))
    plain = LayerPruningEnv(graph, fake, macs_target=0.3, round_to=ROUND_TO, reward="amc_error")
    timed = LayerPruningEnv(graph, fake, macs_target=0.3, round_to=ROUND_TO, reward="amc_error", latency_table=table,
                            latency_weight=2.0, latency_target=target)
    overs = []
    for result, ratio in zip(results, ratios):
        over = ratio if target is None else max(0.0, ratio / target - 1.0)
        overs.append(over)
        assert timed.reward(result) == pytest.approx(plain.reward(result) - 2.0 * over)
        assert timed.latency_ratio(result.kept) == ratio and plain.latency_ratio(result.kept) is None
    assert max(overs) > 0  # the term did act on some policies
    if target is not None:
        assert min(overs) == 0  # and not on those at or below the target


def test_a_latency_weight_needs_a_table_and_a_target_needs_a_weight(resnet, tmp_path):
    _, graph, _ = resnet
    with pytest.raises(UserError, match="env.latency_table: a latency weight > 0 needs a latency table"):
        LayerPruningEnv(graph, deferred=True, latency_weight=1.0)
    with pytest.raises(UserError, match="latency_target has no effect with latency_weight 0"):
        load_config(None, ["env.latency_target=0.3"])
    from envs.factory import env_kwargs

    with pytest.raises(UserError, match="env.latency_weight > 0 needs a table"):
        env_kwargs(load_config(None, ["env.latency_weight=1"]))
    with pytest.raises(UserError, match="env.latency_table: file not found"):
        env_kwargs(load_config(None, ["env.latency_weight=1", f"env.latency_table={tmp_path / 'nope.json'}"]))


def test_unstructured_mode_has_no_latency_table():
    model = build_model("lenet5", 1, 10, SHAPE)
    graph = discover_units(model, SHAPE, "unstructured")
    with pytest.raises(UserError, match="prune.mode=structured"):
        measure_latency_table(model, graph)


def test_grouped_convs_are_refused_by_name():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    graph = discover_units(model, (1, 6, 6))
    with pytest.raises(UserError, match=r"layer 2 is a grouped conv \(groups=2\)"):
        measure_latency_table(model, graph, batch_size=2, repeats=1, rounds=1)


def test_latency_features_say_what_the_table_predicts_at_every_step(resnet):
    _, graph, measured = resnet
    table = channel_product_table(measured)
    plain = LayerPruningEnv(graph, deferred=True, macs_target=0.4, round_to=ROUND_TO, remove_blocks=True)
    env = LayerPruningEnv(graph, deferred=True, macs_target=0.4, round_to=ROUND_TO, remove_blocks=True,
                          latency_table=table, latency_weight=1.0, latency_target=0.45, latency_features=True)
    assert env.observation_space.shape == (len(FEATURES) + len(LATENCY_FEATURES),)
    rng = np.random.default_rng(3)
    actions = rng.uniform(-1, 1, env.n_units)
    policy, steps = env.rollout(lambda _obs, t: actions[t:t + 1])
    plain_policy, plain_steps = plain.rollout(lambda _obs, t: actions[t:t + 1])
    assert plain_policy.ratios == policy.ratios  # same clamp, same policy
    column = {name: i for i, name in enumerate(env.features)}
    ratios = [step.info["ratio"] for step in steps]
    removable = {u.name for u in graph.units if u.name in graph.removable}
    assert removable and any(r == 1.0 for r in ratios)  # this rollout removes a block: the feature has work to do
    for t, (step, unit) in enumerate(zip(steps, graph.units)):
        obs = step.obs
        assert obs[:len(FEATURES)] == pytest.approx(plain_steps[t].obs)  # the AMC embedding first, unchanged
        assert obs[column["removable"]] == (1.0 if unit.name in removable else 0.0)
        alone = {unit.name: graph.kept(unit, 1.0 if unit.name in removable else 0.8, ROUND_TO)}
        assert obs[column["unit_latency"]] == pytest.approx(np.clip(1 - table.ratio(alone), 0, 1), abs=1e-6)
        so_far = {u.name: graph.kept(u, r, ROUND_TO) for u, r in zip(graph.units, ratios[:t])}
        assert obs[column["latency_removed"]] == pytest.approx(np.clip(1 - table.ratio(so_far), 0, 1), abs=1e-6)
        assert obs[column["latency_target"]] == pytest.approx(0.45)
    assert steps[0].obs[column["latency_removed"]] == 0.0
    assert steps[-1].obs[column["latency_removed"]] > 0.0  # pruning before the last unit saved latency


def test_latency_features_need_a_table_and_an_agent_keeps_the_features_it_learned_on(resnet, tmp_path):
    _, graph, table = resnet
    with pytest.raises(UserError, match="env.latency_features: .*latency table"):
        LayerPruningEnv(graph, deferred=True, latency_features=True)
    from bench.runner import check_methods
    from envs.factory import env_kwargs

    with pytest.raises(UserError, match="env.latency_features: the features describe the latency the reward prices"):
        env_kwargs(load_config(None, ["env.latency_features=true"]))
    bench = load_config("configs/bench/resnet20_search.yaml", ["bench.methods=[ddpg_screened_exec_w10_spread_lat]"])
    with pytest.raises(UserError, match="bench.variants.ddpg_screened_exec_w10_spread_lat.overrides: env.latency_f"):
        check_methods(bench)  # the latency-aware variant without a latency term: refused before anything runs
    fake = SyntheticEvaluator(graph, np.full(len(graph.units), 0.5), round_to=ROUND_TO)
    kwargs = dict(macs_target=0.4, round_to=ROUND_TO, reward="amc_error", latency_table=table, latency_weight=1.0)
    seen = LayerPruningEnv(graph, fake, latency_features=True, **kwargs)
    agent = PruningAgent.create(AgentConfig(warmup_episodes=2, net_arch=[16, 16], batch_size=8), seen, seed=0)
    agent.learn(seen, 3)
    path = agent.save(tmp_path / "agent")  # no env: the features come from the networks' input size
    assert json.loads(path.with_suffix(".json").read_text())["features"] == [*FEATURES, *LATENCY_FEATURES]
    assert PruningAgent.load(path, seen).propose(seen)[0].ratios == agent.propose(seen)[0].ratios
    with pytest.raises(UserError, match="trained with env.latency_features=true; set it so"):
        PruningAgent.load(path, LayerPruningEnv(graph, fake, **kwargs))


def test_the_screen_adds_the_known_latency_penalty_instead_of_learning_it(resnet):
    """Rewards = accuracy part - penalty; with agent.screen_known_latency the process holds the accuracy part only,
    the best is the best whole reward, and a candidate's prediction is the process's mean minus its exact penalty."""
    _, graph, table = resnet
    fake = SyntheticEvaluator(graph, np.full(len(graph.units), 0.5), round_to=ROUND_TO)
    ratios = [table.ratio(fake.evaluate(p).kept) for p in random_policies(graph, table, count=8)]
    env = LayerPruningEnv(graph, fake, macs_target=0.3, round_to=ROUND_TO, reward="amc_error", latency_table=table,
                          latency_weight=2.0, latency_target=float(np.median(ratios)))
    screened = dict(warmup_episodes=40, candidates=8, screen_after=4, net_arch=[16, 16], batch_size=8)
    for known in (False, True):
        agent = PruningAgent.create(AgentConfig(screen_known_latency=known, **screened), env, seed=0)
        evaluations = agent.learn(env, 12)
        model = agent.reward_model
        penalties = [env.latency_cost(e.policy.kept(graph, ROUND_TO)) for e in evaluations]
        assert max(penalties) > 0  # some policies were over the target
        rewards = [e.reward for e in evaluations]
        assert [agent.known_reward(env, e.policy) for e in evaluations] == ([-p for p in penalties] if known
                                                                             else [0.0] * len(penalties))
        learned = [r + p for r, p in zip(rewards, penalties)] if known else rewards
        assert model.rewards == pytest.approx(learned) and model.best == pytest.approx(max(rewards))
        policy, _ = agent.propose(env, deterministic=False, exclude=env.cache)
        mean, _ = model.predict(model.inputs(policy, graph, ROUND_TO)[None])
        assert agent.last_screen["predicted_reward"] == pytest.approx(mean[0] + agent.known_reward(env, policy))


def test_a_prior_screening_with_the_known_latency_penalty_learns_the_source_rewards_without_theirs(resnet):
    """The target's process learns rewards less their latency penalty and the screen adds the exact penalty back:
    a prior of another search's whole rewards would count it twice, so it learns them less their own penalty
    (from the latency ratio each source evaluation recorded)."""
    _, graph, table = resnet
    fake = SyntheticEvaluator(graph, np.full(len(graph.units), 0.5), round_to=ROUND_TO)
    policies = random_policies(graph, table, count=12)
    latency = np.array([table.ratio(fake.evaluate(p).kept) for p in policies])
    target = float(np.median(latency))
    env = LayerPruningEnv(graph, fake, macs_target=0.3, round_to=ROUND_TO, reward="amc_error", latency_table=table,
                          latency_weight=2.0, latency_target=target)
    accuracy_part = np.array([-(1 - fake.evaluate(p).accuracy) for p in policies])
    penalty = np.array([latency_penalty(r, 2.0, target) for r in latency])
    assert penalty.max() > 0 and penalty.min() == 0  # half the source's policies were over the target
    ratios = np.stack([p.vector(graph) for p in policies])
    profile = list(unit_profile(graph).values())

    def learned_by_prior(source: SourceRewards, known: bool) -> np.ndarray:
        agent = PruningAgent.create(AgentConfig(screen_known_latency=known, candidates=8, net_arch=[16, 16]), env,
                                    seed=0)
        agent.prior = source
        return agent.screening_model(env).prior.gp.y_train_

    def standardised(y: np.ndarray) -> np.ndarray:
        return (y - y.mean()) / y.std()

    recorded = SourceRewards(ratios, profile, accuracy_part - penalty, "source", "another model", latency)
    assert learned_by_prior(recorded, known=True) == pytest.approx(standardised(accuracy_part))
    assert learned_by_prior(recorded, known=False) == pytest.approx(standardised(accuracy_part - penalty))
    # a source searched without a table recorded no latency ratios and had no latency term: kept as it is
    plain = SourceRewards(ratios, profile, accuracy_part, "source", "another model")
    assert learned_by_prior(plain, known=True) == pytest.approx(standardised(accuracy_part))
