"""A reward model carried across models (`search --prior`): the shared space, the RGPE weights, and what it buys."""

import pickle

import numpy as np
import pandas as pd
import pytest

from agents.agent import PruningAgent
from agents.transfer_prior import SourceRewards, TransferredRewardModel, depth_bin_features, misranked_pairs
from envs.layer_pruning import LayerPruningEnv
from envs.synthetic import SyntheticEvaluator
from pruning.config import AgentConfig
from pruning.errors import UserError
from pruning.models import build_model
from pruning.policy import SparsityPolicy, depth_positions, unit_profile
from pruning.units import discover_units
from search.review import ratio_column

SHAPE = (1, 28, 28)
SMALL = {"warmup_episodes": 4, "net_arch": [16, 16], "batch_size": 8}


def optimum(graph) -> np.ndarray:
    """The best ratio of each unit, a function of its depth alone: what one model's search can teach another's."""
    return 0.1 + 0.6 * depth_positions(graph)


@pytest.fixture(scope="module")
def graphs():
    source = discover_units(build_model("vgg_small", 1, 10, SHAPE, widths=[16, "M", 32, 32, "M", 64]), SHAPE)
    target = discover_units(build_model("vgg_small", 1, 10, SHAPE), SHAPE)
    assert source.fingerprint != target.fingerprint and len(source.units) != len(target.units)
    return source, target


def scored_source(graph, count: int = 60, sign: float = 1.0, seed: int = 0) -> SourceRewards:
    """`count` random policies of `graph` scored by the synthetic accuracy (negated with sign -1: a prior that
    ranks every policy the wrong way round)."""
    evaluator = SyntheticEvaluator(graph, optimum(graph))
    ratios = np.random.default_rng(seed).uniform(0.0, 0.8, (count, len(graph.units)))
    rewards = [sign * evaluator.evaluate(SparsityPolicy.from_ratios(graph, r)).accuracy for r in ratios]
    return SourceRewards(ratios, list(unit_profile(graph).values()), np.array(rewards), "source", graph.fingerprint)


def test_depth_bins_average_each_kind_and_interpolate_where_a_bin_has_none():
    profile = [(0.0, "residual-group"), (0.2, "conv"), (0.4, "conv"), (0.9, "conv"), (1.0, "residual-group")]
    ratios = np.array([0.1, 0.2, 0.4, 0.6, 0.5])
    assert depth_bin_features(ratios, profile, ["conv", "residual-group"], bins=2)[0] == pytest.approx(
        [0.3, 0.6, 0.1, 0.5])
    # four bins: conv's third bin (0.5-0.75) has no conv, so it takes conv's ratio interpolated at 0.625
    four = depth_bin_features(ratios, profile, ["conv"], bins=4)[0]
    assert four == pytest.approx([0.2, 0.4, 0.4 + 0.2 * (0.625 - 0.4) / 0.5, 0.6])
    # a kind this model lacks is read from all its units
    assert depth_bin_features(ratios, profile, ["linear"], bins=2)[0] == pytest.approx([np.mean([0.1, 0.2, 0.4]),
                                                                                      np.mean([0.6, 0.5])])
    assert depth_bin_features(np.stack([ratios, ratios[::-1]]), profile, ["conv"], bins=2).shape == (2, 2)


def test_misranked_pairs_count_each_disagreeing_order_in_both_directions():
    assert misranked_pairs(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == 0
    assert misranked_pairs(np.array([3.0, 2.0, 1.0]), np.array([10.0, 20.0, 30.0])) == 6
    assert misranked_pairs(np.array([1.0, 3.0, 2.0]), np.array([10.0, 20.0, 30.0])) == 2


def target_points(graph, count: int, seed: int = 1):
    evaluator = SyntheticEvaluator(graph, optimum(graph))
    policies = [SparsityPolicy.from_ratios(graph, r)
                for r in np.random.default_rng(seed).uniform(0.0, 0.8, (count, len(graph.units)))]
    return policies, [evaluator.evaluate(p).accuracy for p in policies]


def transferred(graphs, sign: float = 1.0) -> TransferredRewardModel:
    source, target = graphs
    return TransferredRewardModel(len(target.units), scored_source(source, sign=sign).prior_for(target),
                                  list(unit_profile(target).values()), fingerprint=target.fingerprint)


def test_a_prior_that_ranks_the_target_right_leads_and_one_that_ranks_it_wrong_fades(graphs):
    _, target = graphs
    policies, rewards = target_points(target, 12, seed=2)
    inputs = np.stack([transferred(graphs).inputs(p, target, 1) for p in policies])
    weights = {}
    for sign in (1.0, -1.0):
        model = transferred(graphs, sign)
        assert not model.ready
        weights[sign] = []
        for count, (policy, reward) in enumerate(zip(policies, rewards), start=1):
            model.add(model.inputs(policy, target, 1), reward)
            assert model.ready  # from its first scored policy, not after agent.screen_after
            mean, _ = model.predict(inputs)  # as a search does: a screen after every scored policy
            weights[sign].append(model.weights[0])
            if count == 2 and sign == 1.0:  # no pair yet to judge the target's own model on: the prior alone
                assert model.weights == (1.0, 0.0) and np.corrcoef(mean, rewards)[0, 1] > 0.8
        if sign == -1.0:
            assert np.corrcoef(mean, rewards)[0, 1] > 0.5  # the target's own process took over
    right, wrong = np.array(weights[1.0][2:]), np.array(weights[-1.0][2:])
    assert right.mean() > 0.6  # ranks this model's policies better than a process of 3-12 points in 13 dimensions
    assert wrong.mean() < 0.3 and wrong[-1] < 0.05  # every pair the wrong way round: it fades to nothing


def screened_search(graphs, prior: SourceRewards | None, seed: int, budget: int = 10) -> list:
    _, target = graphs
    env = LayerPruningEnv(target, SyntheticEvaluator(target, optimum(target)), macs_target=1.0, r_max=0.8,
                          reward="amc_error", budget="cap")
    agent = PruningAgent.create(AgentConfig(**SMALL, candidates=16), env, seed=seed)
    agent.prior = prior
    return agent.learn(env, budget)


def test_a_prior_from_another_model_finds_better_policies_early_than_the_same_screen_without(graphs):
    source, _ = graphs
    prior = scored_source(source)
    with_prior = [max(e.reward for e in screened_search(graphs, prior, seed)) for seed in range(3)]
    without = [max(e.reward for e in screened_search(graphs, None, seed)) for seed in range(3)]
    assert np.mean(with_prior) > np.mean(without) + 0.01, (with_prior, without)
    run = screened_search(graphs, prior, 0)
    assert "prior_weight" not in run[0].extra and all(0.0 <= e.extra["prior_weight"] <= 1.0 for e in run[1:])
    assert [e.policy.ratios for e in run] == [e.policy.ratios for e in screened_search(graphs, prior, 0)]


def test_the_transferred_model_survives_a_checkpoint(graphs):
    _, target = graphs
    model = transferred(graphs)
    policies, rewards = target_points(target, 6)
    for policy, reward in zip(policies, rewards):
        model.add(model.inputs(policy, target, 1), reward)
    inputs = np.stack([model.inputs(p, target, 1) for p in policies])
    restored = pickle.loads(pickle.dumps(model))
    assert restored.predict(inputs)[0] == pytest.approx(model.predict(inputs)[0])


def write_source_run(folder, graph, rows: int = 5):
    folder.mkdir(parents=True, exist_ok=True)
    SparsityPolicy.from_ratios(graph, [0.3] * len(graph.units)).save(folder / "best_policy.json")
    ratios = np.random.default_rng(0).uniform(0, 0.8, (rows, len(graph.units)))
    frame = pd.DataFrame(ratios, columns=[ratio_column(n) for n in graph.names])
    frame.insert(0, "reward", np.linspace(-0.5, -0.1, rows))
    frame.insert(0, "state", ["COMPLETE"] * (rows - 1) + ["FAILED"])
    frame.to_csv(folder / "evaluations.csv", index=False)
    return frame


def test_a_run_folder_loads_as_a_prior_and_bad_folders_are_named(graphs, tmp_path):
    source, _ = graphs
    frame = write_source_run(tmp_path / "run", source)
    loaded = SourceRewards.load(tmp_path / "run")
    assert len(loaded.rewards) == 4  # the failed evaluation is left out
    assert loaded.ratios == pytest.approx(frame[[ratio_column(n) for n in source.names]].to_numpy()[:4])
    assert loaded.fingerprint == source.fingerprint
    assert loaded.latency_ratios is None  # searched without a latency table
    frame.assign(latency_ratio=[0.6, 0.5, None, 0.7, 0.4]).to_csv(tmp_path / "run" / "evaluations.csv", index=False)
    timed = SourceRewards.load(tmp_path / "run")
    assert timed.latency_ratios[[0, 1, 3]] == pytest.approx([0.6, 0.5, 0.7]) and np.isnan(timed.latency_ratios[2])
    # less a known part of each recorded ratio; none where none was recorded
    less = timed.less_known(lambda ratio: -ratio)
    assert less.rewards == pytest.approx(timed.rewards + np.array([0.6, 0.5, 0.0, 0.7]))
    assert loaded.less_known(lambda ratio: -ratio) is loaded
    with pytest.raises(UserError, match="evaluations.csv not found"):
        SourceRewards.load(tmp_path / "nowhere")
    frame.drop(columns=[ratio_column(source.names[0])]).to_csv(tmp_path / "run" / "evaluations.csv", index=False)
    with pytest.raises(UserError, match=f"lacks the column.*{source.names[0]}.*same search"):
        SourceRewards.load(tmp_path / "run")
    frame.head(1).to_csv(tmp_path / "run" / "evaluations.csv", index=False)
    with pytest.raises(UserError, match="at least 2 scored policies, found 1"):
        SourceRewards.load(tmp_path / "run")


def test_a_bench_csv_loads_as_a_prior_and_searches_of_one_model_pool(graphs, tmp_path):
    source, target = graphs
    write_source_run(tmp_path / "run", source)
    bench = tmp_path / "bench"
    (bench / "evaluations").mkdir(parents=True)
    (bench / "policies").mkdir()
    (tmp_path / "run" / "best_policy.json").rename(bench / "policies" / "m-s0.json")
    (tmp_path / "run" / "evaluations.csv").rename(bench / "evaluations" / "m-s0.csv")
    from_bench = SourceRewards.load(bench / "evaluations" / "m-s0.csv")
    assert len(from_bench.rewards) == 4 and from_bench.fingerprint == source.fingerprint
    with pytest.raises(UserError, match="--also-source .*m-s1.csv: m-s1.json not found"):
        (bench / "evaluations" / "m-s1.csv").write_text("reward\n")
        SourceRewards.load(bench / "evaluations" / "m-s1.csv", "--also-source")
    other = scored_source(source, count=7)
    pooled = SourceRewards.pooled([from_bench, other])
    assert len(pooled.rewards) == 11 and pooled.ratios.shape == (11, len(source.units))
    assert pooled.rewards[4:] == pytest.approx(other.rewards) and pooled.ratios[:4] == pytest.approx(from_bench.ratios)
    assert SourceRewards.pooled([other]) is other
    assert pooled.latency_ratios is None
    timed = SourceRewards(other.ratios, other.profile, other.rewards, "timed", other.fingerprint, np.full(7, 0.5))
    mixed = SourceRewards.pooled([from_bench, timed]).latency_ratios  # NaN where a source recorded none
    assert np.isnan(mixed[:4]).all() and mixed[4:] == pytest.approx(np.full(7, 0.5))
    with pytest.raises(UserError, match="units differ"):
        SourceRewards.pooled([other, scored_source(target)])


def test_a_prior_does_not_depend_on_its_seed_so_a_replay_fits_it_once(graphs):
    source, target = graphs
    rewards = scored_source(source)
    features = depth_bin_features(np.full((3, len(target.units)), 0.4) + np.arange(3)[:, None] * 0.1,
                                  list(unit_profile(target).values()), sorted({u.kind for u in target.units}))
    assert rewards.prior_for(target, 0).predict(features)[0] == pytest.approx(rewards.prior_for(target, 7).predict(features)[0])
