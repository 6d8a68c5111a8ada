"""A reward model carried across models: another model's scored policies screen this search from its first proposals.

A search on a new model starts with a screen that knows nothing: until `agent.screen_after` policies are
scored the agent's first candidate goes out unscreened, and a Gaussian process of a handful of points in a
few dozen unit dimensions ranks candidates little better than chance. The source model's search scored a
few hundred policies. Their units are not this model's, but every unit has a kind and a relative depth, so
both models' policies can be read in one space: the mean ratio of each unit kind within each of
`bins` equal depth bins. A Gaussian process of the source's rewards in that space is the prior.

The prior and this model's own reward model are combined as in RGPE (Feurer, Letham and Bakshy, "Scalable
meta-learning for Bayesian optimization using ranking-weighted Gaussian process ensembles", 2018): each is
weighted by how often, over bootstrap resamples of this model's scored policies, it ranks them best (fewest
misordered pairs; the target model by leave-one-out). So the prior leads while the target's own model is
worse at ranking this model's policies, and fades once the target model ranks them better; a prior that
misranks them from the start gets no weight.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from agents.screening import RewardModel, policy_features
from pruning.errors import UserError
from pruning.policy import SparsityPolicy, unit_profile
from pruning.units import UnitGraph

DEPTH_BINS = 4
"""Depth bins of the shared space. In a pool replay of 1724 recorded ResNet-56 policies screened with a
ResNet-20 prior (`bench.prior_replay`, results/bench/README.md, policy reuse) the prior alone ranked best with 4 of 2, 3, 4 bins,
about level with random picks; fewer bins ranked worse than random. Combined in RGPE, 4 bins were level with
the target's own screen: the prior does not hurt there, and its measured gain is inside the seed noise.
Pooled from 21 ResNet-20 searches (`SourceRewards.pooled`, 4178 points, 2 bins) it ranks that pool far better
(Spearman 0.54) but picks no better best policies than the target's own screen (results/bench/README.md, policy reuse)."""
BOOTSTRAP = 100
"""Bootstrap resamples per weighting, as in the RGPE paper's experiments."""


def depth_bin_features(ratios: np.ndarray, profile: list[tuple[float, str]], kinds: list[str],
                       bins: int = DEPTH_BINS) -> np.ndarray:
    """Rows of per-unit ratios (units as in `profile`) as the mean ratio of each kind in each depth bin.

    A bin with no unit of that kind takes the kind's ratio interpolated at the bin's centre; a kind the
    model lacks is read from all its units, as `SparsityPolicy.resampled` does."""
    ratios = np.atleast_2d(np.asarray(ratios, dtype=np.float64))
    depths = np.array([d for d, _ in profile])
    unit_kinds = np.array([k for _, k in profile])
    edges = np.linspace(0.0, 1.0, bins + 1)
    columns = []
    for kind in kinds:
        chosen = unit_kinds == kind
        if not chosen.any():
            chosen = np.ones(len(profile), dtype=bool)
        order = np.argsort(depths[chosen])
        kind_depths, kind_ratios = depths[chosen][order], ratios[:, chosen][:, order]
        for b in range(bins):
            inside = (kind_depths >= edges[b]) & ((kind_depths < edges[b + 1]) | (b == bins - 1))
            if inside.any():
                columns.append(kind_ratios[:, inside].mean(axis=1))
            else:
                centre = 0.5 * (edges[b] + edges[b + 1])
                columns.append(np.array([np.interp(centre, kind_depths, row) for row in kind_ratios]))
    return np.stack(columns, axis=1)


class SourceRewards:
    """Another model's scored policies (per-unit ratios, unit profile, rewards): what a prior is fitted to."""

    def __init__(self, ratios: np.ndarray, profile: list[tuple[float, str]], rewards: np.ndarray, source: str,
                 fingerprint: str = "", latency_ratios: np.ndarray | None = None):
        if len(rewards) < 2:
            raise UserError(f"{source}: a prior needs at least 2 scored policies, found {len(rewards)}")
        self.ratios, self.profile, self.rewards = np.asarray(ratios, float), profile, np.asarray(rewards, float)
        self.source, self.fingerprint = source, fingerprint
        self.latency_ratios = None if latency_ratios is None else np.asarray(latency_ratios, float)
        """Each policy's predicted latency ratio as the source search recorded it (None: searched without a table)."""

    def less_known(self, known: Callable[[float], float]) -> "SourceRewards":
        """These rewards less the part a screen adds back itself (`agent.screen_known_latency`): `known(L)` of
        each policy's recorded latency ratio L, 0 where none was recorded.

        The target's own process learns each reward less its known latency penalty and the screen adds the exact
        penalty back, so a prior of whole rewards would count the penalty twice. The source's latency term is
        not recorded beside its evaluations; `known` is this search's, so the source is taken to have been
        searched with the same latency weight and target (as `bench` transfers are). A source searched without
        a latency table recorded no ratios and had no latency term: its rewards are kept as they are."""
        if self.latency_ratios is None:
            return self
        parts = np.array([known(r) if math.isfinite(r) else 0.0 for r in self.latency_ratios])
        return SourceRewards(self.ratios, self.profile, self.rewards - parts, self.source, self.fingerprint,
                             self.latency_ratios)

    @classmethod
    def load(cls, path: str | Path, field: str = "--prior") -> "SourceRewards":
        """A search's run folder (its `evaluations.csv` and, for the units' depth and kind, `best_policy.json`),
        or a bench's `evaluations/<run>.csv` with its `policies/<run>.json`; errors name `field`."""
        path = Path(path)
        if path.suffix == ".csv":
            table, policy_file = path, path.parent.parent / "policies" / f"{path.stem}.json"
        else:
            table, policy_file = path / "evaluations.csv", path / "best_policy.json"
        for found in (table, policy_file):
            if not found.is_file():
                raise UserError(f"{field} {path}: {found.name} not found (expected a `prunepilot search` run "
                                f"folder with evaluations.csv and best_policy.json, or a bench's "
                                f"evaluations/<run>.csv with policies/<run>.json)")
        policy = SparsityPolicy.load(policy_file)
        if not policy.profile:
            raise UserError(f"{policy_file}: no unit profile (relative depth and kind of each unit)")
        names = sorted(policy.profile, key=lambda n: policy.profile[n][0])
        # search depends on agents, not the other way round at import time
        from search.review import completed_evaluations, ratio_column

        frame = completed_evaluations(table, ["reward", *(ratio_column(n) for n in names)],
                                      f"the units of {policy_file.name}: evaluations.csv and best_policy.json must "
                                      f"come from the same search")
        frame = frame[np.isfinite(pd.to_numeric(frame["reward"], errors="coerce"))]
        ratios = frame[[ratio_column(n) for n in names]].to_numpy(float)
        latency = (pd.to_numeric(frame["latency_ratio"], errors="coerce").to_numpy(float)
                   if "latency_ratio" in frame.columns else None)
        return cls(ratios, [policy.profile[n] for n in names], frame["reward"].to_numpy(float), str(path),
                   policy.model_fingerprint, latency)

    @classmethod
    def pooled(cls, sources: list["SourceRewards"]) -> "SourceRewards":
        """Several searches of one model as one prior: one search's couple of hundred policies rank another
        model's little better than chance, a pool of many ranks them far better (`bench.prior_replay`)."""
        if not sources:
            raise UserError("a pooled prior needs at least one source search")
        first = sources[0]
        for other in sources[1:]:
            if other.profile != first.profile:
                raise UserError(f"prior source {other.source}: its units differ from those of {first.source} "
                                f"(expected searches of one model)")
        if len(sources) == 1:
            return first
        latency = (None if all(s.latency_ratios is None for s in sources) else np.concatenate(
            [np.full(len(s.rewards), np.nan) if s.latency_ratios is None else s.latency_ratios for s in sources]))
        return cls(np.concatenate([s.ratios for s in sources]), first.profile,
                   np.concatenate([s.rewards for s in sources]), " + ".join(s.source for s in sources),
                   first.fingerprint, latency)

    def prior_for(self, graph: UnitGraph, seed: int = 0, bins: int = DEPTH_BINS) -> "Prior":
        """The prior of a search on `graph`: in the depth-bin space of its unit kinds."""
        kinds = sorted({u.kind for u in graph.units})
        return Prior(self, kinds, seed, bins)


class Prior:
    """A Gaussian process of a source model's rewards, in the shared depth-bin space; outputs standardised."""

    def __init__(self, rewards: SourceRewards, kinds: list[str], seed: int = 0, bins: int = DEPTH_BINS):
        if bins < 1:
            raise UserError(f"depth bins: expected at least 1, got {bins}")
        self.kinds, self.source, self.bins = kinds, rewards.source, bins
        x = depth_bin_features(rewards.ratios, rewards.profile, kinds, bins)
        y = (rewards.rewards - rewards.rewards.mean()) / (rewards.rewards.std() or 1.0)
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.ones(x.shape[1]), (0.05, 20.0), nu=2.5)
                  + WhiteKernel(1e-1, (1e-4, 1.0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gp = GaussianProcessRegressor(kernel, random_state=seed).fit(x, y)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.gp.predict(np.atleast_2d(features), return_std=True)


def misranked_pairs(predicted: np.ndarray, observed: np.ndarray) -> int:
    """Pairs whose predicted order differs from their observed order (RGPE's ranking loss)."""
    return int(np.sum((predicted[:, None] < predicted[None, :]) ^ (observed[:, None] < observed[None, :])))


class TransferredRewardModel(RewardModel):
    """This model's reward model and a prior from another model's search, ranking-weighted (RGPE).

    Its features are this model's per-unit ratios followed by the policy's depth-bin means; ready from the
    first scored policy, since the prior ranks candidates before this model's own process can.
    """

    def __init__(self, n_units: int, prior: Prior, profile: list[tuple[float, str]], min_points: int = 10,
                 seed: int = 0, fingerprint: str = ""):
        super().__init__(n_units, min_points=min_points, seed=seed, fingerprint=fingerprint)
        self.prior, self.profile = prior, profile
        self.bin_features: list[np.ndarray] = []
        self.weights = (1.0, 0.0)
        """(prior, target) weights of the last prediction."""
        self._rng = np.random.default_rng(seed)

    def inputs(self, policy: SparsityPolicy, graph: UnitGraph, round_to: int) -> np.ndarray:
        # the depth bins read the ratios as a policy states them, as the source's evaluations.csv records them
        return np.concatenate([policy_features(policy, graph, round_to),
                               depth_bin_features(policy.vector(graph), self.profile, self.prior.kinds, self.prior.bins)[0]])

    def add(self, features: np.ndarray, reward: float, known: float = 0.0) -> None:
        features = np.asarray(features, dtype=np.float64).reshape(-1)
        if not math.isfinite(reward):
            return
        super().add(features[:self.n_units], reward, known)
        self.bin_features.append(features[self.n_units:])

    @property
    def ready(self) -> bool:
        return len(self) >= 1

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std, in this model's reward units, of the weighted ensemble."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        y = np.array(self.rewards)
        centre, scale = y.mean(), (y.std() if len(y) > 1 else 0.0) or 1.0
        prior_mean, prior_std = self.prior.predict(features[:, self.n_units:])
        w_prior, w_target = self.weights = self._weigh()
        if w_target == 0.0:
            return centre + scale * prior_mean, scale * prior_std
        target_mean, target_std = self._fitted().predict(features[:, :self.n_units], return_std=True)
        mean = w_prior * prior_mean + w_target * (target_mean - centre) / scale
        std = np.sqrt((w_prior * prior_std) ** 2 + (w_target * target_std / scale) ** 2)
        return centre + scale * mean, scale * std

    def _weigh(self) -> tuple[float, float]:
        """RGPE weights: how often, over bootstrap resamples of the scored policies, each model ranks them best."""
        n = len(self)
        if n < 3:  # no pair to rank the target model's leave-one-out predictions on
            return 1.0, 0.0
        y = np.array(self.rewards)
        prior_mean, _ = self.prior.predict(np.stack(self.bin_features))
        left_out = self._leave_one_out()
        wins = np.zeros(2)
        for _ in range(BOOTSTRAP):
            sample = self._rng.integers(n, size=n)
            losses = (misranked_pairs(prior_mean[sample], y[sample]), misranked_pairs(left_out[sample], y[sample]))
            wins += (1.0, 0.0) if losses[0] < losses[1] else (0.0, 1.0) if losses[1] < losses[0] else (0.5, 0.5)
        return float(wins[0] / BOOTSTRAP), float(wins[1] / BOOTSTRAP)

    def _leave_one_out(self) -> np.ndarray:
        """This model's process at each scored policy, fitted without it (closed form, kernel held fixed)."""
        gp = self._fitted()
        x = np.stack(self.features)
        inverse = np.linalg.inv(gp.kernel_(x) + 1e-10 * np.eye(len(x)))
        y = (np.array(self.rewards) - gp._y_train_mean) / gp._y_train_std
        return y - inverse @ y / np.diag(inverse)
