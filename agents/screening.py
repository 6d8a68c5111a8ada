"""Model-based exploration: a Gaussian process of the rewards scored so far screens the agent's episodes.

A search pays for evaluations, not for episodes: an episode is a few milliseconds of actor forward
passes and budget clamps, an evaluation seconds of pruning, adaptive BN and validation. With
`agent.candidates` K > 1 the agent plays K episodes with its exploration noise for every policy it
sends out, and this model picks the one with the largest expected improvement (EI) over the best
reward scored so far. The agent then learns from the chosen episode and its real reward, as it
would from any episode: the model decides only which of the agent's own proposals is worth paying
for, the agent decides what to propose.

The model sees a policy as its effective per-unit ratios (1 - kept / channels, after rounding), so
two policies that prune the model identically are one point. Kernel: a constant times a Matern 5/2
with one length scale per unit, plus white noise (adaptive-BN accuracy on a validation subset is a
noisy measurement), on normalised rewards. Its hyperparameters are refitted by maximum likelihood
when the data have grown by `refit_every` points since the last fit, and otherwise kept while the
model conditions on the new points (an O(n^3) solve, milliseconds at a search's n <= a few hundred).

A part of the reward the search knows before it scores a policy (its latency penalty, read from the
latency table: `agent.screen_known_latency`) is not learned: the process models the reward without it,
and the screen adds it back to each candidate's prediction. A Matern process smooths the penalty's
hinge at the latency target over its length scales; added back exactly, it rules out a candidate far
over the target that the process alone would rate by its accuracy.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Kernel, Matern, WhiteKernel

from pruning.policy import SparsityPolicy
from pruning.units import UnitGraph


def policy_features(policy: SparsityPolicy, graph: UnitGraph, round_to: int) -> np.ndarray:
    """The ratios a policy really prunes at (1 - kept / channels per unit): the model's inputs."""
    kept = policy.kept(graph, round_to)
    return np.array([1.0 - kept[u.name] / u.channels for u in graph.units], dtype=np.float64)


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """EI of a maximisation: E[max(0, f - best)] under f ~ N(mean, std^2); the gap itself where std is 0."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    gap = mean - best
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, gap / std, 0.0)
    return np.where(std > 0, gap * norm.cdf(z) + std * norm.pdf(z), np.maximum(gap, 0.0))


class RewardModel:
    """Scored policies (features -> reward) and the Gaussian process fitted to them.

    `ready` once it holds `min_points` distinct policies; until then a screening agent sends its
    first candidate, exactly as without screening. Deterministic: same points, same predictions.
    """

    def __init__(self, n_units: int, min_points: int = 10, refit_every: int = 10, seed: int = 0, fingerprint: str = ""):
        if min_points < 2:
            raise ValueError(f"`min_points >= 2` must hold, but got {min_points=}")
        if refit_every < 1:
            raise ValueError(f"`refit_every >= 1` must hold, but got {refit_every=}")
        self.n_units, self.min_points, self.refit_every, self.seed = n_units, min_points, refit_every, seed
        self.fingerprint = fingerprint
        """The model (graph fingerprint) whose policies these are."""
        self.features: list[np.ndarray] = []
        self.rewards: list[float] = []
        """What the process regresses on: each reward less its known part."""
        self.known: list[float] = []
        """Each point's known part of the reward (0 unless the screen is given one)."""
        self._kernel: Kernel | None = None
        self._tuned_at = 0
        self._gp: GaussianProcessRegressor | None = None
        self._fitted_at = 0

    def __getstate__(self) -> dict:
        """The data and the tuned kernel; the fitted process is rebuilt from them on first use."""
        return {**self.__dict__, "_gp": None, "_fitted_at": 0}

    def __setstate__(self, state: dict) -> None:
        """A model pickled before `known` existed knew nothing: zeros."""
        self.__dict__.update({"known": [0.0] * len(state["rewards"]), **state})

    def __len__(self) -> int:
        return len(self.rewards)

    def inputs(self, policy: SparsityPolicy, graph: UnitGraph, round_to: int) -> np.ndarray:
        """The model's inputs for a policy of `graph`."""
        return policy_features(policy, graph, round_to)

    @property
    def ready(self) -> bool:
        return len(self) >= self.min_points

    @property
    def best(self) -> float:
        """The best whole reward scored so far (known part included)."""
        return max(r + k for r, k in zip(self.rewards, self.known))

    def add(self, features: np.ndarray, reward: float, known: float = 0.0) -> None:
        """A scored policy; `known` is the part of `reward` known without scoring (the process learns the rest)."""
        features = np.asarray(features, dtype=np.float64).reshape(-1)
        if features.shape != (self.n_units,):
            raise ValueError(f"expected {self.n_units} features (one per unit), got {features.shape[0]}")
        if not math.isfinite(reward):
            return  # a reward the model cannot regress on (a failed evaluation) teaches it nothing
        self.features.append(features)
        self.rewards.append(float(reward) - known)
        self.known.append(float(known))

    def _initial_kernel(self) -> Kernel:
        return (ConstantKernel(1.0, (1e-2, 1e2))
                * Matern(length_scale=np.ones(self.n_units), length_scale_bounds=(0.05, 20.0), nu=2.5)
                + WhiteKernel(1e-2, (1e-4, 1.0)))

    def _fitted(self) -> GaussianProcessRegressor:
        n = len(self)
        if self._gp is not None and self._fitted_at == n:
            return self._gp
        x, y = np.stack(self.features), np.array(self.rewards)
        tune = self._kernel is None or n - self._tuned_at >= self.refit_every
        gp = GaussianProcessRegressor(self._initial_kernel() if self._kernel is None else self._kernel,
                                      normalize_y=True, optimizer="fmin_l_bfgs_b" if tune else None,
                                      random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a length scale at its bound: an irrelevant unit
            gp.fit(x, y)
        if tune:
            self._kernel, self._tuned_at = gp.kernel_, n
        self._gp, self._fitted_at = gp, n
        return gp

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of the reward at each row of `features`."""
        if not self.ready:
            raise RuntimeError(f"the reward model needs {self.min_points} scored policies, it has {len(self)}")
        mean, std = self._fitted().predict(np.atleast_2d(features), return_std=True)
        return mean, std

    def expected_improvement(self, features: np.ndarray) -> np.ndarray:
        """EI of each row over the best whole reward, for rows with no known part (the agent adds its own)."""
        mean, std = self.predict(features)
        return expected_improvement(mean, std, self.best)
