"""Model-based exploration: the reward model, the screened proposals, and both search paths that use them."""

import pickle

import numpy as np
import pytest
from pydantic import ValidationError
from ray.tune.search import Searcher

from agents.agent import PruningAgent
from agents.screening import RewardModel, expected_improvement, policy_features
from envs.layer_pruning import LayerPruningEnv
from envs.synthetic import SyntheticEvaluator
from pruning.config import AgentConfig
from pruning.errors import UserError
from pruning.models import build_model
from pruning.units import discover_units
from search.agent_searcher import AgentSearcher

SHAPE = (1, 28, 28)
SMALL = {"warmup_episodes": 4, "net_arch": [16, 16], "batch_size": 8}


@pytest.fixture(scope="module")
def graph():
    return discover_units(build_model("vgg_small", 1, 10, SHAPE), SHAPE)


def synthetic_env(graph, **kwargs):
    evaluator = SyntheticEvaluator(graph, np.linspace(0.1, 0.7, len(graph.units)))
    env = LayerPruningEnv(graph, evaluator, **{"macs_target": 1.0, "r_max": 0.8, "reward": "amc_error",
                                               "budget": "cap", **kwargs})
    return env, evaluator


def test_expected_improvement_is_the_gap_without_uncertainty_and_grows_with_it():
    assert expected_improvement(np.array([0.5, 0.2]), np.zeros(2), best=0.3) == pytest.approx([0.2, 0.0])
    ei = expected_improvement(np.full(3, 0.3), np.array([0.01, 0.1, 1.0]), best=0.3)
    assert ei == pytest.approx(np.array([0.01, 0.1, 1.0]) / np.sqrt(2 * np.pi))  # at the best: std * pdf(0)
    assert expected_improvement(np.array([0.0]), np.array([0.1]), best=1.0)[0] == pytest.approx(0.0, abs=1e-12)


def test_the_reward_model_learns_a_smooth_reward_and_refuses_what_it_cannot_use():
    rng = np.random.default_rng(0)
    model = RewardModel(3, min_points=5)
    with pytest.raises(RuntimeError, match="needs 5 scored policies"):
        model.predict(np.zeros(3))
    truth = np.array([0.2, 0.5, 0.7])

    def reward(x):
        return -float(np.sum((x - truth) ** 2))

    for x in rng.uniform(0, 0.8, (40, 3)):
        model.add(x, reward(x))
    model.add(np.zeros(3), float("nan"))  # a failed evaluation: not a point to regress on
    assert len(model) == 40 and model.ready
    with pytest.raises(ValueError, match="expected 3 features"):
        model.add(np.zeros(4), 0.0)
    tests = rng.uniform(0, 0.8, (50, 3))
    mean, std = model.predict(tests)
    errors = mean - np.array([reward(x) for x in tests])
    assert np.sqrt(np.mean(errors ** 2)) < 0.2 * np.std([reward(x) for x in tests])
    assert (std >= 0).all()
    ei = model.expected_improvement(np.stack([truth, np.full(3, 0.8)]))
    assert ei[0] > ei[1]  # the optimum is worth more than a far corner
    copy = pickle.loads(pickle.dumps(model))  # the fitted process is not pickled; it is rebuilt the same
    assert copy._gp is None
    assert np.allclose(copy.predict(tests)[0], mean)


def test_features_are_the_ratios_a_policy_really_prunes_at(graph):
    env, _ = synthetic_env(graph, round_to=4)
    policy, _ = env.play_ratios([0.33] * env.n_units)
    kept = policy.kept(graph, 4)
    assert policy_features(policy, graph, 4) == pytest.approx([1 - kept[u.name] / u.channels for u in graph.units])


def test_a_screening_agent_sends_the_candidate_with_the_largest_expected_improvement(graph):
    env, _ = synthetic_env(graph)
    agent = PruningAgent.create(AgentConfig(**SMALL, candidates=6, screen_after=3), env, seed=0)
    for _ in range(3):
        policy, _ = agent.propose(env, deterministic=False)
        assert agent.last_screen == {}  # the model is not ready: the first candidate, as without screening
        agent.remember(env, policy, env.reward(env.evaluate(policy)))
    rng_state = agent.model._noise_rng.bit_generator.state
    chosen, transitions = agent.propose(env, deterministic=False)
    assert len(transitions) == env.n_units and agent.last_screen["candidates"] == 6
    agent.model._noise_rng.bit_generator.state = rng_state  # replay the same 6 candidates without screening
    agent.cfg = agent.cfg.model_copy(update={"candidates": 1})
    candidates = [agent.propose(env, deterministic=False)[0] for _ in range(6)]
    features = np.stack([policy_features(p, graph, 1) for p in candidates])
    ei = agent.reward_model.expected_improvement(features)
    assert chosen.key(graph) == candidates[int(np.argmax(ei))].key(graph)
    assert agent.last_screen == {}
    agent.cfg = agent.cfg.model_copy(update={"candidates": 6})
    agent.model._noise_rng.bit_generator.state = rng_state
    everything = {p.key(graph) for p in candidates}
    assert agent.propose(env, deterministic=False, exclude=everything)[0].key(graph) == candidates[0].key(graph)


def test_a_screening_agent_spends_its_budget_on_new_policies_and_records_its_predictions(graph):
    env, fake = synthetic_env(graph)
    agent = PruningAgent.create(AgentConfig(**SMALL, candidates=8, screen_after=4), env, seed=1)
    evaluations = agent.learn(env, 16)
    assert len(evaluations) == 16 == fake.calls == len({e.policy.key(graph) for e in evaluations})
    assert [e.episode for e in evaluations] == list(range(16))
    screened = [e for e in evaluations if "predicted_reward" in e.extra]
    assert len(screened) == 16 - 4 and all(e.extra["candidates"] >= 1 for e in screened)
    assert len(agent.reward_model) == 16 and agent.model._episode_num >= 16
    again = PruningAgent.create(AgentConfig(**SMALL, candidates=8, screen_after=4), synthetic_env(graph)[0], seed=1)
    assert [e.policy.ratios for e in again.learn(synthetic_env(graph)[0], 16)] == [e.policy.ratios for e in evaluations]


def test_screening_finds_better_policies_than_the_same_agent_unscreened(graph):
    """On the fake evaluator (a known best profile), 3 seeds, 30 evaluations each."""
    def best_distance(candidates, seed):
        env, fake = synthetic_env(graph)
        agent = PruningAgent.create(AgentConfig(warmup_episodes=10, net_arch=[32, 32], candidates=candidates), env,
                                    seed=seed)
        return min(fake.distance(e.policy) for e in agent.learn(env, 30))

    screened = [best_distance(32, seed) for seed in range(3)]
    plain = [best_distance(1, seed) for seed in range(3)]
    assert np.mean(screened) < 0.8 * np.mean(plain)


def test_ppo_cannot_screen():
    with pytest.raises(ValidationError, match="ppo learns on-policy"):
        AgentConfig(name="ppo", candidates=4)
    assert AgentConfig(name="sac", candidates=4).candidates == 4


def test_the_tune_searcher_screens_leaves_flights_alone_and_keeps_its_model_across_a_restore(graph, tmp_path):
    def make():
        env = LayerPruningEnv(graph, deferred=True, macs_target=0.5)
        agent = PruningAgent.create(AgentConfig(**SMALL, candidates=6, screen_after=3), env, seed=0)
        return AgentSearcher(agent, env, budget=8)

    s = make()
    for i in range(3):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"reward": -0.1 * i})
    assert len(s.agent.reward_model) == 3
    first = s.suggest("t3")
    assert {"candidates", "predicted_reward", "predicted_std"} <= set(first)  # recorded beside the result
    second = s.suggest("t4")  # t3 is in flight: screening picks another policy
    assert second["ratios"] != first["ratios"] and s.live["t3"].key != s.live["t4"].key
    s.save(str(tmp_path / "searcher.pkl"))
    restored = make()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.agent.reward_model.rewards == s.agent.reward_model.rewards
    for searcher in (s, restored):
        np.random.seed(0)  # SB3 samples its training batches from numpy's global generator
        searcher.on_trial_complete("t3", {"reward": 0.05})
    assert len(restored.agent.reward_model) == 4
    assert restored.suggest("t5") == s.suggest("t5")  # the same agent, noise and model: the same next proposal
    s.on_trial_complete("t4", error=True)
    assert len(s.agent.reward_model) == 4  # a failed trial gives the model nothing
    assert s.suggest("t6") == second  # and is sent again as it was
    assert s.suggest("t7") not in (None, Searcher.FINISHED)


def test_spread_candidates_explore_from_the_decayed_std_up_to_the_initial_one(graph):
    env, _ = synthetic_env(graph)
    cfg = AgentConfig(**SMALL, candidates=8, screen_after=3, candidate_noise="spread")
    agent = PruningAgent.create(cfg, env, seed=0)
    schedule = agent.model.noise_schedule
    agent.model._episode_num = SMALL["warmup_episodes"]  # no decay yet: every candidate at the schedule's std
    assert agent.candidate_noise_scales() == [1.0] * 8
    agent.model._episode_num = SMALL["warmup_episodes"] + 60  # AMC's std has decayed to 0.5 * 0.95^60 = 0.023
    scales = agent.candidate_noise_scales()
    now = schedule.sigma_at(agent.model._episode_num)
    assert scales[0] == 1.0 and now * scales[-1] == pytest.approx(schedule.sigma)
    assert np.allclose(np.diff(np.log(scales)), np.log(scales[1]))  # geometric spacing
    plain = PruningAgent.create(cfg.model_copy(update={"candidate_noise": "schedule"}), env, seed=0)
    assert plain.candidate_noise_scales() == [1.0] * 8

    def farthest_candidate(agent: PruningAgent) -> float:
        """How far the farthest of the agent's candidates prunes from its noiseless policy (max over units)."""
        agent.model._episode_num = SMALL["warmup_episodes"] + 60
        agent.model._noise_rng = np.random.default_rng(5)
        exact = np.array(env.rollout(lambda obs, _t: agent.act(obs))[0].vector(graph))
        farthest = 0.0
        for scale in agent.candidate_noise_scales():
            policy, _ = env.rollout(lambda obs, _t: agent.act(obs, deterministic=False, noise_scale=scale))
            farthest = max(farthest, float(np.abs(np.array(policy.vector(graph)) - exact).max()))
        return farthest

    # late in a search the schedule's candidates are nearly the actor's own policy; spread ones reach far from it
    assert farthest_candidate(plain) < 0.15 < farthest_candidate(agent)


def test_spread_candidate_noise_needs_screening_and_amc_noise():
    with pytest.raises(ValidationError, match="set agent.candidates > 1"):
        AgentConfig(candidate_noise="spread")
    with pytest.raises(ValidationError, match="sac explores through its stochastic policy"):
        AgentConfig(name="sac", candidates=4, candidate_noise="spread")
    assert AgentConfig(name="td3", candidates=4, candidate_noise="spread").candidate_noise == "spread"


def test_a_spread_screen_chooses_among_more_distinct_policies_late_in_a_search(graph):
    env, _ = synthetic_env(graph, round_to=4)  # channels kept in fours, as the benchmarks prune
    considered = {}
    for mode in ("schedule", "spread"):
        agent = PruningAgent.create(AgentConfig(**SMALL, candidates=8, screen_after=3, candidate_noise=mode), env, seed=0)
        for _ in range(4):  # random warm-up proposals make the reward model ready
            policy, _ = agent.propose(env, deterministic=False)
            agent.remember(env, policy, env.reward(env.evaluate(policy)))
        agent.model._episode_num = SMALL["warmup_episodes"] + 60  # AMC's std has decayed to 0.023
        considered[mode] = []
        for draw in range(5):
            agent.model._noise_rng = np.random.default_rng(draw)
            agent.propose(env, deterministic=False)
            considered[mode].append(agent.last_screen["candidates"])  # distinct fresh policies the screen chose among
    # the schedule's 8 late candidates often share channel counts; spread ones stay apart
    assert sum(considered["schedule"]) + 4 < sum(considered["spread"])


def test_a_warm_start_explores_with_the_fraction_of_the_saved_noise_this_run_asks_for(graph, tmp_path):
    from argparse import Namespace

    from pruning.config import load_config
    from search.search_job import load_warm_agent

    env, _ = synthetic_env(graph)
    saved = PruningAgent.create(AgentConfig(**SMALL, noise_sigma=0.4), env, seed=0)
    saved.model._episode_num = 40
    path = saved.save(tmp_path / "agent", env)

    def warm(*overrides):
        agent = load_warm_agent(Namespace(agent=str(path)), load_config(None, list(overrides)), graph)
        return agent, agent.model.noise_schedule

    halved, schedule = warm()
    assert schedule.sigma == pytest.approx(0.2) and halved.cfg.warm_start_noise == 0.5  # the default: half
    assert schedule.sigma_at(41) == pytest.approx(0.2 * 0.95)
    whole, schedule = warm("agent.warm_start_noise=1")
    assert schedule.sigma == pytest.approx(0.4) and whole.cfg.warm_start_noise == 1.0
    assert schedule.sigma_at(40) == 0.0  # the transferred policy as it is, then the decay from the whole std
    assert schedule.sigma_at(41) == pytest.approx(0.4 * 0.95) and schedule.sigma_at(43) == pytest.approx(0.4 * 0.95 ** 3)
    with pytest.raises(UserError, match="agent.warm_start_noise"):
        load_config(None, ["agent.warm_start_noise=0"])


def test_a_warm_start_screens_random_candidates_beside_those_around_its_actor(graph, tmp_path):
    env, _ = synthetic_env(graph)
    saved = PruningAgent.create(AgentConfig(**SMALL, candidates=8, screen_after=3), env, seed=0)
    saved.learn(env, 6)
    path = saved.save(tmp_path / "agent", env)

    def warm_search(randoms: int) -> list:
        fresh, _ = synthetic_env(graph)  # a score cache of its own: nothing counts as a repeat of another search
        agent = PruningAgent.load(path, fresh)
        agent.warm_start(seed=1)
        agent.cfg = agent.cfg.model_copy(update={"warm_start_random_candidates": randoms})
        assert agent.random_candidate_count() == 0  # its first episode is the transferred policy as it is
        evaluations = agent.learn(fresh, 12)
        assert agent.random_candidate_count() == randoms
        return evaluations

    mixed = warm_search(7)
    chosen = [e.extra["random_candidate"] for e in mixed if "predicted_reward" in e.extra]
    assert len(chosen) == 12 - 3 and set(chosen) <= {0.0, 1.0} and 1.0 in chosen  # the screen took random ones
    assert "random_candidate" not in mixed[0].extra
    plain = warm_search(0)
    assert mixed[0].policy.ratios == plain[0].policy.ratios  # the same transferred policy first
    assert all("random_candidate" not in e.extra for e in plain)
    assert [e.policy.ratios for e in warm_search(7)] == [e.policy.ratios for e in mixed]  # same seed, same search
    with pytest.raises(ValidationError, match="fewer than agent.candidates"):
        AgentConfig(candidates=4, warm_start_random_candidates=4)


def test_a_warm_start_screens_as_this_run_says_not_as_the_saved_agent_did(graph, tmp_path):
    from argparse import Namespace

    from pruning.config import load_config
    from search.search_job import load_warm_agent

    env, _ = synthetic_env(graph)
    saved = PruningAgent.create(AgentConfig(**SMALL), env, seed=0)
    saved.model._episode_num = 40
    path = saved.save(tmp_path / "agent", env)
    cfg = load_config(None, ["agent.candidates=8", "agent.screen_after=3", "agent.candidate_noise=spread"])
    agent = load_warm_agent(Namespace(agent=str(path)), cfg, graph)
    assert (agent.cfg.candidates, agent.cfg.screen_after, agent.cfg.candidate_noise) == (8, 3, "spread")
    assert agent.candidate_noise_scales() == [1.0] * 8  # the warm start's first episode: the learned policy as it is
    agent.model._episode_num += 30
    scales = agent.candidate_noise_scales()
    assert scales[0] == 1.0 and scales[-1] > 2.0  # spread from the halved, decayed std up to the halved initial one
