import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import envs
from envs.layer_pruning import FEATURES, LayerPruningEnv
from envs.rewards import REWARDS
from envs.synthetic import SyntheticEvaluator
from pruning.config import load_config
from pruning.errors import UserError
from pruning.evaluate import EvalSettings, Evaluator
from pruning.models import build_model
from pruning.units import discover_units

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def data28():
    from pruning.data import load_data

    return load_data("synthetic", size=28, n_train=300, n_test=100, num_classes=10)


@pytest.fixture(scope="module")
def graphs():
    return {name: discover_units(build_model(name, 1, 10, SHAPE), SHAPE)
            for name in ("lenet5", "resnet20", "resnet56", "mobilenetv2_small", "vgg_small")}


def real_env(name, data28, **kwargs) -> LayerPruningEnv:
    model = build_model(name, 1, 10, SHAPE)
    graph = discover_units(model, SHAPE)
    evaluator = Evaluator(model, data28, graph, EvalSettings(bn_batches=1, bn_batch_size=32, val_limit=64))
    return LayerPruningEnv(graph, evaluator, **kwargs)


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_check_env_passes_without_warnings(name):
    env = gym.make(envs.ENV_ID, overrides=[
        f"model.name={name}", "model.kwargs={}", "data.name=synthetic", "data.options={size: 28, n_train: 300, n_test: 100}",
        "train.epochs=1", "eval.bn_batches=1", "eval.val_limit=64"]).unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert [str(w.message) for w in caught] == []


def rollout(env, actions):
    env.reset(seed=0)
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(np.array([a], dtype=np.float32))
    assert terminated and not truncated
    return info, reward


def test_same_seed_same_episode(data28):
    env = real_env("lenet5", data28)
    actions = np.random.default_rng(3).uniform(-1, 1, env.n_units)
    first, r1 = rollout(env, actions)
    env.cache.clear()
    second, r2 = rollout(env, actions)
    assert first["policy"].ratios == second["policy"].ratios and r1 == r2


def test_observation_is_normalised_and_size_independent(graphs):
    for graph in graphs.values():
        env = LayerPruningEnv(graph, deferred=True)
        obs, _ = env.reset()
        assert obs.shape == (len(FEATURES),) and env.observation_space.contains(obs)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["lenet5", "resnet20", "resnet56", "mobilenetv2_small", "vgg_small"]),
       target=st.sampled_from([0.25, 0.5, 0.75]), round_to=st.sampled_from([1, 4]),
       actions=st.lists(st.floats(-1, 1), min_size=60, max_size=60), budget=st.sampled_from(["exact", "cap"]),
       action_range=st.sampled_from(["absolute", "feasible"]))
def test_every_episode_meets_the_budget(graphs, name, target, round_to, actions, budget, action_range):
    graph = graphs[name]
    try:
        env = LayerPruningEnv(graph, deferred=True, macs_target=target, r_max=0.9, round_to=round_to, budget=budget,
                              action_range=action_range)
    except UserError:  # target below what r_max can reach with this rounding: refused up front, tested elsewhere
        assume(False)
    info, _ = rollout(env, actions[: env.n_units])
    macs_ratio = info["policy"].macs_ratio(graph, round_to)
    assert macs_ratio <= target + 1e-9
    assert all(0.0 <= r <= 0.9 for r in info["policy"].ratios.values())
    if budget == "exact":  # no further than one rounding step of one unit below the target
        assert macs_ratio >= target - largest_step(graph, round_to)


def largest_step(graph, round_to):
    dense = {u.name: u.channels for u in graph.units}
    return max(1 - graph.macs({**dense, u.name: u.channels - min(round_to, u.channels - 1)}) / graph.dense_macs
               for u in graph.units)


def test_cap_budget_lets_random_actions_undershoot_and_exact_does_not(graphs):
    graph, rng = graphs["resnet20"], np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, len(graph.units)) for _ in range(20)]
    ratios = {}
    for budget in ("cap", "exact"):
        env = LayerPruningEnv(graph, deferred=True, macs_target=0.5, budget=budget)
        ratios[budget] = [rollout(env, a)[0]["policy"].macs_ratio(graph) for a in actions]
    assert min(ratios["cap"]) < 0.4  # AMC's one-sided wall: random actions often prune far more than asked
    assert min(ratios["exact"]) > 0.5 - largest_step(graph, 1)


def test_unknown_budget_is_a_user_error(graphs):
    with pytest.raises(UserError, match="env.budget"):
        LayerPruningEnv(graphs["resnet20"], deferred=True, budget="loose")


def test_clamp_only_raises_ratios_when_needed(graphs):
    env = LayerPruningEnv(graphs["resnet20"], deferred=True, macs_target=1.0)
    info, _ = rollout(env, [-1.0] * env.n_units)  # no budget pressure: the agent's zero ratios stand
    assert set(info["policy"].ratios.values()) == {0.0}


def test_feasible_action_range_spans_the_budget_interval_and_clamps_nothing(graphs):
    env = LayerPruningEnv(graphs["resnet20"], deferred=True, macs_target=0.25, action_range="feasible")
    rng = np.random.default_rng(0)
    env.reset()
    seen_interval = False
    for _ in range(env.n_units):
        low, high = env.ratio_bounds()
        action = rng.uniform(-1, 1)
        *_, info = env.step(np.array([action]))
        assert info["ratio"] == pytest.approx(low + (action + 1) / 2 * (high - low))
        assert info["executed_action"] == pytest.approx(action)  # the agent's action is what ran
        seen_interval |= high - low > 0.1
    assert seen_interval  # the budget left real choices, so the mapping above was exercised


def test_feasible_and_absolute_ranges_play_the_same_policy_from_ratios(graphs):
    graph, rng = graphs["resnet20"], np.random.default_rng(1)
    ratios = list(rng.uniform(0, 0.8, len(graph.units)))
    played = {r: LayerPruningEnv(graph, deferred=True, macs_target=0.25, action_range=r).play_ratios(ratios)[0]
              for r in ("absolute", "feasible")}
    assert played["absolute"].ratios == pytest.approx(played["feasible"].ratios)
    assert played["absolute"].ratios != pytest.approx(dict(zip(graph.names, ratios)))  # the budget moved some


def test_unknown_action_range_is_a_user_error(graphs):
    with pytest.raises(UserError, match="agent.action_range"):
        LayerPruningEnv(graphs["resnet20"], deferred=True, action_range="relative")


def test_infeasible_target_is_a_user_error(graphs):
    with pytest.raises(UserError, match="env.macs_target"):
        LayerPruningEnv(graphs["resnet20"], deferred=True, macs_target=0.01, r_max=0.5)


@pytest.mark.parametrize("reward", sorted(REWARDS))
def test_rewards_by_name_and_cache(graphs, reward):
    graph = graphs["vgg_small"]
    fake = SyntheticEvaluator(graph, np.full(len(graph.units), 0.3))
    env = LayerPruningEnv(graph, fake, macs_target=0.6, reward=reward, reward_lambda=0.5)
    info, r = rollout(env, [0.0] * env.n_units)
    expected = REWARDS[reward](info["accuracy"], info["macs_ratio"], info["result"].macs, 0.5)
    assert r == pytest.approx(expected)
    rollout(env, [0.0] * env.n_units)
    assert fake.calls == 1  # the identical policy came from the cache


def test_deferred_mode_returns_the_policy_and_no_reward(graphs):
    env = LayerPruningEnv(graphs["vgg_small"], deferred=True)
    info, reward = rollout(env, [0.5] * env.n_units)
    assert reward == 0.0 and "policy" in info and "accuracy" not in info


def test_gym_make_with_no_arguments_gives_a_working_env():
    env = gym.make(envs.ENV_ID)
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, reward, done, _, info = env.step(env.action_space.sample())
    assert 0.0 <= info["accuracy"] <= 1.0 and info["macs_ratio"] <= 0.5 + 1e-9


def test_gym_make_with_a_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: 'tests.fixtures:tiny_cnn'}\ndata: {name: synthetic}\n"
                   "train: {epochs: 1, augment: false}\nenv: {macs_target: 0.7}\n")
    env = gym.make(envs.ENV_ID, config=str(cfg)).unwrapped
    assert env.macs_target == 0.7 and env.n_units == 2
    assert load_config(cfg).env.macs_target == 0.7
