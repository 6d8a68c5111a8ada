import json

import numpy as np
import pytest

from agents.agent import MAX_EPISODES_PER_EVALUATION, PruningAgent
from agents.baselines import global_magnitude, lamp, random_search, uniform
from agents.exploration import NoiseSchedule, truncated_normal
from envs.layer_pruning import LayerPruningEnv
from envs.synthetic import SyntheticEvaluator
from pruning.config import AgentConfig
from pruning.errors import UserError
from pruning.policy import SparsityPolicy
from pruning.models import build_model
from pruning.units import discover_units

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def graphs():
    return {name: discover_units(build_model(name, 1, 10, SHAPE), SHAPE) for name in ("vgg_small", "resnet20", "resnet56")}


def fake_env(graph, optimum=None, **kwargs):
    optimum = np.linspace(0.1, 0.7, len(graph.units)) if optimum is None else optimum
    evaluator = SyntheticEvaluator(graph, optimum)
    return LayerPruningEnv(graph, evaluator, **{"macs_target": 1.0, "r_max": 0.8, "reward": "amc_error", "budget": "cap",
                                             **kwargs}), evaluator


@pytest.mark.parametrize("seed", range(5))
def test_ddpg_learns_a_known_profile_better_than_random_search(graphs, seed):
    graph = graphs["vgg_small"]
    env, fake = fake_env(graph)
    agent = PruningAgent.create(AgentConfig(name="ddpg"), env, seed=seed)
    ddpg_best = min(fake.distance(e.policy) for e in agent.learn(env, 300))
    env, fake = fake_env(graph)
    random_best = min(fake.distance(e.policy) for e in random_search(env, 300, seed=seed))
    assert ddpg_best < random_best


def test_amc_defaults():
    cfg = AgentConfig()
    assert (cfg.name, cfg.warmup_episodes, cfg.noise_sigma, cfg.noise_decay, cfg.gamma) == ("ddpg", 100, 0.5, 0.95, 1.0)
    assert (cfg.net_arch, cfg.actor_lr, cfg.critic_lr, cfg.tau, cfg.batch_size) == ([300, 300], 1e-4, 1e-3, 0.01, 64)
    schedule = NoiseSchedule(0.5, 0.95, 100)
    assert schedule.sigma_at(50) == 0.5 and schedule.sigma_at(110) == pytest.approx(0.5 * 0.95 ** 10)


def test_repeats_widen_the_noise_up_to_its_initial_std_while_the_decay_goes_on():
    schedule = NoiseSchedule(0.5, 0.5, 10, repeat_growth=4.0)
    assert schedule.sigma_at(20) == pytest.approx(0.5 * 0.5 ** 10)
    schedule.record(False, 20)
    assert schedule.sigma_at(20) == pytest.approx(0.5 * 0.5 ** 10)  # a new policy changes nothing
    schedule.record(True, 20)
    assert schedule.sigma_at(20) == pytest.approx(0.5 * 0.5 ** 10 * 4)
    assert schedule.sigma_at(21) == pytest.approx(0.5 * 0.5 ** 11 * 4)  # the decay goes on
    for _ in range(100):
        schedule.record(True, 21)
    assert schedule.sigma_at(21) == pytest.approx(0.5)  # capped at the initial std, not 4 ** 100 times more
    assert schedule.sigma_at(22) == pytest.approx(0.25)
    steep = NoiseSchedule(0.5, 1e-9, 0, repeat_growth=1e12)
    for _ in range(200):
        steep.record(True, 50)
    assert steep.sigma_at(50) == pytest.approx(0.5)  # 200 repeats of x1e12 only bring (1e-9) ** 50 back to 0.5
    amc = NoiseSchedule(0.5, 0.5, 10)
    amc.record(True, 20)
    assert amc.sigma_at(20) == pytest.approx(0.5 * 0.5 ** 10)  # growth 1: AMC's schedule, repeats or not


@pytest.mark.parametrize("growth, spends_budget", [(1.0, False), (20.0, True)])
def test_repeat_noise_growth_lets_an_agent_whose_noise_has_decayed_spend_its_budget(graphs, growth, spends_budget):
    env, fake = fake_env(graphs["vgg_small"])
    stuck = AgentConfig(warmup_episodes=3, noise_decay=0.1, actor_lr=1e-12, net_arch=[32, 32],
                        repeat_noise_growth=growth)  # the actor stays put and its noise is soon gone
    agent = PruningAgent.create(stuck, env, seed=0)
    evaluations = agent.learn(env, 12)
    assert len({e.policy.key(env.graph) for e in evaluations}) == len(evaluations) == fake.calls
    assert (len(evaluations) == 12) is spends_budget
    assert (agent.model._episode_num < 12 * MAX_EPISODES_PER_EVALUATION) is spends_budget


def test_truncated_noise_stays_in_bounds_without_piling_on_them():
    rng = np.random.default_rng(0)
    samples = truncated_normal(np.full(4000, 0.95), 1.0, rng)
    assert samples.min() >= -1 and samples.max() <= 1
    assert np.mean(samples == 1.0) < 0.01  # clipping would put about a third of the mass exactly on the bound


@pytest.mark.parametrize("name", ["ddpg", "td3", "sac", "ppo"])
def test_every_algorithm_runs_and_meets_the_budget(graphs, name):
    graph = graphs["vgg_small"]
    env, _ = fake_env(graph, macs_target=0.5)
    agent = PruningAgent.create(AgentConfig(name=name, warmup_episodes=5, net_arch=[32, 32]), env, seed=0)
    evaluations = agent.learn(env, 24)
    assert len(evaluations) == 24
    assert all(e.macs_ratio <= 0.5 + 1e-9 for e in evaluations)


def test_repeated_policies_cost_no_evaluation_and_a_converged_agent_stops(graphs):
    env, fake = fake_env(graphs["vgg_small"])
    frozen = AgentConfig(warmup_episodes=3, noise_sigma=0.0, actor_lr=1e-12, net_arch=[32, 32])
    agent = PruningAgent.create(frozen, env, seed=0)
    evaluations = agent.learn(env, 6)  # 3 random policies, then the frozen actor's one policy over and over
    assert len(evaluations) == 4 == fake.calls
    assert len({e.policy.key(env.graph) for e in evaluations}) == 4
    assert agent.model._episode_num == 6 * MAX_EPISODES_PER_EVALUATION


def test_random_and_tpe_do_not_count_repeats(graphs):
    from search.local import tpe_search

    for search in (lambda env: random_search(env, 5, seed=0), lambda env: tpe_search(env, 5, 0, lambda e: None)):
        env, fake = fake_env(graphs["vgg_small"], r_max=1e-3)  # every ratio keeps every channel: one policy exists
        assert len(search(env)) == 1 == fake.calls


def test_save_load_round_trip_and_version_check(graphs, tmp_path):
    env, _ = fake_env(graphs["vgg_small"])
    agent = PruningAgent.create(AgentConfig(warmup_episodes=3, net_arch=[32, 32]), env, seed=1)
    agent.learn(env, 6)
    path = agent.save(tmp_path / "agent", env)
    loaded = PruningAgent.load(path, env)
    assert loaded.propose(env)[0].ratios == agent.propose(env)[0].ratios
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["trained_on"]["units"] == env.n_units and meta["episodes"] == agent.model._episode_num >= 6
    meta["obs_version"] = 0
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="observation version 0"):
        PruningAgent.load(path, env)
    with pytest.raises(UserError, match="agent not found"):
        PruningAgent.load(tmp_path / "nothing", env)


def test_a_damaged_agent_is_a_user_error_that_names_the_file(graphs, tmp_path):
    """A truncated archive or a hand-edited metadata file was a stable-baselines3 or KeyError traceback."""
    env, _ = fake_env(graphs["vgg_small"])
    path = PruningAgent.create(AgentConfig(warmup_episodes=3, net_arch=[8]), env, seed=1).save(tmp_path / "agent", env)
    meta_path, meta = path.with_suffix(".json"), json.loads(path.with_suffix(".json").read_text())
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match=r"agent.zip: not a readable DDPG agent archive"):
        PruningAgent.load(path, env)
    for damaged, message in ((dict(meta, agent={**meta["agent"], "name": "a2c"}),
                              r"field `agent.name` is not an agent's setting \(Input should be 'ddpg', 'td3', 'sac' or"),
                             (dict(meta, agent=None), r"field `agent` is not an agent's setting \(Input should be a valid"),
                             ([meta], r"expected the agent's metadata \(a JSON object\), got a JSON list")):
        meta_path.write_text(json.dumps(damaged))
        with pytest.raises(UserError, match=message):
            PruningAgent.load(path, env)
    meta_path.write_text("{")
    with pytest.raises(UserError, match=r"agent.json: not valid JSON"):
        PruningAgent.load(path, env)


def test_an_agent_saved_again_is_whole_or_as_it_was_after_a_ctrl_c(graphs, tmp_path, monkeypatch):
    """A search saves its agent as it ends; a Ctrl-C in the middle of that must leave the earlier archive that
    --agent and `transfer` load, not a cut one."""
    env, _ = fake_env(graphs["vgg_small"])
    agent = PruningAgent.create(AgentConfig(warmup_episodes=3, net_arch=[8]), env, seed=1)
    path = agent.save(tmp_path / "agent", env)
    earlier = path.read_bytes()

    def cut_short(target, *args, **kwargs):
        with open(target, "wb") as file:
            file.write(earlier[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(agent.model, "save", cut_short)
    with pytest.raises(KeyboardInterrupt):
        agent.save(tmp_path / "agent", env)
    assert path.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.json", "agent.zip"]
    PruningAgent.load(path, env)


def test_agent_from_resnet20_acts_on_resnet56_within_budget(graphs):
    env20, _ = fake_env(graphs["resnet20"], macs_target=0.5)
    agent = PruningAgent.create(AgentConfig(warmup_episodes=5, net_arch=[64, 64]), env20, seed=0)
    agent.learn(env20, 15)
    env56, fake56 = fake_env(graphs["resnet56"], macs_target=0.5)
    policy, transitions = agent.propose(env56)  # zero-shot
    assert len(transitions) == env56.n_units == 30
    assert policy.model_fingerprint == graphs["resnet56"].fingerprint
    assert policy.macs_ratio(graphs["resnet56"]) <= 0.5 + 1e-9
    agent.warm_start(seed=1)  # then as the warm start of a new search
    evaluations = agent.learn(env56, 4)
    assert len(evaluations) == 4
    assert evaluations[0].policy.ratios == policy.ratios  # a warm start scores the transferred policy itself first
    assert evaluations[1].policy.ratios != policy.ratios  # and then explores around it


def test_a_warm_start_seeded_with_a_resampled_policy(graphs):
    """Policy reuse end to end: a ResNet-20 agent and a ResNet-20 policy go on to search ResNet-56."""
    from search.local import seeded_agent_search
    from search.reuse import move_policy

    env20, _ = fake_env(graphs["resnet20"], macs_target=0.5, budget="exact")
    agent = PruningAgent.create(AgentConfig(warmup_episodes=5, net_arch=[64, 64], batch_size=16), env20, seed=0)
    source = agent.learn(env20, 8)[-1].policy
    env56, _ = fake_env(graphs["resnet56"], macs_target=0.5, budget="exact")
    seed = move_policy(source, env56)
    assert seed.model_fingerprint == graphs["resnet56"].fingerprint
    assert 0.49 < seed.macs_ratio(graphs["resnet56"]) <= 0.5 + 1e-9
    zero_shot = agent.propose(env56)[0]
    agent.warm_start(seed=1)
    episodes, sunk = agent.model._episode_num, []
    evaluations = seeded_agent_search(agent, env56, 4, [seed, seed], sunk.append)
    assert [e.episode for e in evaluations] == [e.episode for e in sunk] == [0, 1, 2, 3]
    assert evaluations[0].policy.ratios == seed.ratios  # the seed first, once
    assert evaluations[1].policy.ratios == zero_shot.ratios  # then the agent's own policy as it is
    assert agent.model._episode_num == episodes + 3  # the seed was a demonstration, not an agent episode
    assert len({e.policy.key(graphs["resnet56"]) for e in evaluations}) == 4


def test_imitation_moves_the_actor_onto_a_seed_policy(graphs):
    from search.reuse import move_policy

    graph = graphs["resnet56"]
    env, _ = fake_env(graph, macs_target=0.5, budget="exact")
    agent = PruningAgent.create(AgentConfig(net_arch=[64, 64]), env, seed=0)
    seed = move_policy(SparsityPolicy.from_ratios(graph, np.linspace(0.6, 0.1, len(graph.units))), env)
    demo = agent.demonstrate(env, seed)[1]

    def distance() -> float:
        return float(np.abs(agent.propose(env)[0].vector(graph) - seed.vector(graph)).mean())

    before = distance()
    assert np.isnan(agent.imitate([demo], 0)) and np.isnan(agent.imitate([], 50))  # nothing to do
    assert distance() == before
    error = agent.imitate([demo], 500)
    assert error < 0.01 and distance() < before / 3
    sac = PruningAgent.create(AgentConfig(name="sac", net_arch=[16]), env, seed=0)
    with pytest.raises(UserError, match="search.imitate_seeds: behaviour cloning needs a deterministic actor"):
        sac.imitate([demo], 10)


def test_a_warm_start_explores_with_its_own_seed(graphs, tmp_path):
    env, _ = fake_env(graphs["vgg_small"])
    agent = PruningAgent.create(AgentConfig(warmup_episodes=2, net_arch=[16]), env, seed=0)
    agent.learn(env, 3)
    path = agent.save(tmp_path / "agent", env)

    def explored(seed):
        warm = PruningAgent.load(path, env)
        warm.warm_start(seed=seed)
        proposals = []
        for _ in range(3):
            policy, transitions = warm.propose(env, deterministic=False)
            warm.observe_episode(transitions, 0.5, train=False)  # the episode count drives the noise
            proposals.append(policy.ratios)
        return proposals

    first = explored(1)
    assert first == explored(1)  # same seed, same search
    assert first[0] == explored(2)[0]  # both score the transferred policy itself first
    assert first[1:] != explored(2)[1:]  # then explore differently


def test_deferred_rewards_train_the_agent(graphs):
    env, fake = fake_env(graphs["vgg_small"])
    env.deferred = True
    agent = PruningAgent.create(AgentConfig(warmup_episodes=2, batch_size=8, net_arch=[32, 32]), env, seed=0)
    before = [p.detach().clone() for p in agent.model.actor.parameters()]
    for _ in range(4):
        policy, transitions = agent.propose(env, deterministic=False)
        agent.observe_episode(transitions, fake.evaluate(policy).accuracy)
    after = list(agent.model.actor.parameters())
    assert agent.model._episode_num == 4
    assert any(not (a == b).all() for a, b in zip(before, after))


@pytest.mark.parametrize("deferred", [False, True])
def test_the_agent_learns_from_the_action_the_budget_clamp_executed(graphs, deferred):
    env, fake = fake_env(graphs["resnet20"], macs_target=0.25, budget="exact")
    steps, step = [], env.step

    def recording_step(action):
        result = step(action)
        steps.append(result[-1])
        return result

    env.step = recording_step
    agent = PruningAgent.create(AgentConfig(warmup_episodes=3, batch_size=8, net_arch=[32, 32],
                                            learn_executed_action=True), env, seed=0)
    if deferred:
        env.deferred = True
        for _ in range(3):
            policy, transitions = agent.propose(env, deterministic=False)
            agent.observe_episode(transitions, fake.evaluate(policy).accuracy)
    else:
        agent.learn(env, 3)
    buffer = agent.model.replay_buffer
    stored = buffer.actions[:buffer.pos, 0, 0]
    assert len(stored) == len(steps) == 3 * env.n_units
    assert np.allclose(stored, [env.ratio_to_action(info["ratio"]) for info in steps], atol=1e-6)
    # the clamp changed some of the warm-up's random actions, so storing the asked-for ones would fail above
    assert any(abs(info["ratio"] - info["wanted_ratio"]) > 0.05 for info in steps)


@pytest.mark.parametrize("deferred", [False, True])
def test_an_agent_with_a_feasible_action_range_sets_its_env_and_learns_unclamped_actions(graphs, deferred):
    env, fake = fake_env(graphs["resnet20"], macs_target=0.25, budget="exact")
    agent = PruningAgent.create(AgentConfig(warmup_episodes=3, batch_size=8, net_arch=[32, 32], action_range="feasible"),
                                env, seed=0)
    if deferred:
        env.deferred = True
        policies = []
        for _ in range(3):
            policy, transitions = agent.propose(env, deterministic=False)
            agent.observe_episode(transitions, fake.evaluate(policy).accuracy)
            policies.append(policy)
    else:
        policies = [e.policy for e in agent.learn(env, 3)]
    assert env.action_range == "feasible"
    buffer = agent.model.replay_buffer
    stored = buffer.actions[:buffer.pos, 0, 0].reshape(3, env.n_units)
    absolute = LayerPruningEnv(env.graph, deferred=True, macs_target=0.25)
    for actions, policy in zip(stored, policies):  # replaying the stored actions rebuilds each policy exactly
        replayed, _ = env.rollout(lambda _obs, t: actions[t:t + 1])
        assert replayed.ratios == pytest.approx(policy.ratios)
        assert replayed.macs_ratio(env.graph, env.round_to) <= 0.25 + 1e-9
    # read as absolute ratios, the same actions make other policies: the agent's actions were relative
    assert any(absolute.rollout(lambda _obs, t: a[t:t + 1])[0].ratios != pytest.approx(p.ratios)
               for a, p in zip(stored, policies))


def test_rule_baselines_meet_the_target(trained_vgg, digits):
    graph = discover_units(trained_vgg, digits.input_shape)
    policies = {"uniform": uniform(graph, 0.5), "global_magnitude": global_magnitude(trained_vgg, graph, 0.5),
                "lamp": lamp(trained_vgg, graph, 0.5)}
    for name, policy in policies.items():
        assert policy.macs_ratio(graph) <= 0.5, name
        assert policy.macs_ratio(graph) > 0.35, name  # the least pruning that meets it, not far below
    assert len(set(policies["uniform"].ratios.values())) == 1
    assert len(set(policies["lamp"].ratios.values())) > 1  # global ranking gives layer-wise ratios
