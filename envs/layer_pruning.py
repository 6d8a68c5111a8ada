"""`LayerPruningEnv`: walk a model's prunable units and choose a pruning ratio at each (AMC, He et al. 2018)."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.rewards import get_reward, latency_penalty
from pruning.errors import UserError
from pruning.latency_table import LatencyTable
from pruning.policy import SparsityPolicy
from pruning.units import UnitGraph

UNIT_KINDS = ("conv", "pointwise", "depthwise-group", "residual-group", "linear")
FEATURES = ("depth", *(f"kind_{k}" for k in UNIT_KINDS), "log_in_channels", "log_out_channels", "kernel", "stride",
            "resolution", "unit_macs", "macs_removed", "macs_rest", "previous_ratio", "macs_target")
LATENCY_FEATURES = ("removable", "unit_latency", "latency_removed", "latency_target")
"""Appended with `latency_features=True`: what the table predicts, as FEATURES say it of MACs."""
BUDGETS = ("exact", "cap")
ACTION_RANGES = ("absolute", "feasible")
OBS_VERSION = 1
"""Bumped whenever FEATURES change: saved agents record it, so an agent is never fed an embedding it was not trained on."""


class Step(NamedTuple):
    """One step of an episode, as an agent's replay buffer stores it."""

    obs: np.ndarray
    next_obs: np.ndarray
    action: np.ndarray
    done: bool
    info: dict[str, Any]


class PolicyEvaluator(Protocol):
    """Anything that scores a policy: the engine's `Evaluator`, a Ray trial's result, or a test fake."""

    def evaluate(self, policy: SparsityPolicy) -> Any:  # returns an object with .accuracy, .macs, .macs_ratio
        ...


class LayerPruningEnv(gym.Env):
    """
    ## Description
    One episode prunes one model: the agent visits the prunable units (torch-pruning dependency
    groups) from input to output and picks each unit's pruning ratio, as in AMC.

    ## Action Space
    `Box(-1, 1, (1,))`, mapped linearly to a ratio in `[r_min, r_max]`. The ratio is then raised,
    if needed, to the least that still lets the episode meet the MACs budget when every later unit
    is pruned at `r_max` (AMC's `_action_wall`), so every finished episode meets the budget. With
    `budget="exact"` (the default) it is also lowered, if needed, to the most that still reaches the
    budget when every later unit is kept whole: no episode spends its evaluation on a model smaller
    than asked for (AMC: "accurately arrive at the target"). `budget="cap"` keeps AMC's one-sided wall,
    for rewards that trade accuracy against MACs below the target.

    With `action_range="feasible"` the action is mapped onto the unit's feasible interval instead
    (its least feasible ratio to its greatest useful one): no action is clamped, so every action the
    agent takes changes the policy, and each step's action means "how hard to prune this unit, given
    what the budget still allows". An agent sets this for itself (`agent.action_range`).

    With `remove_blocks=True` the inside of a residual block with an identity shortcut
    (`UnitGraph.removable`) maps onto `[r_min, 1]` instead: a ratio above `r_max` goes to the nearer
    of `r_max` and 1, and at 1 the whole block is removed (its convs, add and activation), the one
    cut that leaves every remaining conv at its dense width (`env.remove_blocks`).

    ## Observation Space
    `Box(0, 1, (18,))`, the AMC layer embedding, normalised so that it does not depend on model
    size (agents move between models): relative depth; unit kind one-hot (conv, pointwise,
    depthwise group, residual group, linear); log2 in/out channels / 12; kernel / 7; stride / 4;
    input resolution relative to the model's input; the unit's MACs, MACs already removed and
    MACs of the units still to come, each as a fraction of dense MACs; the previous ratio; the
    MACs target.

    With `latency_features=True` (a latency table needed) 4 more, the same for the latency the reward
    prices (`LATENCY_FEATURES`): whether the unit's block can be removed; the predicted latency saved by
    pruning the unit as far as it goes (its whole block where removable); the predicted latency already
    saved, with the units still to come whole; each as a fraction of dense latency; the latency target
    (0 without one). MACs alone do not tell the agent which units buy latency: removing a block saves its
    per-op costs, which narrowing its convs keeps.

    ## Rewards
    0 on every step but the last. The last step scores the policy with the evaluator (adaptive
    BN + validation accuracy) and returns `reward` by name: `accuracy_minus_compute`
    (accuracy - lambda * MACs ratio), `amc_error` (-error) or `amc_error_log_macs`
    (-error * log MACs). With a latency table and `latency_weight` w > 0 the reward also loses
    w * max(0, L / latency_target - 1), or w * L without a target, where L is the policy's predicted
    latency as a fraction of dense (`pruning.latency_table`). Identical policies are evaluated once
    (cache; `info["repeat"]` says the score came from it, so searchers do not count it against their
    budget). In deferred mode the last step returns 0 and the policy in `info["policy"]`; the reward is
    supplied later (Ray Tune).

    ## Episode End
    Terminates after the last unit; never truncates.
    """

    metadata = {"render_modes": []}

    def __init__(self, graph: UnitGraph, evaluator: PolicyEvaluator | None = None, *, macs_target: float = 0.5,
                 r_min: float = 0.0, r_max: float = 0.8, reward: str = "accuracy_minus_compute",
                 reward_lambda: float = 0.5, round_to: int = 1, budget: str = "exact", deferred: bool = False,
                 action_range: str = "absolute", latency_table: LatencyTable | None = None,
                 latency_weight: float = 0.0, latency_target: float | None = None, remove_blocks: bool = False,
                 latency_features: bool = False):
        super().__init__()
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"`0 <= r_min < r_max < 1` must hold, but got ({r_min=}, {r_max=})")
        if evaluator is None and not deferred:
            raise ValueError("standalone mode needs an evaluator; pass evaluator=... or deferred=True")
        if budget not in BUDGETS:
            raise UserError(f"env.budget: expected one of {list(BUDGETS)}, got {budget!r}")
        if action_range not in ACTION_RANGES:
            raise UserError(f"agent.action_range: expected one of {list(ACTION_RANGES)}, got {action_range!r}")
        self.budget, self.action_range = budget, action_range
        self.graph, self.evaluator = graph, evaluator
        self.macs_target, self.r_min, self.r_max = macs_target, r_min, r_max
        self.reward_name, self.reward_fn, self.reward_lambda = reward, get_reward(reward), reward_lambda
        self.round_to = round_to if graph.mode == "structured" else 1
        self.deferred = deferred
        if latency_weight > 0 and latency_table is None:
            raise UserError("env.latency_table: a latency weight > 0 needs a latency table (`prunepilot latency-table`)")
        if latency_table is not None:
            latency_table.check(graph, self.round_to)
        self.latency_table, self.latency_weight, self.latency_target = latency_table, latency_weight, latency_target
        if latency_features and latency_table is None:
            raise UserError("env.latency_features: the latency features are predicted from a latency table; "
                            "set env.latency_table (and env.latency_weight > 0)")
        self.features = (*FEATURES, *LATENCY_FEATURES) if latency_features else FEATURES
        """What each observation entry is; saved with an agent, so it is only fed the embedding it learned on."""
        self.cache: dict[str, Any] = {}
        self.units = graph.units
        self.remove_blocks = remove_blocks and bool(graph.removable)
        self.unit_max = [1.0 if self.remove_blocks and u.name in graph.removable else r_max for u in self.units]
        """Each unit's largest ratio: r_max, or 1 (the whole block goes) for a removable block's inside."""
        floor = graph.macs(self._kept([], rest=r_max)) / graph.dense_macs
        if floor > macs_target + 1e-9:
            raise UserError(f"env.macs_target: {macs_target} cannot be met with r_max={r_max} on this model "
                            f"(pruning every unit at r_max keeps {floor:.3f} of dense MACs); raise env.r_max or the target")
        self._static = self._static_features()
        self._static_latency = None if self.features == FEATURES else np.clip(np.array(
            [[1.0 if most == 1.0 else 0.0, saved] for most, saved in zip(self.unit_max, self._latency_saved_alone())]),
            0.0, 1.0)
        """Per unit: can its block go, and the latency it saves alone at its largest ratio (`latency_features`)."""
        self.action_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (len(self.features),), dtype=np.float32)
        self._ratios: list[float] = []
        self._kept_around: dict[tuple[int, float], dict[str, int]] = {}
        """Kept counts of the other units, by (unit index, ratio of the later units), for `_macs_with`."""

    # ---------------------------------------------------------------------------- features
    def _static_features(self) -> np.ndarray:
        n, dense = len(self.units), self.graph.dense_macs
        top_resolution = max(u.in_hw[0] * u.in_hw[1] for u in self.units)
        rows = []
        for unit in self.units:
            kind = [1.0 if unit.kind == k else 0.0 for k in UNIT_KINDS]
            rows.append([unit.index / max(1, n - 1), *kind,
                         math.log2(unit.in_channels + 1) / 12, math.log2(unit.channels + 1) / 12,
                         unit.kernel / 7, unit.stride / 4, unit.in_hw[0] * unit.in_hw[1] / top_resolution,
                         unit.macs / dense])
        return np.clip(np.array(rows, dtype=np.float64), 0.0, 1.0)

    def _latency_saved_alone(self) -> list[float]:
        """Each unit's predicted latency saved, as a fraction of dense, when it alone is pruned at its largest ratio."""
        return [1.0 - self.latency_table.ratio({u.name: self.graph.kept(u, self.unit_max[u.index], self.round_to)})
                for u in self.units]

    def _kept(self, ratios: list[float], rest: float | None = None) -> dict[str, int]:
        """Kept counts with the first units at `ratios` and the others at `rest`: whole when None, and at r_max each
        at its largest ratio (a removable block's inside at 1: the block goes)."""
        later = [self.unit_max[i] if rest is not None and rest >= self.r_max else (rest or 0.0)
                 for i in range(len(ratios), len(self.units))]
        return {u.name: self.graph.kept(u, r, self.round_to) for u, r in zip(self.units, [*ratios, *later])}

    def _observation(self) -> np.ndarray:
        t, dense = len(self._ratios), self.graph.dense_macs
        removed = 1.0 - self.graph.macs(self._kept(self._ratios)) / dense
        rest = sum(self.graph.shapes[layer].macs for u in self.units[t + 1:] for layer in u.out_layers) / dense
        previous = self._ratios[-1] / self.r_max if self._ratios else 0.0
        parts = [self._static[t], [removed, rest, previous, self.macs_target]]
        if self._static_latency is not None:
            parts += [self._static_latency[t], [1.0 - self.latency_table.ratio(self._kept(self._ratios)),
                                                self.latency_target or 0.0]]
        return np.clip(np.concatenate(parts), 0.0, 1.0).astype(np.float32)

    # ---------------------------------------------------------------------------- mapping
    @staticmethod
    def _action_to(low: float, high: float, action: float) -> float:
        """[-1, 1] onto [low, high], linearly."""
        return low + (float(np.clip(action, -1.0, 1.0)) + 1.0) / 2.0 * (high - low)

    @staticmethod
    def _action_from(low: float, high: float, ratio: float) -> float:
        """The inverse of `_action_to`; -1 where the interval is a single point."""
        if high - low < 1e-12:
            return -1.0
        return float(np.clip(2.0 * (ratio - low) / (high - low) - 1.0, -1.0, 1.0))

    def _current_max(self) -> float:
        return self.unit_max[min(len(self._ratios), len(self.units) - 1)]

    def action_to_ratio(self, action: float) -> float:
        """The current unit's ratio for `action`: [-1, 1] onto [r_min, its largest ratio] (`snap`ped)."""
        return self.snap(self._action_to(self.r_min, self._current_max(), action))

    def ratio_to_action(self, ratio: float) -> float:
        return self._action_from(self.r_min, self._current_max(), ratio)

    def snap(self, ratio: float, down: bool | None = None) -> float:
        """A ratio the current unit can take: a removable block's inside takes [r_min, r_max] or 1 (block gone).

        A ratio between r_max and 1 goes to the nearer of the two, or with `down` True / False to r_max / 1 (how
        the budget clamp's bounds stay feasible). Other units' ratios pass unchanged.
        """
        if self._current_max() < 1.0 or ratio <= self.r_max or ratio >= 1.0:
            return ratio
        if down is None:
            down = ratio < (self.r_max + 1.0) / 2
        return self.r_max if down else 1.0

    def action_for_ratio(self, ratio: float) -> float:
        """The action that asks the current unit for `ratio` under this env's action range."""
        if self.action_range == "absolute":
            return self.ratio_to_action(ratio)
        return self._action_from(*self.ratio_bounds(), ratio)

    def _macs_with(self, ratio: float, rest: float) -> float:
        """MACs with the current unit at `ratio` and every later one at `rest` (the budget clamp's bisection)."""
        t = len(self._ratios)
        key = (t, rest)
        if key not in self._kept_around:  # earlier and later units are fixed during one step's bisections
            self._kept_around[key] = self._kept(self._ratios + [0.0], rest=rest)
        unit = self.units[t]
        kept = dict(self._kept_around[key])
        kept[unit.name] = self.graph.kept(unit, ratio, self.round_to)
        return self.graph.macs(kept)

    def least_feasible_ratio(self) -> float:
        """Smallest ratio for the current unit such that the budget stays reachable with later units at r_max."""
        budget = self.macs_target * self.graph.dense_macs
        if self._macs_with(self.r_min, self.r_max) <= budget:
            return self.r_min
        return self._boundary(lambda x: self._macs_with(x, self.r_max) <= budget)

    def greatest_useful_ratio(self) -> float:
        """Largest ratio for the current unit such that later units kept whole still leave >= the budget."""
        budget = self.macs_target * self.graph.dense_macs
        if self._macs_with(self._current_max(), self.r_min) >= budget:
            return self._current_max()
        if self._macs_with(self.r_min, self.r_min) < budget:
            return self.r_min
        return self._boundary(lambda x: self._macs_with(x, self.r_min) < budget) - 1e-9

    def _boundary(self, above: Callable[[float], bool]) -> float:
        """The least ratio in [r_min, the unit's largest] where the monotone predicate `above` holds (bisection)."""
        low, high = self.r_min, self._current_max()
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (low, mid) if above(mid) else (mid, high)
        return high

    def ratio_bounds(self) -> tuple[float, float]:
        """The ratios the current unit may take: AMC's wall from below, and with budget="exact" from above."""
        low = self.snap(self.least_feasible_ratio(), down=False)
        high = self.snap(self.greatest_useful_ratio(), down=True) if self.budget == "exact" else self._current_max()
        return low, max(low, high)

    # ---------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._ratios = []
        self._kept_around = {}
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if len(self._ratios) >= len(self.units):
            raise RuntimeError("step() called after the episode ended; call reset()")
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        low, high = self.ratio_bounds()
        if self.action_range == "feasible":
            ratio = wanted = min(max(self.snap(self._action_to(low, high, a)), low), high)
            executed = a
        else:
            wanted = self.action_to_ratio(a)
            ratio = min(max(wanted, low), high)
            executed = self.ratio_to_action(ratio)
        self._ratios.append(ratio)
        info: dict[str, Any] = {"unit": self.units[len(self._ratios) - 1].name, "ratio": ratio, "wanted_ratio": wanted,
                                "executed_action": executed}
        if len(self._ratios) < len(self.units):
            return self._observation(), 0.0, False, False, info
        policy = SparsityPolicy.from_ratios(self.graph, self._ratios, macs_target=self.macs_target)
        info["policy"] = policy
        observation = np.zeros(self.observation_space.shape, dtype=np.float32)  # terminal: never used for bootstrapping
        if self.deferred:
            return observation, 0.0, True, False, info
        repeat = self.has_scored(policy)
        result = self.evaluate(policy)
        info.update(result=result, accuracy=result.accuracy, macs_ratio=result.macs_ratio, repeat=repeat)
        return observation, self.reward(result), True, False, info

    def rollout(self, choose: Callable[[np.ndarray, int], np.ndarray]) -> tuple[SparsityPolicy, list[Step]]:
        """Play one episode without scoring it (deferred): `choose(observation, unit index)` gives each action.

        Returns the policy and each step as (observation, next observation, action, done, info); the
        budget clamp applies exactly as in `step`, so any source of ratios lands on the MACs target.
        """
        was_deferred, self.deferred = self.deferred, True
        try:
            obs, _ = self.reset()
            steps: list[Step] = []
            done, info = False, {}
            while not done:
                action = np.asarray(choose(obs, len(self._ratios)), dtype=np.float32).reshape(-1)
                next_obs, _, done, _, info = self.step(action)
                steps.append(Step(obs, next_obs, action, done, info))
                obs = next_obs
        finally:
            self.deferred = was_deferred
        return info["policy"], steps

    def play_ratios(self, ratios: list[float]) -> tuple[SparsityPolicy, list[Step]]:
        """One episode whose actions ask for `ratios` (one per unit), through the budget clamp."""
        if len(ratios) != self.n_units:
            raise ValueError(f"`ratios` must have one value per unit ({self.n_units}), got {len(ratios)}")
        return self.rollout(lambda _obs, t: np.array([self.action_for_ratio(ratios[t])]))

    # ---------------------------------------------------------------------------- scoring
    def has_scored(self, policy: SparsityPolicy) -> bool:
        """Whether this policy (same kept counts) was scored before: scoring it again costs nothing."""
        return policy.key(self.graph, self.round_to) in self.cache

    def evaluate(self, policy: SparsityPolicy) -> Any:
        """Score `policy` once; a repeated policy (same kept counts) comes from the cache."""
        key = policy.key(self.graph, self.round_to)
        if key not in self.cache:
            self.cache[key] = self.evaluator.evaluate(policy)
        return self.cache[key]

    def reward(self, result: Any) -> float:
        value = self.reward_fn(result.accuracy, result.macs_ratio, result.macs, self.reward_lambda)
        if self.latency_weight > 0:  # results without kept counts (a surrogate's) score MACs and accuracy only
            value -= self.latency_cost(result.kept)
        return float(value)

    def latency_cost(self, kept: dict[str, int]) -> float:
        """What the reward loses for a policy's predicted latency (0 with the latency term off): known before scoring."""
        if self.latency_weight <= 0:
            return 0.0
        return latency_penalty(self.latency_ratio(kept), self.latency_weight, self.latency_target)

    def latency_ratio(self, kept: dict[str, int]) -> float | None:
        """Predicted latency of a policy's kept counts as a fraction of dense; None without a latency table."""
        return None if self.latency_table is None else self.latency_table.ratio(kept)

    @property
    def n_units(self) -> int:
        return len(self.units)
