"""The stable-baselines3 algorithms by name, with AMC's settings as DDPG's defaults."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import numpy as np
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import update_learning_rate

from agents.exploration import EpisodeRewardReplayBuffer, NoiseSchedule, truncated_normal
from pruning.config import AgentConfig
from pruning.errors import UserError


class AMCExplorationMixin:
    """Warm-up, decaying truncated-normal noise and separate actor/critic learning rates (AMC)."""

    noise_schedule: NoiseSchedule
    actor_lr: float
    critic_lr: float

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1):
        rng = getattr(self, "_noise_rng", None)
        if rng is None:
            rng = self._noise_rng = np.random.default_rng(self.seed)
        if self.num_timesteps < learning_starts:
            action = rng.uniform(-1.0, 1.0, (n_envs, *self.action_space.shape)).astype(np.float32)
        else:
            mean, _ = self.predict(self._last_obs, deterministic=True)
            # ratio-unit std -> action-unit std: [-1, 1] spans the ratio range twice over
            action = truncated_normal(mean, 2.0 * self.noise_schedule.sigma_at(self._episode_num), rng)
        return action, action

    def _store_transition(self, replay_buffer: Any, buffer_action: np.ndarray, new_obs: Any, reward: np.ndarray,
                          dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Store the action the env executed (after its budget clamp), so the critic learns what really happened."""
        if getattr(self, "learn_executed_action", False):
            buffer_action = np.array([[info.get("executed_action", a[0])] for info, a in zip(infos, buffer_action)],
                                     dtype=np.float32)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)

    def _update_learning_rate(self, optimizers: Any) -> None:
        update_learning_rate(self.actor.optimizer, self.actor_lr)
        update_learning_rate(self.critic.optimizer, self.critic_lr)
        self.logger.record("train/actor_lr", self.actor_lr)


class AMCDDPG(AMCExplorationMixin, DDPG):
    pass


class AMCTD3(AMCExplorationMixin, TD3):
    pass


def _off_policy_common(cfg: AgentConfig, n_units: int) -> dict[str, Any]:
    return dict(buffer_size=cfg.buffer_size, learning_starts=cfg.warmup_episodes * n_units, batch_size=cfg.batch_size,
                tau=cfg.tau, gamma=cfg.gamma, train_freq=(1, "episode"), gradient_steps=cfg.gradient_steps,
                replay_buffer_class=EpisodeRewardReplayBuffer,
                replay_buffer_kwargs={"baseline_alpha": cfg.baseline_alpha},
                policy_kwargs={"net_arch": list(cfg.net_arch)})


def _amc(cls: type, cfg: AgentConfig, env: Any, n_units: int, seed: int) -> BaseAlgorithm:
    model = cls("MlpPolicy", env, learning_rate=cfg.critic_lr, seed=seed, device="cpu",
                **{**_off_policy_common(cfg, n_units), **cfg.kwargs})
    model.noise_schedule = NoiseSchedule(cfg.noise_sigma, cfg.noise_decay, cfg.warmup_episodes,
                                         repeat_growth=cfg.repeat_noise_growth)
    model.actor_lr, model.critic_lr = cfg.actor_lr, cfg.critic_lr
    model.learn_executed_action = cfg.learn_executed_action
    return model


def _sac(cfg: AgentConfig, env: Any, n_units: int, seed: int) -> BaseAlgorithm:
    return SAC("MlpPolicy", env, learning_rate=cfg.critic_lr, seed=seed, device="cpu",
               **{**_off_policy_common(cfg, n_units), **cfg.kwargs})


def _ppo(cfg: AgentConfig, env: Any, n_units: int, seed: int) -> BaseAlgorithm:
    episodes_per_update = 8
    settings = dict(n_steps=n_units * episodes_per_update, batch_size=n_units * 2, gamma=cfg.gamma, gae_lambda=1.0,
                    learning_rate=cfg.actor_lr * 3, n_epochs=10, policy_kwargs={"net_arch": list(cfg.net_arch)})
    return PPO("MlpPolicy", env, seed=seed, device="cpu", **{**settings, **cfg.kwargs})


BUILDERS: dict[str, Callable[[AgentConfig, Any, int, int], BaseAlgorithm]] = {
    "ddpg": lambda cfg, env, n, seed: _amc(AMCDDPG, cfg, env, n, seed),
    "td3": lambda cfg, env, n, seed: _amc(AMCTD3, cfg, env, n, seed),
    "sac": _sac,
    "ppo": _ppo,
}
CLASSES: dict[str, type[BaseAlgorithm]] = {"ddpg": AMCDDPG, "td3": AMCTD3, "sac": SAC, "ppo": PPO}


OWN_SETTINGS: dict[str, str] = {
    "seed": "search.seed", "device": "nothing: agents train on the CPU", "gamma": "agent.gamma",
    "policy": "nothing: MlpPolicy", "env": "nothing: the pruning environment",
}
OFF_POLICY_SETTINGS: dict[str, str] = {
    **OWN_SETTINGS, "learning_rate": "agent.actor_lr and agent.critic_lr", "buffer_size": "agent.buffer_size",
    "batch_size": "agent.batch_size", "tau": "agent.tau", "gradient_steps": "agent.gradient_steps",
    "learning_starts": "agent.warmup_episodes", "train_freq": "nothing: one update per episode (AMC)",
    "replay_buffer_class": "nothing: AMC's episode-reward buffer", "replay_buffer_kwargs": "agent.baseline_alpha",
}
"""SB3 keywords that the agent section (or the search) already sets, and what sets each: in agent.kwargs they
clashed (a TypeError once the agent was built) or silently overrode the named field. PPO's n_steps, batch_size,
learning_rate and n_epochs are our defaults with no field of their own, so agent.kwargs may set them."""


def check_agent_kwargs(cfg: AgentConfig) -> None:
    """agent.kwargs against the algorithm's constructor, before any training or sweep: an unknown or clashing
    keyword used to fail only when the agent was built, after the baseline and the sweep."""
    cls = CLASSES.get(cfg.name)
    if cls is None:
        return
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "_init_setup_model"}
    taken = OWN_SETTINGS if cfg.name == "ppo" else OFF_POLICY_SETTINGS
    for key in cfg.kwargs:
        if key in taken:
            raise UserError(f"agent.kwargs.{key}: set by {taken[key]}; it cannot be given in agent.kwargs")
        if key not in accepted:
            near = [name if name not in taken else f"{name} (set by {taken[name]})"
                    for name in difflib.get_close_matches(key, sorted(accepted), n=3)]
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise UserError(f"agent.kwargs.{key}: stable-baselines3's {cfg.name.upper()} takes no keyword "
                            f"{key!r}{hint}")


def build_algorithm(cfg: AgentConfig, env: Any, n_units: int, seed: int) -> BaseAlgorithm:
    """A fresh SB3 model for `cfg.name`; unknown names list the valid ones."""
    builder = BUILDERS.get(cfg.name)
    if builder is None:
        raise UserError(f"agent.name: unknown agent {cfg.name!r}; expected one of {sorted(BUILDERS)}")
    try:
        return builder(cfg, env, n_units, seed)
    except TypeError as exc:
        raise UserError(f"agent.kwargs: {cfg.name} rejected its settings ({exc})") from None
