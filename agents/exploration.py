"""AMC's exploration and reward shaping for off-policy stable-baselines3 agents.

- warm-up: uniformly random actions for the first `warmup_episodes` episodes;
- then a truncated normal around the actor's action, std `sigma * decay ** (episode - warmup)`,
  truncated to the action bounds (no mass piled on the bounds, unlike clipping); optionally widened
  by each repeat of an already-scored policy, up to the initial std (`repeat_growth`, off by default);
- every step of an episode is stored with the episode's final reward minus a moving-average
  baseline (`EpisodeRewardReplayBuffer`), AMC's variance reduction with gamma = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import truncnorm
from stable_baselines3.common.buffers import ReplayBuffer


@dataclass
class NoiseSchedule:
    """Std of the exploration noise, in ratio units ([0, 1] spans the whole action range)."""

    sigma: float = 0.5
    decay: float = 0.95
    warmup_episodes: int = 100
    exact_episode: int | None = None
    """An episode played without noise: a warm start's first, so it scores the transferred policy itself."""
    repeat_growth: float = 1.0
    """Std multiplier per repeat of an already-scored policy (1 = AMC's schedule, repeats change nothing)."""
    log_boost: float = 0.0
    """Log of the factor repeats have widened the std by so far; never above what brings it back to `sigma`."""

    def _log_decay(self, episode: int) -> float:
        return max(0, episode - self.warmup_episodes) * math.log(self.decay)

    def sigma_at(self, episode: int) -> float:
        if episode == self.exact_episode:
            return 0.0
        if self.log_boost <= 0 or self.sigma <= 0:  # AMC's schedule, computed exactly as it always was
            return self.sigma * self.decay ** max(0, episode - self.warmup_episodes)
        return self.sigma * math.exp(min(0.0, self._log_decay(episode) + self.log_boost))  # logs: no under/overflow

    def record(self, repeat: bool, next_episode: int) -> None:
        """Widen the std after an episode that repeated a scored policy, up to `sigma` at `next_episode`.

        The per-episode decay goes on, so the std settles where new policies and repeats balance (as in
        evolution strategies' success rule) instead of shrinking until the agent only repeats itself.
        """
        if repeat and self.repeat_growth > 1.0:
            self.log_boost = min(self.log_boost + math.log(self.repeat_growth), -self._log_decay(next_episode))


def truncated_normal(mean: np.ndarray, std: float, rng: np.random.Generator, low: float = -1.0,
                     high: float = 1.0) -> np.ndarray:
    """Sample around `mean` with `std`, truncated to [low, high]."""
    mean = np.clip(np.asarray(mean, dtype=np.float64), low, high)
    if std <= 0:
        return mean.astype(np.float32)
    a, b = (low - mean) / std, (high - mean) / std
    return np.asarray(truncnorm.rvs(a, b, loc=mean, scale=std, size=mean.shape, random_state=rng), dtype=np.float32)


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """Holds an episode's transitions until it ends, then stores each with (final reward - baseline).

    The baseline is an exponential moving average of final rewards (factor `baseline_alpha`);
    single-environment only, like AMC.
    """

    def __init__(self, *args: Any, baseline_alpha: float = 0.95, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise ValueError(f"`n_envs == 1` must hold for episode rewards, but got {self.n_envs=}")
        self.baseline_alpha = baseline_alpha
        self.baseline: float | None = None
        self.pending: list[tuple] = []

    def add(self, obs, next_obs, action, reward, done, infos) -> None:  # noqa: ANN001 - SB3's signature
        self.pending.append((np.copy(obs), np.copy(next_obs), np.copy(action), np.copy(done), infos))
        if bool(np.asarray(done).reshape(-1)[0]):
            self.add_episode(float(np.asarray(reward).reshape(-1)[0]))

    ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")

    def __getstate__(self) -> dict:
        """Pickle only the filled part: checkpoints after every trial stay small and fast."""
        state = self.__dict__.copy()
        filled = self.buffer_size if self.full else self.pos
        for name in self.ARRAYS:
            if state.get(name) is not None:
                state[name] = state[name][:filled].copy()
        state["_filled"] = filled
        return state

    def __setstate__(self, state: dict) -> None:
        filled = state.pop("_filled", None)
        self.__dict__.update(state)
        if filled is None:
            return
        for name in self.ARRAYS:
            array = getattr(self, name, None)
            if array is not None and len(array) != self.buffer_size:
                full = np.zeros((self.buffer_size, *array.shape[1:]), dtype=array.dtype)
                full[:filled] = array
                setattr(self, name, full)

    def add_episode(self, final_reward: float) -> float:
        """Store the pending transitions with the shaped reward; return the shaped reward."""
        if self.baseline is None:
            self.baseline = final_reward
        shaped = final_reward - self.baseline
        self.baseline = self.baseline_alpha * self.baseline + (1 - self.baseline_alpha) * final_reward
        for obs, next_obs, action, done, infos in self.pending:
            super().add(obs, next_obs, action, np.array([shaped], dtype=np.float32), done, infos)
        self.pending = []
        return shaped
