"""`PruningAgent`: an SB3 model plus what is needed to use it on any `LayerPruningEnv` (and to save, load, transfer)."""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Container

import numpy as np
from pydantic import ValidationError
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure as configure_logger

from agents.exploration import EpisodeRewardReplayBuffer, truncated_normal
from agents.sb3_agents import CLASSES, build_algorithm
from agents.screening import RewardModel, expected_improvement
from agents.transfer_prior import SourceRewards, TransferredRewardModel
from envs.layer_pruning import FEATURES, LATENCY_FEATURES, OBS_VERSION, LayerPruningEnv, Step
from envs.rewards import latency_penalty
from pruning.checkpoint import atomic_write, atomic_write_text, read_json_object
from pruning.config import AgentConfig
from pruning.errors import UserError
from pruning.policy import SparsityPolicy, unit_profile

log = logging.getLogger("prunepilot")


@dataclass
class Evaluation:
    """One evaluated policy, as every searcher reports it."""

    episode: int
    policy: SparsityPolicy
    accuracy: float
    macs_ratio: float
    reward: float
    extra: dict[str, Any] = field(default_factory=dict)


MAX_EPISODES_PER_EVALUATION = 10
"""A searcher that keeps proposing policies it has already scored stops after this many episodes per
evaluation of its budget (it has converged); repeats cost no evaluation, so they do not count."""


def note_outcome(model: BaseAlgorithm, repeat: bool, next_episode: int) -> None:
    """Tell the exploration schedule (DDPG/TD3) whether the episode before `next_episode` repeated a scored policy."""
    schedule = getattr(model, "noise_schedule", None)
    if schedule is not None:
        schedule.record(repeat, next_episode)


class _RecordEvaluations(BaseCallback):
    """Passes on each finished episode's new policy with its score; with `stop_at_budget`, stops after `budget`.

    A repeated policy (same kept channels) is scored from the env's cache: the agent learns from it,
    but it costs no evaluation and so does not count against the budget.
    """

    def __init__(self, sink: Callable[[Evaluation], None], budget: int, stop_at_budget: bool):
        super().__init__()
        self.sink, self.budget, self.stop_at_budget = sink, budget, stop_at_budget
        self.evaluated = self.repeats = 0

    @property
    def episodes(self) -> int:
        return self.evaluated + self.repeats

    def _on_step(self) -> bool:
        for info, reward in zip(self.locals["infos"], self.locals["rewards"]):
            if "policy" not in info:
                continue
            note_outcome(self.model, bool(info.get("repeat")), self.model._episode_num + 1)  # SB3 counts it after this
            if info.get("repeat"):
                self.repeats += 1
                continue
            self.sink(Evaluation(self.evaluated, info["policy"], info["accuracy"], info["macs_ratio"], float(reward),
                                 {"agent_episode": self.episodes}))
            self.evaluated += 1
        return not (self.stop_at_budget and self.evaluated >= self.budget)


class PruningAgent:
    """Decides per-unit ratios; works on any LayerPruningEnv because the observation is size-independent."""

    def __init__(self, model: BaseAlgorithm, cfg: AgentConfig, reward_model: RewardModel | None = None):
        self.model, self.cfg = model, cfg
        self.reward_model = reward_model
        """With `agent.candidates` > 1: the scored policies of the model being searched (never saved with the agent)."""
        self.last_screen: dict[str, float] = {}
        """How the last proposal was chosen: candidates considered, the model's predicted reward and std."""
        self.prior: SourceRewards | None = None
        """Another model's scored policies (`search --prior`): the screen of a model they were not scored on
        starts from them (agents/transfer_prior.py)."""

    @classmethod
    def create(cls, cfg: AgentConfig, env: LayerPruningEnv, seed: int = 0) -> "PruningAgent":
        model = build_algorithm(cfg, env, env.n_units, seed)
        model.set_logger(configure_logger(None, []))  # deferred training calls train() outside learn()
        return cls(model, cfg)

    # ------------------------------------------------------------------------- acting
    def act(self, observation: np.ndarray, deterministic: bool = True, noise_scale: float = 1.0) -> np.ndarray:
        """The actor's action; with deterministic=False, AMC's exploration (warm-up, then decaying noise, its std
        times `noise_scale`)."""
        if deterministic:
            action, _ = self.model.predict(observation, deterministic=True)
            return np.asarray(action, dtype=np.float32).reshape(-1)
        if self.model._episode_num < self.cfg.warmup_episodes and hasattr(self.model, "replay_buffer"):
            return self.random_action()
        schedule = getattr(self.model, "noise_schedule", None)
        if schedule is None:  # SAC and PPO explore through their stochastic policies
            action, _ = self.model.predict(observation, deterministic=False)
            return np.asarray(action, dtype=np.float32).reshape(-1)
        mean, _ = self.model.predict(observation, deterministic=True)
        std = 2.0 * schedule.sigma_at(self.model._episode_num) * noise_scale
        return truncated_normal(np.asarray(mean).reshape(-1), std, self.noise_rng())

    def noise_rng(self) -> np.random.Generator:
        """The generator of every exploration draw (seeded with the search, saved with the agent)."""
        rng = getattr(self.model, "_noise_rng", None)
        if rng is None:
            rng = self.model._noise_rng = np.random.default_rng(self.model.seed)
        return rng

    def random_action(self) -> np.ndarray:
        """A uniformly random action, as the warm-up plays (from the exploration generator)."""
        return self.noise_rng().uniform(-1.0, 1.0, self.model.action_space.shape).astype(np.float32)

    def random_episode(self, env: LayerPruningEnv) -> tuple[SparsityPolicy, list[Step]]:
        """An episode of uniformly random actions, as in the warm-up, whatever the agent has learned."""
        return env.rollout(lambda _obs, _t: self.random_action())

    def use(self, env: LayerPruningEnv) -> LayerPruningEnv:
        """`env`, set to read actions the way this agent chooses them (`agent.action_range`)."""
        env.action_range = self.cfg.action_range
        return env

    def propose(self, env: LayerPruningEnv, deterministic: bool = True,
                exclude: Container[str] = ()) -> tuple[SparsityPolicy, list[tuple]]:
        """Roll one episode without evaluating it (env in deferred mode or not); return the policy and transitions.

        Exploring with `agent.candidates` K > 1 and a ready reward model, it rolls K episodes and returns
        the one whose policy has the largest expected improvement among those whose key is not in
        `exclude` (policies scored or in flight); when every candidate is excluded, the first.
        """
        self.use(env)
        self.last_screen = {}

        def episode(noise_scale: float = 1.0) -> tuple[SparsityPolicy, list[Step]]:
            return env.rollout(lambda obs, _t: self.act(obs, deterministic, noise_scale))

        model = self.screening_model(env)
        if deterministic or model is None or not model.ready:
            policy, steps = episode()
            return policy, self._transitions(steps)
        scales, randoms = self.candidate_noise_scales(), self.random_candidate_count()
        candidates = [episode(scale) for scale in scales[:len(scales) - randoms]] + \
            [self.random_episode(env) for _ in range(randoms)]
        first_random = len(candidates) - randoms
        fresh: dict[str, tuple[SparsityPolicy, list[Step], bool]] = {}
        for index, (policy, steps) in enumerate(candidates):
            key = policy.key(env.graph, env.round_to)
            if key not in exclude:
                fresh.setdefault(key, (policy, steps, index >= first_random))
        if not fresh:
            return candidates[0][0], self._transitions(candidates[0][1])
        options = list(fresh.values())
        mean, std = model.predict(np.stack([model.inputs(p, env.graph, env.round_to) for p, _, _ in options]))
        mean = mean + np.array([self.known_reward(env, p) for p, _, _ in options])
        best = int(np.argmax(expected_improvement(mean, std, model.best)))
        self.last_screen = {"candidates": len(options), "predicted_reward": float(mean[best]),
                            "predicted_std": float(std[best])}
        if randoms:
            self.last_screen["random_candidate"] = float(options[best][2])
        if isinstance(model, TransferredRewardModel):
            self.last_screen["prior_weight"] = model.weights[0]
        return options[best][0], self._transitions(options[best][1])

    def candidate_noise_scales(self) -> list[float]:
        """Each screened candidate's noise std as a multiple of the schedule's now (`agent.candidate_noise`)."""
        count = self.cfg.candidates
        schedule = getattr(self.model, "noise_schedule", None)
        if self.cfg.candidate_noise == "schedule" or schedule is None or count == 1:
            return [1.0] * count
        now = schedule.sigma_at(self.model._episode_num)
        if now <= 0 or now >= schedule.sigma:  # a warm start's exact episode, or no decay yet
            return [1.0] * count
        return [(schedule.sigma / now) ** (k / (count - 1)) for k in range(count)]

    def random_candidate_count(self) -> int:
        """Screened candidates drawn uniformly at random (`agent.warm_start_random_candidates`): in a warm start only,
        after its first episode, which plays the transferred policy as it is."""
        schedule = getattr(self.model, "noise_schedule", None)
        if schedule is None or schedule.exact_episode is None or self.model._episode_num <= schedule.exact_episode:
            return 0
        return self.cfg.warm_start_random_candidates

    def screening_model(self, env: LayerPruningEnv) -> RewardModel | None:
        """The reward model of env's model (a new one for another model); None without screening."""
        if self.cfg.candidates <= 1:
            return None
        if self.reward_model is None or self.reward_model.fingerprint != env.graph.fingerprint:
            seed, fingerprint = int(self.model.seed or 0), env.graph.fingerprint
            if self.prior is not None and self.prior.fingerprint != fingerprint:
                source = self.prior
                if self.cfg.screen_known_latency and env.latency_weight > 0:  # as this model's process learns
                    source = source.less_known(lambda ratio: -latency_penalty(ratio, env.latency_weight,
                                                                              env.latency_target))
                self.reward_model = TransferredRewardModel(env.n_units, source.prior_for(env.graph, seed),
                                                           list(unit_profile(env.graph).values()),
                                                           min_points=self.cfg.screen_after, seed=seed,
                                                           fingerprint=fingerprint)
            else:
                self.reward_model = RewardModel(env.n_units, min_points=self.cfg.screen_after, seed=seed,
                                                fingerprint=fingerprint)
        return self.reward_model

    def remember(self, env: LayerPruningEnv, policy: SparsityPolicy, reward: float) -> None:
        """A policy of env's model was scored: the reward model (when screening) learns it."""
        model = self.screening_model(env)
        if model is not None:
            model.add(model.inputs(policy, env.graph, env.round_to), reward, self.known_reward(env, policy))

    def known_reward(self, env: LayerPruningEnv, policy: SparsityPolicy) -> float:
        """The part of a policy's reward known before scoring it, which the screen adds rather than learns: minus its
        latency penalty from the table with `agent.screen_known_latency`, else 0."""
        if not self.cfg.screen_known_latency:
            return 0.0
        return -env.latency_cost(policy.kept(env.graph, env.round_to))

    def demonstrate(self, env: LayerPruningEnv, policy: SparsityPolicy) -> tuple[SparsityPolicy, list[tuple]]:
        """`policy` (made for env's model) played as an episode, so the agent can learn from its score.

        Seeds a search with a known policy (a resampled one from another model, say): its transitions
        go into the replay buffer like the agent's own once `observe_episode` gets the reward.
        """
        played, steps = self.use(env).play_ratios(list(policy.vector(env.graph)))
        return played, self._transitions(steps)

    def _transitions(self, steps: list) -> list[tuple]:
        """Replay-buffer transitions; with learn_executed_action, the action the env executed after its clamp."""
        executed = getattr(self.model, "learn_executed_action", False)
        return [(s.obs, s.next_obs, np.array([s.info["executed_action"]], dtype=np.float32) if executed else s.action,
                 s.done) for s in steps]

    # ------------------------------------------------------------------------- learning
    def learn(self, env: LayerPruningEnv, episodes: int,
              on_evaluation: Callable[[Evaluation], None] | None = None) -> list[Evaluation]:
        """Learn on a standalone env until `episodes` distinct policies were evaluated (repeats are free)."""
        if env.deferred:
            raise ValueError("learn() needs a standalone env (deferred=False); the Ray searcher feeds rewards itself")
        evaluations: list[Evaluation] = []

        def sink(evaluation: Evaluation) -> None:
            evaluations.append(evaluation)
            if on_evaluation:
                on_evaluation(evaluation)

        if self.cfg.candidates > 1:
            self._learn_screened(env, episodes, sink)
            return evaluations
        self.model.set_env(self.use(env))
        off_policy = hasattr(self.model, "replay_buffer")
        # off-policy agents play exactly the episodes still needed, so none is cut short (SB3 drops the transition
        # of a step whose callback stops training); PPO collects whole rollouts and is stopped by the callback
        record = _RecordEvaluations(sink, episodes, stop_at_budget=not off_policy)
        cap = episodes * MAX_EPISODES_PER_EVALUATION
        while record.evaluated < episodes and record.episodes < cap:
            remaining = min(episodes - record.evaluated, cap - record.episodes)
            self.model.learn(total_timesteps=remaining * env.n_units, callback=record, reset_num_timesteps=False)
        if record.repeats:
            log.info("%s: %d new policies scored in %d episodes (%d repeats, scored from the cache)", self.cfg.name,
                     record.evaluated, record.episodes, record.repeats)
        return evaluations

    def _learn_screened(self, env: LayerPruningEnv, episodes: int, sink: Callable[[Evaluation], None]) -> None:
        """`learn` with screened proposals: propose, score through the env (its cache scores repeats), learn."""
        evaluated = repeats = 0
        while evaluated < episodes and evaluated + repeats < episodes * MAX_EPISODES_PER_EVALUATION:
            policy, transitions = self.propose(env, deterministic=False, exclude=env.cache)
            repeat = env.has_scored(policy)
            result = env.evaluate(policy)
            reward = env.reward(result)
            self.observe_episode(transitions, reward, repeat=repeat)
            if repeat:
                repeats += 1
                continue
            self.remember(env, policy, reward)
            sink(Evaluation(evaluated, policy, result.accuracy, result.macs_ratio, reward,
                            {"agent_episode": evaluated + repeats, **self.last_screen}))
            evaluated += 1
        if repeats:
            log.info("%s: %d new policies scored in %d episodes (%d repeats, scored from the cache)", self.cfg.name,
                     evaluated, evaluated + repeats, repeats)

    def warm_start(self, seed: int, warmup_episodes: int = 0) -> None:
        """Continue from learned weights on a new model: skip (or shorten) the random warm-up, and explore with
        `agent.warm_start_noise` times the saved noise std.

        The exploration is re-seeded with the new search's seed: a saved agent carries its first
        search's seed, and without this every warm start from it would explore alike.
        """
        self.model.seed = seed
        self.model.set_random_seed(seed)
        self.model._noise_rng = np.random.default_rng(seed)
        if hasattr(self.model, "learning_starts"):
            self.model.learning_starts = self.model.num_timesteps + warmup_episodes
        schedule = getattr(self.model, "noise_schedule", None)
        if schedule is not None:  # first the learned policy as it is, then explore near it, not from scratch
            schedule.warmup_episodes = self.model._episode_num
            schedule.exact_episode = self.model._episode_num
            schedule.sigma = schedule.sigma * self.cfg.warm_start_noise
            schedule.log_boost = 0.0

    def imitate(self, demonstrations: list[list[tuple]], steps: int) -> float:
        """Behaviour cloning: `steps` Adam steps (lr 1e-3, an optimiser of its own) of the actor toward the
        demonstrations' actions; returns the final mean squared error.

        Moves a transferred actor onto seed policies, so that its own policy comes close to them and its
        exploration noise centres near them. The target actor is synced; the critic is left alone.
        """
        if steps == 0 or not demonstrations:
            return float("nan")
        if not hasattr(self.model, "actor_target"):
            raise UserError(f"search.imitate_seeds: behaviour cloning needs a deterministic actor (ddpg, td3), "
                            f"not {self.cfg.name}")
        import torch

        rows = [t for episode in demonstrations for t in episode]
        obs = torch.as_tensor(np.stack([t[0] for t in rows]), dtype=torch.float32)
        actions = torch.as_tensor(np.stack([np.asarray(t[2]).reshape(-1) for t in rows]), dtype=torch.float32)
        actor = self.model.actor
        optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
        actor.set_training_mode(True)
        for _ in range(steps):
            loss = torch.nn.functional.mse_loss(actor(obs), actions)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        actor.set_training_mode(False)
        self.model.actor_target.load_state_dict(actor.state_dict())
        return float(loss.detach())

    def observe_episode(self, transitions: list[tuple], reward: float, train: bool = True,
                        demonstration: bool = False, repeat: bool = False) -> None:
        """Deferred mode: store an episode's transitions with its reward (supplied later) and train.

        A demonstration (a seed policy, not played by the agent) is only stored: it does not advance the
        episode count that drives warm-up and noise decay, and training waits for the agent's next own
        episode, so a warm start's first episode is still the transferred actor as it was. `repeat` says
        the episode's policy was scored before (its reward came from the searcher's record).
        """
        buffer = getattr(self.model, "replay_buffer", None)
        if not isinstance(buffer, EpisodeRewardReplayBuffer):
            raise ValueError(f"{self.cfg.name} has no episode replay buffer; deferred rewards need ddpg, td3 or sac")
        for obs, next_obs, action, done in transitions:
            buffer.pending.append((obs[None], next_obs[None], action[None], np.array([done]), [{}]))
        buffer.add_episode(reward)
        self.model.num_timesteps += len(transitions)
        if not demonstration:
            self.model._episode_num += 1
            note_outcome(self.model, repeat, self.model._episode_num)
        if train and not demonstration and self.model.num_timesteps >= self.model.learning_starts and buffer.size() >= self.cfg.batch_size:
            steps = len(transitions) if self.cfg.gradient_steps < 0 else self.cfg.gradient_steps
            self.model.train(gradient_steps=steps, batch_size=self.cfg.batch_size)

    def state_bytes(self) -> dict[str, bytes]:
        """The whole agent (networks, optimisers, noise schedule, replay buffer, reward model) as bytes, for Tune
        checkpoints."""
        import io
        import pickle

        model_io, buffer_io = io.BytesIO(), io.BytesIO()
        self.model.save(model_io)
        if getattr(self.model, "replay_buffer", None) is not None:
            self.model.save_replay_buffer(buffer_io)
        return {"model": model_io.getvalue(), "buffer": buffer_io.getvalue(), "cfg": self.cfg.model_dump_json().encode(),
                "reward_model": b"" if self.reward_model is None else pickle.dumps(self.reward_model)}

    @classmethod
    def from_state_bytes(cls, state: dict[str, bytes], env: LayerPruningEnv) -> "PruningAgent":
        import io
        import pickle

        cfg = AgentConfig.model_validate_json(state["cfg"])
        model = CLASSES[cfg.name].load(io.BytesIO(state["model"]), env=env, device="cpu")
        if state["buffer"]:
            model.load_replay_buffer(io.BytesIO(state["buffer"]))
        model.set_logger(configure_logger(None, []))
        reward_model = pickle.loads(state["reward_model"]) if state.get("reward_model") else None
        return cls(model, cfg, reward_model)

    # ------------------------------------------------------------------------- persistence
    def observed_features(self) -> tuple[str, ...]:
        """The features this agent's networks read, known from their input size (with or without the latency ones)."""
        with_latency = FEATURES + LATENCY_FEATURES
        return with_latency if self.model.observation_space.shape[0] == len(with_latency) else FEATURES

    def save(self, path: str | Path, env: LayerPruningEnv | None = None) -> Path:
        """Write `<path>.zip` (SB3) and `<path>.json` (what the observation means), each whole or not at all: a
        crash or a Ctrl-C in the middle must not leave a cut archive for --agent or `transfer` to load."""
        path = Path(path).with_suffix(".zip")
        atomic_write(path, self.model.save)
        meta = {"agent": self.cfg.model_dump(), "obs_version": OBS_VERSION,
                "features": list(self.observed_features()),
                "episodes": int(self.model._episode_num), "timesteps": int(self.model.num_timesteps)}
        if env is not None:
            meta["trained_on"] = {"fingerprint": env.graph.fingerprint, "units": env.n_units,
                                  "macs_target": env.macs_target, "r_min": env.r_min, "r_max": env.r_max}
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
        return path

    @staticmethod
    def read_metadata(path: str | Path) -> tuple[Path, dict, AgentConfig]:
        """The saved agent's archive path, metadata and settings, checked without loading its networks: cheap
        enough to run before any training, so a wrong --agent fails first."""
        if Path(path).suffix not in ("", ".zip"):  # e.g. best_policy.json: name what was given, not a .zip beside it
            raise UserError(f"{path}: not an agent (expected the agent.zip that `prunepilot search` writes, "
                            f"with its agent.json beside it; a saved policy is given with --policy)")
        path = Path(path).with_suffix(".zip")
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise UserError(f"{path}: agent not found (expected {path.name} and {meta_path.name} side by side)")
        meta = read_json_object(meta_path, "the agent's metadata")
        if meta.get("obs_version") != OBS_VERSION:
            raise UserError(f"{meta_path}: agent was trained on observation version {meta.get('obs_version')}, "
                            f"this PrunePilot uses {OBS_VERSION}; retrain it")
        if meta.get("features") not in (list(FEATURES), list(FEATURES + LATENCY_FEATURES)):
            raise UserError(f"{meta_path}: agent was trained on other observation features; retrain it")
        try:
            cfg = AgentConfig.model_validate(meta.get("agent"))
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(["agent", *map(str, error["loc"])])
            raise UserError(f"{meta_path}: field `{field}` is not an agent's setting ({error['msg']})") from None
        return path, meta, cfg

    @classmethod
    def load(cls, path: str | Path, env: LayerPruningEnv | None = None) -> "PruningAgent":
        path, meta, cfg = cls.read_metadata(path)
        meta_path = path.with_suffix(".json")
        if env is not None and meta["features"] != list(env.features):
            raise UserError(f"{meta_path}: agent was trained with env.latency_features="
                            f"{str(len(meta['features']) > len(FEATURES)).lower()}; set it so to reuse the agent")
        try:
            model = CLASSES[cfg.name].load(path, env=env, device="cpu")
        except (ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"{path}: not a readable {cfg.name.upper()} agent archive ({exc})") from None
        model.set_logger(configure_logger(None, []))
        return cls(model, cfg)
