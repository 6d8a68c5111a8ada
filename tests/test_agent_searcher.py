"""The agent as a Tune `Searcher`, driven by hand without a Ray runtime (as Ray's tests/test_searchers.py)."""

import logging

import numpy as np
import pytest
from ray.tune.search import Searcher

from agents.agent import MAX_EPISODES_PER_EVALUATION, PruningAgent
from envs.layer_pruning import LayerPruningEnv
from pruning.config import AgentConfig
from pruning.models import build_model
from pruning.policy import SparsityPolicy
from pruning.units import discover_units
from search.agent_searcher import AgentSearcher
from search.reuse import move_policy

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def graph():
    return discover_units(build_model("vgg_small", 1, 10, SHAPE), SHAPE)


def searcher(graph, budget=4, save_to=None, seeds=None, **agent):
    env = LayerPruningEnv(graph, deferred=True, macs_target=0.5)
    settings = {"warmup_episodes": 2, "net_arch": [16, 16], "batch_size": 8, **agent}
    return AgentSearcher(PruningAgent.create(AgentConfig(**settings), env, seed=0), env, budget, save_to=save_to,
                         seeds=seeds)


def test_seed_policies_go_first_and_are_learnt_as_demonstrations(graph, tmp_path):
    seed = move_policy(SparsityPolicy.from_ratios(graph, np.linspace(0.1, 0.7, len(graph.units))),
                       LayerPruningEnv(graph, deferred=True, macs_target=0.5))
    s = searcher(graph, budget=3, seeds=[seed, seed])  # a repeated seed is sent once
    first = s.suggest("t0")
    assert first == {"ratios": seed.ratios}
    s.on_trial_complete("t0", {"reward": 0.4})
    assert s.agent.model._episode_num == 0  # a demonstration: no agent episode, the warm-up is not shortened
    assert s.agent.model.replay_buffer.size() == len(graph.units) and s.rewards == {seed.key(graph, 1): 0.4}
    s.save(str(tmp_path / "state.pkl"))
    second = s.suggest("t1")
    assert second != first and s.suggested == 2
    s.on_trial_complete("t1", {"reward": 0.2})
    assert s.agent.model._episode_num == 1
    fresh = searcher(graph, budget=3, seeds=[seed])
    fresh.restore(str(tmp_path / "state.pkl"))  # a resumed search does not send its seeds again
    assert fresh.suggest("t1") != first and fresh.seeds == []


def test_suggest_complete_and_budget(graph, caplog):
    s = searcher(graph)
    configs = [s.suggest(f"t{i}") for i in range(4)]
    assert all(set(c["ratios"]) == set(graph.names) for c in configs)
    assert s.suggest("t4") is None  # budget spent, but a trial in flight may still fail and be sent again
    s.on_trial_complete("t0", {"reward": 0.4})
    for i in (1, 2, 3):
        s.on_trial_complete(f"t{i}", {"reward": 0.1 * i})
    assert s.suggest("t5") == Searcher.FINISHED
    assert s.agent.model._episode_num == 4 and len(s.rewards) == 4
    with caplog.at_level(logging.WARNING, logger="prunepilot"):
        s.on_trial_complete("t0", {"reward": 0.9})
    assert "already finished" in caplog.text and 0.9 not in s.rewards.values()


def test_a_failed_trial_is_sent_again_until_its_attempts_run_out(graph, tmp_path):
    s = searcher(graph, budget=2, save_to=str(tmp_path / "agent"))
    first, second = s.suggest("t0"), s.suggest("t1")
    s.on_trial_complete("t0", {"reward": 0.4})
    s.on_trial_complete("t1", error=True)  # e.g. its worker died between two trials: Tune gave up on it
    assert s.agent.model._episode_num == 1  # a failed trial teaches nothing
    assert s.suggest("t2") == second  # the same policy again, as a new trial, not a new proposal
    assert s.suggested == 2
    s.on_trial_complete("t2", error=True)
    assert s.suggest("t3") == second  # resends: 2 by default, as Tune's max_failures
    s.on_trial_complete("t3", error=True)
    assert not (tmp_path / "agent.zip").exists()
    assert s.suggest("t4") == Searcher.FINISHED  # three attempts failed: given up, and the search ends
    assert (tmp_path / "agent.zip").is_file() and len(s.rewards) == 1 and first != second


def test_state_round_trip(graph, tmp_path):
    s = searcher(graph)
    s.suggest("t0")
    s.on_trial_complete("t0", {"reward": 0.4})
    s.suggest("t1")
    s.save(str(tmp_path / "searcher.pkl"))
    restored = searcher(graph)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert (restored.suggested, restored.completed, restored.rewards) == (2, {"t0"}, s.rewards)
    assert set(restored.live) == {"t1"}
    obs, _ = s.env.reset()
    assert np.allclose(restored.agent.act(obs), s.agent.act(obs))


def test_a_repeated_policy_is_learnt_from_its_known_reward_and_a_converged_agent_finishes(graph, tmp_path):
    s = searcher(graph, save_to=str(tmp_path / "agent"), warmup_episodes=0, noise_sigma=0.0, actor_lr=1e-12,
                 critic_lr=1e-12)  # one policy, always
    assert "ratios" in s.suggest("t0")
    s.on_trial_complete("t0", {"reward": 0.4})
    assert not (tmp_path / "agent.zip").exists()
    assert s.suggest("t1") == Searcher.FINISHED  # every proposal repeats t0 and is learnt from its reward
    assert (tmp_path / "agent.zip").is_file()  # saved although the budget was not spent
    assert s.repeats == 4 * MAX_EPISODES_PER_EVALUATION - 1
    assert s.agent.model._episode_num == 4 * MAX_EPISODES_PER_EVALUATION  # t0 and every repeat, each observed once


def test_repeats_widen_the_searchers_noise_until_it_proposes_a_new_policy(graph):
    def stuck(**growth):  # t0 is explored, t1 is the frozen actor's policy; then the noise is gone: it repeats t1
        s = searcher(graph, budget=3, warmup_episodes=0, noise_decay=1e-9, actor_lr=1e-12, critic_lr=1e-12, **growth)
        for trial in ("t0", "t1"):
            assert "ratios" in s.suggest(trial)
            s.on_trial_complete(trial, {"reward": 0.4})
        return s

    assert stuck().suggest("t2") == Searcher.FINISHED  # AMC's schedule: every proposal repeats t1
    s = stuck(repeat_noise_growth=1e12)  # more than the decay takes away per episode
    assert "ratios" in s.suggest("t2")  # repeats, learnt from t1's reward, widened the noise
    assert 0 < s.repeats < MAX_EPISODES_PER_EVALUATION
    assert s.agent.model.noise_schedule.log_boost == pytest.approx(s.repeats * np.log(1e12))


def test_a_proposal_in_flight_waits_for_its_reward(graph):
    s = searcher(graph, warmup_episodes=0, noise_sigma=0.0, actor_lr=1e-12, critic_lr=1e-12)
    assert "ratios" in s.suggest("t0")
    assert s.suggest("t1") is None  # nothing new to send while t0 is out: Tune asks again later
    assert s.agent.model._episode_num == 0 and set(s.live) == {"t0"}
    s.on_trial_complete("t0", {"reward": 0.4})
    assert s.suggest("t1") == Searcher.FINISHED
